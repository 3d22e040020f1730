import Foundation
import VLMStore
import XCTest

/// A fresh folder per test; the store creates its own subfolders inside.
func temporaryDatabasePath(_ name: String = "vlmsh.sqlite") throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-store-\(UUID().uuidString)")
    return dir.appendingPathComponent("home").appendingPathComponent(name).path
}

func removeDatabaseFolder(_ path: String) {
    let home = (path as NSString).deletingLastPathComponent
    try? FileManager.default.removeItem(atPath: (home as NSString).deletingLastPathComponent)
}

/// Collects errors from worker threads.
final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [String] = []
    func add(_ error: any Error) { lock.lock(); errors.append("\(error)"); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return errors }
}

/// A deterministic fake image hash.
func fakeSHA(_ n: Int) -> String { ContentHash.hex("image-\(n)") }

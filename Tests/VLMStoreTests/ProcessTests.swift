import Foundation
import VLMStore
import XCTest

/// The `vlmsh-store-child` executable (Tests/StoreChild) with `arguments`, not yet started. It is
/// built with the tests and sits next to the test bundle in the build folder.
func storeChild(_ arguments: [String]) throws -> Process {
    #if os(macOS)
    // The runner is xctest; the build folder is the one holding the .xctest bundle.
    let bundle = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }
    let folder = URL(fileURLWithPath: bundle?.bundlePath ?? CommandLine.arguments[0]).deletingLastPathComponent()
    #else
    // The runner is the test executable itself, in the build folder.
    let folder = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    #endif
    let binary = folder.appendingPathComponent("vlmsh-store-child")
    guard FileManager.default.isExecutableFile(atPath: binary.path) else {
        throw ChildNotBuilt(path: binary.path)
    }
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    return process
}

struct ChildNotBuilt: Error, CustomStringConvertible {
    let path: String
    var description: String { "\(path) is missing: the vlmsh-store-child target is built with the tests" }
}

/// Separate processes (separate POSIX lock owners) writing one file at once.
final class ProcessTests: XCTestCase {
    static let turnsPerChild = 150

    func testTwoProcessesWriteConcurrently() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)
        let shared = try store.createSession(name: "shared")

        let children = try (0..<2).map { _ in try storeChild(["fixed-writer", path]) }
        let logs = children.map { child -> Pipe in
            let pipe = Pipe()
            child.standardOutput = pipe
            child.standardError = pipe
            return pipe
        }
        for child in children { try child.run() }
        // The parent writes too, through its own pool.
        for i in 0..<Self.turnsPerChild {
            try store.appendTurn(session: shared, role: .assistant, text: "parent #\(i)")
        }
        for (child, log) in zip(children, logs) {
            let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            child.waitUntilExit()
            XCTAssertEqual(child.terminationStatus, 0, output)
            XCTAssertFalse(output.contains("locked"), output)
        }

        let turns = try store.turns(session: shared)
        XCTAssertEqual(turns.count, 3 * Self.turnsPerChild)
        XCTAssertEqual(turns.map(\.index), Array(0..<turns.count))
        let summaries = try store.sessions()
        XCTAssertEqual(summaries.count, 3)
        XCTAssertEqual(summaries.filter { $0.name?.hasPrefix("pid-") == true }.map(\.turnCount), [150, 150])
        XCTAssertEqual(try store.integrityCheck(), "ok")
    }
}

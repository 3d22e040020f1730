import Foundation
import VLMFormats
import XCTest

final class MappedFileTests: XCTestCase {
    /// A FIFO given as a model or image is refused at once: opening it does not wait for a writer.
    func testFIFOIsRefusedWithoutBlocking() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-fifo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let fifo = dir.appendingPathComponent("model.gguf").path
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        XCTAssertThrowsError(try MappedFile(path: fifo)) { error in
            XCTAssertEqual("\(error)", "\(fifo): not a regular file")
        }
    }

    func testDirectoryAndEmptyFileAreRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-map-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        XCTAssertThrowsError(try MappedFile(path: dir.path))
        let empty = dir.appendingPathComponent("empty.png").path
        FileManager.default.createFile(atPath: empty, contents: Data())
        XCTAssertThrowsError(try MappedFile(path: empty)) { XCTAssertEqual("\($0)", "\(empty): file is empty") }
    }
}

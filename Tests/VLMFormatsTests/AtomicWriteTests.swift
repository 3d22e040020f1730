import Foundation
import VLMFormats
import XCTest

final class AtomicWriteTests: XCTestCase {
    func testReplacesTheFileAndLeavesNothingElse() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-atomic-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/state.json"
        try writeAtomically(Data("first".utf8), to: path)
        try writeAtomically(Data("second".utf8), to: path)
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "second")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["state.json"], "no temporary file left")
        let permissions = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        XCTAssertEqual(permissions.map { $0 & 0o044 }, 0o044, "readable like any file the user writes")
    }

    func testFailureIsOneFormatErrorNamingTheFile() {
        let path = "/nonexistent-vlmsh-folder/state.json"
        XCTAssertThrowsError(try writeAtomically(Data("x".utf8), to: path)) { error in
            XCTAssertEqual("\(error)", "\(path): cannot write: No such file or directory")
        }
    }
}

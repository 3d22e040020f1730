import Foundation
import XCTest

/// Every input in Tests/Fuzz/corpus (the seeds and each finding kept as a regression input) goes
/// through its fuzz target's reader again, in the plainly built `vlmsh-fuzz`: each must end in an
/// error or a result, never a trap or a signal.
final class FuzzCorpusTests: XCTestCase {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fuzz/corpus").standardized

    func testEveryCorpusInputIsReadWithoutACrash() throws {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vlmsh-fuzz")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            return XCTFail("\(binary.path) is missing: the vlmsh-fuzz target is built with the tests")
        }
        let targets = try FileManager.default.contentsOfDirectory(atPath: Self.corpus.path).sorted()
        XCTAssertEqual(targets, ["config", "data", "gguf", "image", "preprocessor", "safetensors", "script", "tokenizer", "torch"])
        for target in targets {
            let folder = Self.corpus.appendingPathComponent(target)
            let files = try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted().map { folder.appendingPathComponent($0).path }
            XCTAssertFalse(files.isEmpty, "no seeds for \(target)")
            let process = Process()
            process.executableURL = binary
            process.arguments = [target] + files
            try process.run()
            process.waitUntilExit()
            XCTAssertEqual(process.terminationReason, .exit, "\(target): killed by signal \(process.terminationStatus)")
            XCTAssertEqual(process.terminationStatus, 0, "\(target)")
        }
    }
}

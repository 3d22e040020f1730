import Foundation
import VLMFormats
import VLMTokenizers
import XCTest

final class TokenizerErrorTests: XCTestCase {
    private func temporaryFolder() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }

    func testFolderWithoutTokenizerNamesTheFolder() throws {
        let folder = try temporaryFolder()
        XCTAssertThrowsError(try Tokenizer.load(folder: folder)) { error in
            let formatError = error as? FormatError
            XCTAssertEqual(formatError?.file, folder)
            XCTAssertTrue(formatError?.message.contains("no tokenizer") ?? false, "\(error)")
        }
    }

    func testGGUFWithoutTokensNamesTheFile() {
        XCTAssertThrowsError(try Tokenizer.load(gguf: ["general.architecture": .string("llama")], file: "m.gguf")) { error in
            XCTAssertEqual("\(error)", "m.gguf: no tokenizer: tokenizer.ggml.tokens missing")
        }
    }

    func testUnknownGGUFModelType() {
        let metadata: [String: GGUFValue] = ["tokenizer.ggml.model": .string("bert"),
                                             "tokenizer.ggml.tokens": .array([.string("a")])]
        XCTAssertThrowsError(try Tokenizer.load(gguf: metadata, file: "m.gguf")) { error in
            XCTAssertEqual("\(error)", "m.gguf: unsupported tokenizer model type bert")
        }
    }

    func testUnknownGGUFPreTokenizer() {
        let metadata: [String: GGUFValue] = ["tokenizer.ggml.model": .string("gpt2"), "tokenizer.ggml.pre": .string("martian"),
                                             "tokenizer.ggml.tokens": .array([.string("a")]), "tokenizer.ggml.merges": .array([])]
        XCTAssertThrowsError(try Tokenizer.load(gguf: metadata, file: "m.gguf")) { error in
            XCTAssertTrue("\(error)".contains("martian"), "\(error)")
        }
    }

    func testUnknownTokenizerJSONModelType() throws {
        let folder = try temporaryFolder()
        let json = #"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}, "added_tokens": []}"#
        try json.write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Tokenizer.load(folder: folder)) { error in
            XCTAssertEqual("\(error)", "\(folder)/tokenizer.json: unsupported tokenizer model type Unigram")
        }
    }

    func testUnknownPreTokenizerRegex() throws {
        let folder = try temporaryFolder()
        let json = #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "[a-z]+"}, "behavior": "Isolated", "invert": false}}"#
        try json.write(toFile: folder + "/tokenizer.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Tokenizer.load(folder: folder)) { error in
            XCTAssertTrue(error is FormatError, "\(error)")
        }
    }
}

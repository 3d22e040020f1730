import Foundation
import VLMFormats
import VLMTokenizers
import XCTest

/// Fixtures written by Tests/Fixtures/gen_tokenizers.py (transformers / tokenizers reference).
enum Fixtures {
    static let tokenizers = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/tokenizers")
    static let prompts = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("prompts").path

    static func json(_ name: String) throws -> Any {
        let data = try Data(contentsOf: tokenizers.appendingPathComponent(name))
        return try JSONSerialization.jsonObject(with: data)
    }

    static func folder(_ name: String) -> String { tokenizers.appendingPathComponent(name).path }

    struct Case { let text: String; let ids: [Int]; let decoded: String?; let decodedSkippingSpecial: String? }

    static func goldens(_ tokenizer: String) throws -> [Case] {
        let all = try json("goldens.json") as! [String: Any]
        return (all[tokenizer] as! [[String: Any]]).map {
            Case(text: $0["text"] as! String, ids: ($0["ids"] as! [NSNumber]).map(\.intValue),
                 decoded: $0["decoded"] as? String, decodedSkippingSpecial: $0["decoded_skip_special"] as? String)
        }
    }

    /// SmolLM2's tokenizer.json re-expressed as the GGUF metadata llama.cpp writes for it.
    static func smolLM2AsGGUF() throws -> [String: GGUFValue] {
        let data = try Data(contentsOf: tokenizers.appendingPathComponent("smollm2/tokenizer.json"))
        let json = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        let model = json["model"] as! [String: Any]
        let vocab = model["vocab"] as! [String: NSNumber]
        var tokens = [String](repeating: "", count: vocab.count)
        for (token, id) in vocab { tokens[id.intValue] = token }
        var types = [GGUFValue](repeating: .int32(1), count: vocab.count)
        for added in json["added_tokens"] as! [[String: Any]] { types[(added["id"] as! NSNumber).intValue] = .int32(3) }
        let merges = (model["merges"] as! [Any]).map { entry -> GGUFValue in
            if let line = entry as? String { return .string(line) }
            let pair = entry as! [String]
            return .string(pair[0] + " " + pair[1])
        }
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: tokenizers.appendingPathComponent("smollm2/tokenizer_config.json"))) as! [String: Any]
        return [
            "tokenizer.ggml.model": .string("gpt2"), "tokenizer.ggml.pre": .string("smollm"),
            "tokenizer.ggml.tokens": .array(tokens.map(GGUFValue.string)), "tokenizer.ggml.token_type": .array(types),
            "tokenizer.ggml.merges": .array(merges), "tokenizer.ggml.bos_token_id": .uint32(1),
            "tokenizer.ggml.eos_token_id": .uint32(2), "tokenizer.ggml.unknown_token_id": .uint32(0),
            "tokenizer.ggml.padding_token_id": .uint32(2), "tokenizer.ggml.add_bos_token": .bool(false),
            "tokenizer.ggml.add_space_prefix": .bool(false),
            "tokenizer.chat_template": .string(config["chat_template"] as! String),
        ]
    }

    static func spmGGUF() throws -> (metadata: [String: GGUFValue], cases: [Case]) {
        let json = try json("spm-gguf.json") as! [String: Any]
        var metadata: [String: GGUFValue] = [:]
        for (key, value) in json where key.hasPrefix("tokenizer.") {
            if let strings = value as? [String] {
                metadata[key] = .array(strings.map(GGUFValue.string))
            } else if let string = value as? String {
                metadata[key] = .string(string)
            } else if let numbers = value as? [NSNumber] {
                metadata[key] = key.hasSuffix("scores") ? .array(numbers.map { .float32($0.floatValue) })
                    : .array(numbers.map { .int32($0.int32Value) })
            } else if let number = value as? NSNumber {
                metadata[key] = key.contains(".add_") ? .bool(number.boolValue) : .uint32(number.uint32Value)
            }
        }
        let cases = (json["cases"] as! [[String: Any]]).map {
            Case(text: $0["text"] as! String, ids: ($0["ids"] as! [NSNumber]).map(\.intValue),
                 decoded: $0["decoded"] as? String, decodedSkippingSpecial: nil)
        }
        return (metadata, cases)
    }
}

final class TokenizerGoldenTests: XCTestCase {
    static let folders = ["smollm2", "bpe-gpt2", "bpe-llama3", "bpe-qwen2", "spm"]

    private func check(_ tokenizer: Tokenizer, _ cases: [Fixtures.Case], label: String,
                       file: StaticString = #filePath, line: UInt = #line) {
        var failures = 0
        for c in cases {
            let ids = tokenizer.encode(c.text)
            if ids != c.ids {
                failures += 1
                XCTFail("\(label) encode \(c.text.debugDescription): got \(ids), want \(c.ids)", file: file, line: line)
            }
            if let decoded = c.decoded {
                XCTAssertEqual(tokenizer.decode(c.ids), decoded, "\(label) decode \(c.text.debugDescription)", file: file, line: line)
            }
            if let skipped = c.decodedSkippingSpecial {
                XCTAssertEqual(tokenizer.decode(c.ids, skipSpecialTokens: true), skipped,
                               "\(label) decode skipping special \(c.text.debugDescription)", file: file, line: line)
            }
        }
        XCTAssertGreaterThanOrEqual(cases.count, 40, label)
        if failures > 0 { print("\(label): \(failures)/\(cases.count) encodings differ") }
    }

    func testFolderTokenizersMatchTransformers() throws {
        for name in Self.folders {
            let folder = name == "smollm2" ? "smollm2" : "tiny-\(name)"
            let tokenizer = try Tokenizer.load(folder: Fixtures.folder(folder))
            check(tokenizer, try Fixtures.goldens(name), label: name)
            check(tokenizer, try Fixtures.goldens(name + "-fuzz"), label: name + " (random strings)")
        }
    }

    func testSmolLM2FromGGUFMetadataMatchesTransformers() throws {
        let tokenizer = try Tokenizer.load(gguf: Fixtures.smolLM2AsGGUF(), file: "smollm2.gguf")
        check(tokenizer, try Fixtures.goldens("smollm2"), label: "smollm2 (gguf)")
        check(tokenizer, try Fixtures.goldens("smollm2-fuzz"), label: "smollm2 (gguf, random strings)")
        XCTAssertEqual(tokenizer.bosTokenID, 1)
        XCTAssertEqual(tokenizer.eosTokenIDs, [2])
        XCTAssertEqual(tokenizer.vocabSize, 49152)
        XCTAssertEqual(tokenizer.tokenID("<|im_start|>"), 1)
        XCTAssertEqual(tokenizer.encode("Hi", addSpecialTokens: true), tokenizer.encode("Hi"))
    }

    func testSentencePieceScoresFromGGUFMatchTransformers() throws {
        let (metadata, cases) = try Fixtures.spmGGUF()
        let tokenizer = try Tokenizer.load(gguf: metadata, file: "spm.gguf")
        XCTAssertGreaterThanOrEqual(cases.count, 30)
        for c in cases {
            XCTAssertEqual(tokenizer.encode(c.text), c.ids, "encode \(c.text.debugDescription)")
            XCTAssertEqual(tokenizer.decode(c.ids), c.decoded, "decode \(c.text.debugDescription)")
        }
        let bos = try XCTUnwrap(tokenizer.bosTokenID)
        XCTAssertEqual(tokenizer.encode("Hello world", addSpecialTokens: true), [bos] + tokenizer.encode("Hello world"))
    }

    func testSentencePieceAddsBOSWhenAsked() throws {
        let tokenizer = try Tokenizer.load(folder: Fixtures.folder("tiny-spm"))
        for c in try Fixtures.goldens("spm-with-bos") {
            XCTAssertEqual(tokenizer.encode(c.text, addSpecialTokens: true), c.ids, c.text.debugDescription)
        }
    }

    func testSmolLM2Metadata() throws {
        let tokenizer = try Tokenizer.load(folder: Fixtures.folder("smollm2"))
        XCTAssertEqual(tokenizer.vocabSize, 49152)
        XCTAssertEqual(tokenizer.tokenID("<|im_end|>"), 2)
        XCTAssertTrue(tokenizer.eosTokenIDs.contains(2))
        XCTAssertNotNil(tokenizer.chatTemplateSource)
        XCTAssertEqual(try ChatTemplate.detect(jinja: tokenizer.chatTemplateSource, architecture: "llama"), "chatml")
    }

    func testStreamingNeverSplitsCharacters() throws {
        var tokenizers = try Self.folders.map { try Tokenizer.load(folder: Fixtures.folder($0 == "smollm2" ? $0 : "tiny-\($0)")) }
        tokenizers.append(try Tokenizer.load(gguf: Fixtures.spmGGUF().metadata, file: "spm.gguf"))
        let texts = ["Emoji: 😀😃😄 👍🏽 ❤️", "Family: 👨‍👩‍👧‍👦 and flag 🇫🇷 and 🏳️‍🌈", "日本語のテキストと中文文本",
                     "한국어 텍스트입니다", " Café naïve résumé", "<|im_start|>user\n漢字<|im_end|>", "a <s> b </s> c"]
        for tokenizer in tokenizers {
            for text in texts {
                let ids = tokenizer.encode(text)
                for skip in [false, true] {
                    var stream = StreamingDetokenizer(tokenizer: tokenizer, skipSpecialTokens: skip)
                    var pieces: [String] = []
                    for id in ids { pieces.append(stream.append(id)) }
                    pieces.append(stream.flush())
                    let whole = tokenizer.decode(ids, skipSpecialTokens: skip)
                    XCTAssertEqual(pieces.joined(), whole, text)
                    if !whole.contains("\u{FFFD}") {
                        XCTAssertFalse(pieces.contains { $0.contains("\u{FFFD}") }, "U+FFFD while streaming \(text)")
                    }
                }
            }
        }
    }

    func testEncodingTenKilobytesTakesMilliseconds() throws {
        let tokenizer = try Tokenizer.load(folder: Fixtures.folder("smollm2"))
        let paragraph = "The quick brown fox jumps over the lazy dog; naïve café 123456, 日本語 テキスト 😀!\n"
        let text = String(repeating: paragraph, count: 10_240 / paragraph.utf8.count + 1)
        _ = tokenizer.encode(text)
        let start = Date()
        let ids = tokenizer.encode(text)
        let elapsed = Date().timeIntervalSince(start)
        print("encoded \(text.utf8.count) bytes into \(ids.count) tokens in \(String(format: "%.2f", elapsed * 1000)) ms")
        XCTAssertEqual(tokenizer.decode(ids), text)
        XCTAssertLessThan(elapsed, 0.25)

        // Cold cache, long unsplit text (SentencePiece without a pre-tokenizer).
        let spm = try Tokenizer.load(folder: Fixtures.folder("tiny-spm"))
        let spmStart = Date()
        let spmIDs = spm.encode(text)
        let spmElapsed = Date().timeIntervalSince(spmStart)
        print("spm: \(spmIDs.count) tokens in \(String(format: "%.2f", spmElapsed * 1000)) ms")
        XCTAssertLessThan(spmElapsed, 0.5)
    }
}

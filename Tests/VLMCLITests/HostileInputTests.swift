import Foundation
import VLMHome
import VLMImage
import VLMTestSupport
import XCTest

/// Values nothing checked after parsing used to crash the binary (Swift traps, terabyte
/// allocations, a FIFO waited on forever). Each hostile file here is built from a good fixture;
/// the binary must answer with one error line naming the file and the key, exit status 1, and no
/// signal.
final class HostileInputTests: XCTestCase {
    struct Outcome { let status: Int32; let signaled: Bool; let stderr: String }

    /// Runs the built binary with a deadline (a hang is a failure, not a stuck suite).
    func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 60) throws -> Outcome {
        let process = Process()
        process.executableURL = CLITests.binary
        process.arguments = arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: errURL)
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate(); XCTFail("vlmsh \(arguments) hung") }
        process.waitUntilExit()
        return Outcome(status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
                       stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
    }

    /// `generate` on `model` ends in exit status 1 with one stderr line containing every needle.
    func assertRefused(model: String, extra: [String] = [], mentions needles: [String],
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"] + extra)
        XCTAssertFalse(r.signaled, "killed by signal \(r.status); stderr: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, 1, "exit status; stderr: \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertEqual(lines.count, 1, "one error line, got: \(r.stderr)", file: file, line: line)
        for n in needles { XCTAssertTrue(r.stderr.contains(n), "'\(n)' not in: \(r.stderr)", file: file, line: line) }
    }

    // MARK: - GGUF metadata

    /// The installed SmolLM2, read once: every GGUF case patches a copy of it.
    static let smolLM2: Data? = (try? installedDefaultModel()).flatMap { FileManager.default.contents(atPath: $0) }

    /// A copy of SmolLM2 with `patch` applied, written to a scratch folder.
    func patchedModel(_ patch: (inout Data) throws -> Void) throws -> String {
        _ = try installedDefaultModel()
        var bytes = try XCTUnwrap(Self.smolLM2)
        try patch(&bytes)
        let path = try scratchDirectory("vlmsh-hostile") + "/model.gguf"
        try bytes.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Offset of the type code of metadata `key` (just after its length-prefixed name).
    func typeOffset(of key: String, in bytes: Data, file: StaticString = #filePath, line: UInt = #line) throws -> Int {
        let name = withUnsafeBytes(of: UInt64(key.utf8.count).littleEndian) { Data($0) } + Data(key.utf8)
        return try XCTUnwrap(bytes.range(of: name), "no key \(key)", file: file, line: line).upperBound
    }

    /// Sets a 4-byte integer key in place: type code (4 = uint32, 5 = int32) and value bits.
    func setUInt32(_ key: String, _ value: UInt32, type: UInt32 = 4, in bytes: inout Data) throws {
        let at = try typeOffset(of: key, in: bytes)
        XCTAssertEqual(bytes[at], 4, "\(key) is stored as uint32 in SmolLM2")
        bytes.replaceSubrange(at..<(at + 8), with: withUnsafeBytes(of: type.littleEndian) { Data($0) }
                              + withUnsafeBytes(of: value.littleEndian) { Data($0) })
    }

    func testGGUFBlockCountOutOfRange() throws {
        let huge = try patchedModel { try setUInt32("llama.block_count", 0xFFFF_FFFF, in: &$0) }
        try assertRefused(model: huge, mentions: [huge, "llama.block_count 4294967295 is out of range (1…1024)"])
        let negative = try patchedModel { try setUInt32("llama.block_count", 0xFFFF_FFFF, type: 5, in: &$0) }
        try assertRefused(model: negative, mentions: [negative, "llama.block_count -1 is out of range"])
        let extra = try patchedModel { try setUInt32("llama.block_count", 31, in: &$0) }
        try assertRefused(model: extra, mentions: [extra, "llama.block_count 31 does not match the tensors' blocks (30"])
    }

    func testGGUFZeroHeadsWithoutRopeDimension() throws {
        let path = try patchedModel { bytes in
            try setUInt32("llama.attention.head_count", 0, in: &bytes)
            // Renamed in place (same length): the head size would have to be hidden / heads.
            let at = try typeOffset(of: "llama.rope.dimension_count", in: bytes)
            bytes.replaceSubrange((at - 5)..<at, with: Data("xxxxx".utf8))
        }
        try assertRefused(model: path, mentions: [path, "llama.attention.head_count 0 is out of range (1…1024)"])
    }

    func testGGUFSizesAbsurdOrInconsistentWithTensors() throws {
        let cases: [(String, UInt32, String)] = [
            ("llama.embedding_length", 0x7FFF_FFFF, "llama.embedding_length 2147483647 is out of range"),
            ("llama.embedding_length", 577, "llama.embedding_length does not match tensor token_embd.weight"),
            ("llama.feed_forward_length", 1537, "llama.feed_forward_length does not match tensor blk.0.ffn_up.weight"),
            ("llama.attention.head_count_kv", 0, "llama.attention.head_count_kv 0 is out of range (1…9)"),
            ("llama.attention.head_count_kv", 2, "llama.attention.head_count 9 is not a multiple of llama.attention.head_count_kv 2"),
            ("llama.attention.head_count", 12, "llama.attention.head_count does not match tensor blk.0.attn_q.weight"),
            ("llama.vocab_size", 0x7FFF_FFFF, "llama.vocab_size 2147483647 differs from token_embd.weight's 49152 rows"),
        ]
        for (key, value, message) in cases {
            let path = try patchedModel { try setUInt32(key, value, in: &$0) }
            try assertRefused(model: path, mentions: [path, message])
        }
    }

    // MARK: - Model folders (config.json, tokenizer.json, preprocessor_config.json)

    static let tinyLlama = CLITests.fixtures.appendingPathComponent("tinyllama/llama").path
    static let clipLlama = CLITests.fixtures.appendingPathComponent("llava/clip-llama").path

    /// A copy of fixture folder `source` with JSON file `name` rewritten by `edit`.
    func folder(_ source: String, editing name: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        let dir = try scratchDirectory("vlmsh-hostile") + "/model"
        try FileManager.default.copyItem(atPath: source, toPath: dir)
        let url = URL(fileURLWithPath: dir + "/" + name)
        var json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        edit(&json)
        try JSONSerialization.data(withJSONObject: json).write(to: url)
        return dir
    }

    func testTextConfigCountsOutOfRangeOrNotDividing() throws {
        for layers in [-1, 1_000_000_000] {
            let dir = try folder(Self.tinyLlama, editing: "config.json") { $0["num_hidden_layers"] = layers }
            try assertRefused(model: dir, mentions: [dir + "/config.json", "num_hidden_layers \(layers) is out of range (1…1024)"])
        }
        let noHeads = try folder(Self.tinyLlama, editing: "config.json") { $0["num_attention_heads"] = 0; $0["head_dim"] = nil }
        try assertRefused(model: noHeads, mentions: [noHeads + "/config.json", "num_attention_heads 0 is out of range"])
        let uneven = try folder(Self.tinyLlama, editing: "config.json") { $0["hidden_size"] = 30; $0["head_dim"] = nil }
        try assertRefused(model: uneven, mentions: [uneven + "/config.json", "hidden_size 30 is not a multiple of num_attention_heads 4"])
        let kv = try folder(Self.tinyLlama, editing: "config.json") { $0["num_key_value_heads"] = 3 }
        try assertRefused(model: kv, mentions: [kv + "/config.json", "num_attention_heads 4 is not a multiple of num_key_value_heads 3"])
    }

    func testLlavaConfigNestedValuesOutOfRange() throws {
        func edit(_ key: String, _ field: String, _ value: Any) throws -> String {
            try folder(Self.clipLlama, editing: "config.json") { json in
                var nested = json[key] as! [String: Any]
                nested[field] = value
                json[key] = nested
            }
        }
        let cases: [(String, String, Any, String)] = [
            ("vision_config", "image_size", 1 << 40, "vision_config.image_size 1099511627776 is out of range (1…8192)"),
            ("vision_config", "hidden_size", 30, "vision_config.hidden_size 30 is not a multiple of num_attention_heads 4"),
            ("vision_config", "patch_size", 0, "vision_config.patch_size 0 is out of range (1…32)"),
            ("text_config", "num_hidden_layers", 1_000_000_000, "text_config.num_hidden_layers 1000000000 is out of range"),
        ]
        for (key, field, value, message) in cases {
            let dir = try edit(key, field, value)
            try assertRefused(model: dir, mentions: [dir + "/config.json", message])
        }
    }

    func testAddedTokenIDsOutsideTheVocabulary() throws {
        for id in [-1, 1_000_000_000_000, 1 << 62] {
            let dir = try folder(Self.clipLlama, editing: "tokenizer.json") { json in
                var added = json["added_tokens"] as! [[String: Any]]
                added.append(["id": id, "content": "<hostile>", "special": true])
                json["added_tokens"] = added
            }
            try assertRefused(model: dir, mentions: [dir + "/tokenizer.json", "added_tokens id \(id) of '<hostile>' is out of range (0…"])
        }
    }

    func testPreprocessorSizesOutOfRange() throws {
        let cases: [(String, Any, String)] = [
            ("size", ["shortest_edge": 1_000_000_000], "size.shortest_edge 1000000000 is out of range (1…4096)"),
            ("size", 1_000_000_000, "size.shortest_edge 1000000000 is out of range"),
            ("crop_size", ["height": 1_000_000_000, "width": 32], "crop_size.height 1000000000 is out of range"),
            ("size", ["height": 32, "width": 0], "size.width 0 is out of range"),
        ]
        for (key, value, message) in cases {
            let dir = try folder(Self.clipLlama, editing: "preprocessor_config.json") { $0[key] = value }
            try assertRefused(model: dir, mentions: [dir + "/preprocessor_config.json", message])
        }
    }

    /// A FIFO in place of a JSON file of the folder is refused at once, not waited on.
    func testFIFOsAmongTheModelFilesAreRefused() throws {
        for (source, name) in [(Self.tinyLlama, "config.json"), (Self.clipLlama, "tokenizer.json"),
                               (Self.clipLlama, "preprocessor_config.json")] {
            let dir = try scratchDirectory("vlmsh-hostile") + "/model"
            try FileManager.default.copyItem(atPath: source, toPath: dir)
            try FileManager.default.removeItem(atPath: dir + "/" + name)
            XCTAssertEqual(mkfifo(dir + "/" + name, 0o644), 0)
            try assertRefused(model: dir, mentions: [dir + "/" + name, "not a regular file"])
        }
    }

    // MARK: - Non-finite weights

    /// A copy of a fixture folder with the first element of safetensors tensor `name` set to `value`.
    func folder(_ source: String, poisoning name: String, with value: Float) throws -> String {
        let dir = try scratchDirectory("vlmsh-hostile") + "/model"
        try FileManager.default.copyItem(atPath: source, toPath: dir)
        let url = URL(fileURLWithPath: dir + "/model.safetensors")
        var bytes = try Data(contentsOf: url)
        let headerLength = Int(bytes.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }.littleEndian)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: bytes.subdata(in: 8..<(8 + headerLength))) as? [String: Any])
        let entry = try XCTUnwrap(header[name] as? [String: Any], "no tensor \(name)")
        XCTAssertEqual(entry["dtype"] as? String, "F32")
        let begin = try XCTUnwrap((entry["data_offsets"] as? [Int])?.first) + 8 + headerLength
        bytes.replaceSubrange(begin..<(begin + 4), with: withUnsafeBytes(of: value.bitPattern.littleEndian) { Data($0) })
        try bytes.write(to: url)
        return dir
    }

    func testNonFiniteWeightsAreRefusedByName() throws {
        // A text projection (kept mapped) and a vision tower weight (converted at load).
        let text = "model.layers.0.mlp.up_proj.weight"
        let textDir = try folder(Self.tinyLlama, poisoning: text, with: .nan)
        try assertRefused(model: textDir, mentions: [textDir, "weight '\(text)' holds a non-finite value (nan) at element 0"])
        let vision = "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
        let visionDir = try folder(Self.clipLlama, poisoning: vision, with: .infinity)
        try assertRefused(model: visionDir, mentions: [visionDir, "weight '\(vision)' holds a non-finite value (inf)"])
    }

    // MARK: - Images whose preprocessing would blow up

    func testExtremeAspectRatioIsRefusedBeforeResizing() throws {
        let demo = VLMHome.models() + "/vlmsh-demo"
        guard FileManager.default.fileExists(atPath: demo + "/config.json") else {
            if ProcessInfo.processInfo.environment["VLMSH_REQUIRE_MODEL"] == "1" { XCTFail("demo model missing at \(demo) (make model)") }
            throw XCTSkip("demo model not installed at \(demo); run `make model`")
        }
        let dir = try scratchDirectory("vlmsh-hostile")
        // Tiny files (deflate squeezes a flat row to almost nothing) that the demo's 96-pixel
        // shortest edge would resize to 96 000 000×96 (27.6 GB of pixels, 31.4 GB with the
        // horizontal pass and its filter taps) and 9 600 000×96 (3.1 GB in all).
        for (width, size) in [(1_000_000, "31.4 GB"), (100_000, "3.1 GB")] {
            let path = dir + "/wide-\(width).png"
            try PNGEncoder.write(RGBImage(width: width, height: 1, filledWith: (200, 30, 30)), to: path)
            try assertRefused(model: demo, extra: ["--image", path],
                              mentions: ["image \(width)×1", "resized to \(width * 96)×96", "would allocate \(size)"])
        }
    }
}

import Foundation
import VLMStore
import XCTest

/// `vlmsh eval` and `vlmsh merge` on the tiny LLaVA and the PEFT fixture adapter, run as a user
/// would (a private VLMSH_HOME, so the store is the test's own).
final class EvalMergeCLITests: XCTestCase {
    static let data = CLITests.fixtures.path
    static let base = data + "/llava/clip-llama"
    static let loraInit = data + "/train/lora-init"
    static let examples = data + "/train/examples.jsonl"
    static let square = data + "/llava/images/square.png"
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: EvalMergeCLITests.data + "/train/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()
    static func firstLoss(_ name: String) -> Double {
        (((golden["cases"] as! [String: Any])[name] as! [String: Any])["losses"] as! [Double])[0]
    }
    /// Example A as the model sees it before image expansion.
    static let exampleA = "1,700,333,548,599,471,74,168,499,128,595,244,23,109,95,220,661,169,644,381,654"

    var home = ""

    override func setUpWithError() throws {
        home = try temporaryDirectory()
    }

    func temporaryDirectory() throws -> String { try scratchDirectory("vlmsh-evalmerge") }

    /// Runs the built binary with VLMSH_HOME = `home`.
    func vlmsh(_ arguments: [String]) throws -> CLITests.Result {
        try CLITests.vlmsh(arguments, home: home, timeout: 300)
    }

    func json(_ r: CLITests.Result, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, "--json prints one object: \(r.stdout)", file: file, line: line)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout, file: file, line: line)
    }

    func assertOneLineError(_ r: CLITests.Result, mentions needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "exit status; stderr: \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertEqual(lines.count, 1, "one error line, got: \(r.stderr)", file: file, line: line)
        for n in needles { XCTAssertTrue(r.stderr.contains(n), "'\(n)' not in: \(r.stderr)", file: file, line: line) }
    }

    /// Two demo-style rows tagged with a kind, images by absolute path.
    func kindRows() throws -> String {
        let rows: [[String: Any]] = [
            ["id": "a", "kind": "shape", "image": Self.square,
             "conversations": [["from": "human", "value": "<image>\nWhat shape is this?"], ["from": "gpt", "value": "A square."]]],
            ["id": "b", "kind": "colour", "image": Self.data + "/llava/images/wide.png",
             "conversations": [["from": "human", "value": "What colour is it?"], ["from": "gpt", "value": "Red."]]],
        ]
        let path = try temporaryDirectory() + "/kinds.json"
        try JSONSerialization.data(withJSONObject: rows, options: [.prettyPrinted]).write(to: URL(fileURLWithPath: path))
        return path
    }

    // MARK: - eval

    func testEvalJSONOnTheTinyLLaVA() throws {
        let j = try json(vlmsh(["eval", "--model", Self.base, "--data", Self.examples, "--max-new-tokens", "4", "--json"]))
        XCTAssertEqual(j["rows"] as? Int, 3)
        XCTAssertEqual(j["tokens"] as? Int, 36)
        XCTAssertEqual(j["generated_rows"] as? Int, 3)
        XCTAssertEqual(j["blank_images"] as? Bool, false)
        let rows = try XCTUnwrap(j["per_row"] as? [[String: Any]])
        XCTAssertEqual(rows.count, 3)
        // Example A's loss on the base model, as PyTorch computes it.
        XCTAssertEqual(try XCTUnwrap(rows[0]["loss"] as? Double), Self.firstLoss("projector"), accuracy: 1e-4 * Self.firstLoss("projector"))
        let loss = try XCTUnwrap(j["loss"] as? Double)
        XCTAssertEqual(try XCTUnwrap(j["perplexity"] as? Double), exp(loss), accuracy: 1e-6 * exp(loss))
        XCTAssertNotNil(j["token_accuracy"] as? Double)
        XCTAssertNotNil(j["exact_match"] as? Double)
        XCTAssertNotNil(j["exact_match_normalized"] as? Double)
        XCTAssertTrue(rows.allSatisfy { $0["generated"] is String && $0["reference"] is String })
        XCTAssertEqual(j["stored"] as? Int, 5)

        // With the adapter: PEFT's loss.
        let adapted = try json(vlmsh(["eval", "--model", Self.base, "--adapter", Self.loraInit, "--data", Self.examples,
                                      "--limit", "1", "--max-new-tokens", "0", "--no-store", "--json"]))
        XCTAssertEqual(adapted["rows"] as? Int, 1)
        XCTAssertEqual(adapted["adapter_kind"] as? String, "lora")
        XCTAssertTrue(adapted["exact_match"] is NSNull)
        XCTAssertEqual(adapted["stored"] as? Int, 0)
        XCTAssertEqual(try XCTUnwrap(adapted["loss"] as? Double), Self.firstLoss("lora"), accuracy: 1e-4 * Self.firstLoss("lora"))
    }

    func testEvalStoresOneRowPerMetric() throws {
        let data = try kindRows()
        let j = try json(vlmsh(["eval", "--model", Self.base, "--adapter", Self.loraInit, "--data", data, "--max-new-tokens", "3", "--json"]))
        let metrics = try XCTUnwrap(j["metrics"] as? [String: Double])
        XCTAssertEqual(Set(metrics.keys), ["loss", "perplexity", "token_accuracy", "exact_match", "exact_match_normalized",
                                           "exact_match/shape", "exact_match_normalized/shape",
                                           "exact_match/colour", "exact_match_normalized/colour"])
        let kinds = try XCTUnwrap(j["by_kind"] as? [String: [String: Any]])
        XCTAssertEqual(kinds["shape"]?["rows"] as? Int, 1)
        XCTAssertEqual(kinds["colour"]?["rows"] as? Int, 1)

        let store = try Store(path: home + "/vlmsh.sqlite")
        let evals = try store.evals(modelPath: Self.base)
        XCTAssertEqual(evals.count, metrics.count)
        for e in evals {
            XCTAssertEqual(e.value, try XCTUnwrap(metrics[e.metric], e.metric), accuracy: 1e-12, e.metric)
            XCTAssertTrue(e.dataset.hasSuffix("/kinds.json"), e.dataset)
            XCTAssertNil(e.checkpoint)
            let details = try XCTUnwrap(JSONSerialization.jsonObject(with: Data((e.details ?? "").utf8)) as? [String: Any])
            XCTAssertEqual(details["adapter"] as? String, Self.loraInit)
            XCTAssertEqual(details["rows"] as? Int, 2)
        }
        XCTAssertEqual(try store.models().map(\.path), [Self.base])

        // The image ablation is stored under its own names; --no-store stores nothing.
        let text = try vlmsh(["eval", "--model", Self.base, "--data", data, "--max-new-tokens", "3", "--blank-images"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("images blanked"), text.stdout)
        XCTAssertTrue(text.stdout.contains("stored 9 metrics"), text.stdout)
        let blank = try store.evals(modelPath: Self.base).dropFirst(evals.count)
        XCTAssertEqual(blank.count, 9)
        XCTAssertTrue(blank.allSatisfy { $0.metric.hasPrefix("blank_images/") }, "\(blank.map(\.metric))")
        XCTAssertEqual(try vlmsh(["eval", "--model", Self.base, "--data", data, "--max-new-tokens", "0", "--no-store"]).status, 0)
        XCTAssertEqual(try store.evals().count, evals.count + 9)
    }

    // MARK: - merge

    func testMergedFolderGivesTheAdaptedLogits() throws {
        let out = try temporaryDirectory() + "/merged"
        let m = try json(vlmsh(["merge", "--model", Self.base, "--adapter", Self.loraInit, "--out", out, "--json"]))
        XCTAssertEqual(m["merged_weights"] as? Int, 14)
        XCTAssertEqual(m["adapter_kind"] as? String, "lora")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/model.safetensors"))

        // Every last-position logit of example A equals PEFT's base + adapter.
        let logits = try json(vlmsh(["logits", "--model", out, "--ids", Self.exampleA, "--image", Self.square, "--top-k", "701", "--json"]))
        let top = try XCTUnwrap(logits["top"] as? [[Any]])
        XCTAssertEqual(top.count, 701)
        let expected = Self.golden["lora_init_logits"] as! [Double]
        var worst = 0.0
        for entry in top {
            let id = try XCTUnwrap(entry[0] as? Int), value = try XCTUnwrap(entry[1] as? Double)
            worst = max(worst, abs(value - expected[id]))
        }
        XCTAssertLessThan(worst, 1e-4)

        // And eval of the merged model equals eval of base + adapter.
        let merged = try json(vlmsh(["eval", "--model", out, "--data", Self.examples, "--max-new-tokens", "0", "--no-store", "--json"]))
        let adapted = try json(vlmsh(["eval", "--model", Self.base, "--adapter", Self.loraInit, "--data", Self.examples,
                                      "--max-new-tokens", "0", "--no-store", "--json"]))
        XCTAssertEqual(try XCTUnwrap(merged["loss"] as? Double), try XCTUnwrap(adapted["loss"] as? Double), accuracy: 1e-4)

        // The output is never overwritten.
        assertOneLineError(try vlmsh(["merge", "--model", Self.base, "--adapter", Self.loraInit, "--out", out]), mentions: [out, "already exists"])
    }

    /// merge copies what a model folder needs (config, tokenizer, processor, chat template), not
    /// every file beside the base weights.
    func testMergeCopiesOnlyModelFiles() throws {
        let base = try temporaryDirectory() + "/base"
        try FileManager.default.createDirectory(atPath: base + "/old-run", withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: Self.base) {
            try FileManager.default.createSymbolicLink(atPath: base + "/" + name, withDestinationPath: Self.base + "/" + name)
        }
        for stray in ["notes.txt", "optimizer.bin", "old-run/trainer_state.json"] {
            try Data("stray".utf8).write(to: URL(fileURLWithPath: base + "/" + stray))
        }
        try Data("{}".utf8).write(to: URL(fileURLWithPath: base + "/chat_template.json"))
        let out = try temporaryDirectory() + "/merged"
        let m = try json(vlmsh(["merge", "--model", base, "--adapter", Self.loraInit, "--out", out, "--dtype", "F16", "--json"]))
        let expected = ["chat_template.json", "config.json", "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
        XCTAssertEqual(m["copied"] as? [String], expected)
        XCTAssertEqual(m["dtype"] as? String, "f16")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out).sorted(), (expected + ["model.safetensors"]).sorted())
    }

    func testBadAdapterFolderIsOneErrorLine() throws {
        let empty = try temporaryDirectory()
        assertOneLineError(try vlmsh(["eval", "--model", Self.base, "--adapter", empty, "--data", Self.examples, "--no-store"]),
                           mentions: [empty + "/adapter_config.json", "not an adapter folder"])
        let out = try temporaryDirectory() + "/merged"
        assertOneLineError(try vlmsh(["merge", "--model", Self.base, "--adapter", empty, "--out", out]),
                           mentions: [empty + "/adapter_config.json"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp"))
        // A GGUF base cannot be written back as a Hugging Face folder.
        let gguf = Self.data + "/quant/types.gguf"
        assertOneLineError(try vlmsh(["merge", "--model", gguf, "--adapter", Self.loraInit, "--out", out]), mentions: [gguf, "GGUF"])
        assertOneLineError(try vlmsh(["eval", "--model", Self.base, "--data", empty + "/missing.json", "--no-store"]),
                           mentions: ["missing.json"])
    }
}

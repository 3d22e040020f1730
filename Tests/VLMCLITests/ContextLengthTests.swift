import Foundation
import VLMApp
import VLMModels
import VLMStore
import XCTest

/// The model's context length bounds everything: prompts that do not fit are refused, replies stop
/// when it is full, training rows longer than it are bad rows, and the KV cache never outgrows it.
/// Models with a small context (patched copies of the fixtures) keep these tests fast.
final class ContextLengthTests: XCTestCase {
    /// SmolLM2 with `llama.context_length` patched to `context` (the value is a u32 after the key
    /// and its type), in a fresh VLMSH_HOME's model store as `smollm2`.
    func smolLMHome(context: UInt32) throws -> (home: String, model: String) {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: try CLITests.defaultModel()))
        let key = try XCTUnwrap(bytes.range(of: Data("llama.context_length".utf8))).upperBound
        XCTAssertEqual(Array(bytes[key..<key + 8]), [4, 0, 0, 0, 0, 0x20, 0, 0], "u32 8192")
        bytes.replaceSubrange(key + 4..<key + 8, with: withUnsafeBytes(of: context.littleEndian) { Data($0) })
        let home = try scratchDirectory("vlmsh-context")
        try FileManager.default.createDirectory(atPath: home + "/models", withIntermediateDirectories: true)
        let model = home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        try bytes.write(to: URL(fileURLWithPath: model))
        return (home, model)
    }

    /// The tiny LLaVA fixture with `text_config.max_position_embeddings` set to `context`.
    func tinyLlava(context: Int) throws -> String {
        let folder = try scratchDirectory("vlmsh-tiny") + "/clip-llama"
        try FileManager.default.copyItem(atPath: EvalMergeCLITests.base, toPath: folder)
        let url = URL(fileURLWithPath: folder + "/config.json")
        var config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        var text = try XCTUnwrap(config["text_config"] as? [String: Any])
        text["max_position_embeddings"] = context
        config["text_config"] = text
        try JSONSerialization.data(withJSONObject: config).write(to: url)
        return folder
    }

    func json(_ r: CLITests.Result) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout + r.stderr)
    }

    func testGenerationStopsWhenTheContextIsFull() throws {
        let (home, model) = try smolLMHome(context: 64)
        let r = try CLITests.vlmsh(["generate", "--model", model, "--prompt", "Tell me a long story about a dragon.",
                                    "--temperature", "0", "--max-tokens", "100", "--json"], home: home)
        let j = try json(r)
        let prompt = try XCTUnwrap(j["prompt_ids"] as? [Int]), ids = try XCTUnwrap(j["ids"] as? [Int])
        XCTAssertEqual(j["finish_reason"] as? String, "context")
        // Every position of the context holds a prompt token or a fed-back reply token; the last
        // reply token comes from the last position's logits.
        XCTAssertEqual(prompt.count + ids.count, 64 + 1)

        // Any --max-tokens: the cache is sized within the context, not by the request.
        let text = try CLITests.vlmsh(["generate", "--model", model, "--prompt", "Tell me a long story about a dragon.",
                                       "--temperature", "0", "--max-tokens", "\(Int.max)"], home: home)
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stderr.contains("stopped at the model's context of 64 tokens"), text.stderr)
    }

    func testPromptsLongerThanTheContextAreRefusedByEveryCommand() throws {
        let (home, model) = try smolLMHome(context: 64)
        let long = String(repeating: "the river runs ", count: 40)
        for command in ["generate", "logits"] {
            let r = try CLITests.vlmsh([command, "--model", model, "--prompt", long, "--raw"], home: home)
            XCTAssertEqual(r.status, 1, "\(command): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertTrue(r.stderr.contains("more than the model's context of 64"), "\(command): \(r.stderr)")
        }
    }

    /// The chat: a reply that fills the context stops with a note, the next message no longer
    /// fits and is refused in one line, and the script stops there.
    func testAChatStopsAtTheContextAndRefusesTheNextMessage() throws {
        let (home, _) = try smolLMHome(context: 64)
        let script = home + "/long.vlm"
        try """
            /set temperature 0
            /set max_tokens 100
            Tell me a long story about a dragon.
            And then?
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try CLITests.vlmsh(["run", script, "--json"], home: home)
        XCTAssertEqual(r.status, 1, r.stderr)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        let output = try XCTUnwrap(j["output"] as? String)
        XCTAssertTrue(output.contains("(the reply stopped at the model's context of 64 tokens; /clear starts a new chat)"), output)
        let errors = try XCTUnwrap(j["errors"] as? [String])
        XCTAssertEqual(errors.count, 1, "\(errors)")
        XCTAssertTrue(errors[0].contains("stopped at \"And then?\""), errors[0])
        XCTAssertTrue(errors[0].contains("more than the model's context of 64"), errors[0])
        XCTAssertEqual((j["replies"] as? [String])?.count, 1)
    }

    /// 40k tokens against SmolLM2's real 8192: refused at once, before any memory is sized for it,
    /// by `generate` (digits are one token each: an argument holds at most 128 KB) and by a chat.
    func testAFortyThousandTokenPromptIsRefusedAtOnce() throws {
        _ = try CLITests.defaultModel()
        let started = Date()
        let r = try CLITests.vlmsh(["generate", "--prompt", String(repeating: "7", count: 40_000), "--raw", "--max-tokens", "1"], timeout: 60)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("the prompt is 40000 tokens, more than the model's context of 8192"), r.stderr)

        let home = try scratchHomeWithDefaultModel("vlmsh-40k")
        let script = home + "/long.vlm"
        try (String(repeating: "river ", count: 40_000) + "\n").write(toFile: script, atomically: true, encoding: .utf8)
        let chat = try CLITests.vlmsh(["run", script, "--json"], home: home, timeout: 60)
        XCTAssertEqual(chat.status, 1, chat.stderr)
        XCTAssertTrue(chat.stdout.contains("more than the model's context of 8192"), String(chat.stdout.suffix(400)))
        XCTAssertLessThan(Date().timeIntervalSince(started), 60)
    }

    func testTrainingRowsLongerThanTheContextAreBadRows() throws {
        let model = try tinyLlava(context: 64)
        let dir = try scratchDirectory("vlmsh-context-data")
        func row(_ length: Int) -> String {
            let ids = (0..<length).map { 100 + $0 % 500 }
            let labels = ids.enumerated().map { $0.offset < length / 2 ? -100 : $0.element }
            return "{\"input_ids\": \(ids), \"labels\": \(labels)}"
        }
        let data = dir + "/rows.jsonl"
        try [row(40), row(300)].joined(separator: "\n").write(toFile: data, atomically: true, encoding: .utf8)

        let train = try CLITests.vlmsh(["finetune", "--model", model, "--data", data, "--out", dir + "/run", "--steps", "1"], home: dir)
        XCTAssertEqual(train.status, 1, train.stderr)
        XCTAssertTrue(train.stderr.contains("rows.jsonl:2: over-long sample: 300 positions, more than the model's context of 64"), train.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/run/adapter_model.safetensors"))

        // --skip-bad-rows trains on the row that fits; eval reports the same bad row.
        let skipped = try CLITests.vlmsh(["finetune", "--model", model, "--data", data, "--out", dir + "/run", "--steps", "1",
                                          "--skip-bad-rows"], home: dir)
        XCTAssertEqual(skipped.status, 0, skipped.stderr)
        let eval = try CLITests.vlmsh(["eval", "--model", model, "--data", data, "--no-store"], home: dir)
        XCTAssertEqual(eval.status, 1, eval.stderr)
        XCTAssertTrue(eval.stderr.contains("over-long sample: 300 positions"), eval.stderr)
    }

    /// The KV cache is sized within the context, whatever a caller asks for, and doubling stops there.
    func testTheKVCacheNeverOutgrowsTheContext() throws {
        let model = try loadChatModel(path: try tinyLlava(context: 48))
        let cache = model.decoder.makeCache(capacity: 1_000_000)
        XCTAssertEqual(cache.capacity, 48)
        let growing = model.decoder.makeCache(capacity: 20)
        _ = try model.decoder.forward(tokens: Array(repeating: 5, count: 30), cache: growing)
        XCTAssertEqual(growing.capacity, 40)
        _ = try model.decoder.forward(tokens: Array(repeating: 5, count: 15), cache: growing)
        XCTAssertEqual(growing.capacity, 48, "doubling 40 → 80 stops at the context")
    }
}

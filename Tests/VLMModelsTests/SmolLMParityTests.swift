import VLMGeneration
import VLMModels
import VLMTensor
import VLMTokenizers
import XCTest

/// The real SmolLM2-135M-Instruct Q4_1 GGUF against transformers on the same file
/// (Tests/Fixtures/gen_smollm.py): prompt ids, top-5 and probe logits, 32-token greedy replies.
final class SmolLMParityTests: XCTestCase {
    nonisolated(unsafe) static var loaded: TextModel?

    func model() throws -> TextModel {
        if let m = Self.loaded { return m }
        let m = try TextModel(path: Fixtures.defaultModel())
        Self.loaded = m
        return m
    }

    func cases() throws -> (golden: [String: Any], cases: [[String: Any]]) {
        let golden = try Fixtures.json("smollm/golden.json")
        return (golden, try XCTUnwrap(golden["cases"] as? [[String: Any]]))
    }

    func promptIDs(_ m: TextModel, _ c: [String: Any]) throws -> [Int] {
        let prompt = try XCTUnwrap(c["prompt"] as? String)
        if c["kind"] as? String == "chat" { return m.chatPromptIDs([ChatMessage(role: .user, text: prompt)]) }
        return m.tokenizer.encode(prompt, addSpecialTokens: true)
    }

    func testPromptIDsMatch() throws {
        let m = try model()
        for c in try cases().cases {
            XCTAssertEqual(try promptIDs(m, c), c["prompt_ids"] as? [Int], "prompt ids of \(c["prompt"] ?? "")")
        }
    }

    func testLastPositionLogitsMatch() throws {
        let m = try model()
        let (golden, cases) = try cases()
        let probes = try XCTUnwrap(golden["probe_ids"] as? [Int])
        for c in cases {
            let ids = try XCTUnwrap(c["prompt_ids"] as? [Int])
            let logits = try m.decoder.forward(tokens: ids, cache: m.decoder.makeCache(capacity: ids.count))
            let top5 = try XCTUnwrap(c["top5"] as? [[Double]])
            let ours = (0..<logits.count).sorted { logits[$0] > logits[$1] }.prefix(5)
            XCTAssertEqual(Array(ours), top5.map { Int($0[0]) }, "top-5 ids of \(c["prompt"] ?? "")")
            var worst: Float = 0
            for pair in top5 { worst = max(worst, abs(logits[Int(pair[0])] - Float(pair[1]))) }
            for (id, value) in zip(probes, try XCTUnwrap(c["probe_logits"] as? [Double])) {
                worst = max(worst, abs(logits[id] - Float(value)))
            }
            XCTAssertLessThan(worst, 1e-3, "logits of \(c["prompt"] ?? ""): max diff \(worst)")
        }
    }

    func testGreedyContinuationsMatch() throws {
        let m = try model()
        let (golden, cases) = try cases()
        let stops = Set(try XCTUnwrap(golden["stop_ids"] as? [Int]))
        var parameters = GenerationParameters()
        parameters.temperature = 0
        parameters.maxTokens = try XCTUnwrap(golden["new_tokens"] as? Int)
        for c in cases {
            let ids = try XCTUnwrap(c["prompt_ids"] as? [Int])
            let cache = m.decoder.makeCache(capacity: ids.count + parameters.maxTokens)
            let generator = Generator(
                tokenizer: m.tokenizer, parameters: parameters, promptIDs: ids, stopTokens: stops,
                prefill: { try m.decoder.forward(tokens: ids, cache: cache) },
                step: { try m.decoder.forward(tokens: [$0], cache: cache) })
            while try generator.next() != nil {}
            XCTAssertEqual(generator.ids, c["greedy_ids"] as? [Int], "greedy reply to \(c["prompt"] ?? "")")
        }
    }

    /// Decode with 8-bit activations (`--activations int8`) against the Float32 decode,
    /// both fed the Float32 greedy tokens: how far the logits move and how often the argmax
    /// changes. Prints the figures; asserts only that the 8-bit argmax stays in the Float top 5.
    func testInt8DecodeAgainstFloatDecode() throws {
        let m = try model()
        let saved = QuantizedMatrix.activations
        defer { QuantizedMatrix.activations = saved }
        var worst: Float = 0, steps = 0, sameArgmax = 0
        for c in try cases().cases.prefix(6) {
            let ids = try XCTUnwrap(c["prompt_ids"] as? [Int])
            let greedy = Array(try XCTUnwrap(c["greedy_ids"] as? [Int]).prefix(8))
            var runs: [[[Float]]] = []
            for precision in [ActivationPrecision.f32, .int8] {
                QuantizedMatrix.activations = precision
                let cache = m.decoder.makeCache(capacity: ids.count + greedy.count)
                _ = try m.decoder.forward(tokens: ids, cache: cache)
                runs.append(try greedy.map { Array(try m.decoder.forward(tokens: [$0], cache: cache)) })
            }
            for (float, int8) in zip(runs[0], runs[1]) {
                let top5 = (0..<float.count).sorted { float[$0] > float[$1] }.prefix(5)
                let argmax = int8.indices.max { int8[$0] < int8[$1] }!
                XCTAssertTrue(top5.contains(argmax), "8-bit argmax \(argmax) outside the Float top 5 \(Array(top5))")
                worst = max(worst, maxDifference(float, int8))
                steps += 1
                if argmax == top5.first { sameArgmax += 1 }
            }
        }
        print(String(format: "8-bit vs Float32 decode: max logit diff %.3f, same argmax at %d of %d steps", worst, sameArgmax, steps))
    }

    /// The KV-cached decode gives the logits a full recompute of the same sequence gives.
    func testCachedDecodeEqualsFullRecompute() throws {
        let m = try model()
        let ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog because", addSpecialTokens: true)
        let cache = m.decoder.makeCache()
        var logits = Array(try m.decoder.forward(tokens: Array(ids.prefix(3)), cache: cache))
        for n in 3..<ids.count {
            logits = Array(try m.decoder.forward(tokens: [ids[n]], cache: cache))
            let full = Array(try m.decoder.forward(tokens: Array(ids.prefix(n + 1)), cache: m.decoder.makeCache()))
            let diff = maxDifference(logits, full)
            XCTAssertLessThan(diff, 1e-3, "position \(n): cached vs full max diff \(diff)")
        }
    }
}

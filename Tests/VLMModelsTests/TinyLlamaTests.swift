import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor
import XCTest

/// Tiny random Llama / Mistral / Qwen2 checkpoints against transformers (Tests/Fixtures/gen_tinyllama.py).
final class TinyLlamaTests: XCTestCase {
    func load(_ variant: String) throws -> LlamaModel {
        try load(folder: Fixtures.data.appendingPathComponent("tinyllama/\(variant)").path)
    }

    /// Loads a checkpoint folder the way the CLI does: strict names, every tensor used.
    func load(folder: String) throws -> LlamaModel {
        let config = try JSONDecoder().decode(LlamaConfiguration.self,
                                              from: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json")))
        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlamaWeights.sanitizeHF)
        return try LlamaModel(config: config, weights: weights, ropePairing: .halves)
    }

    func testEveryVariantMatchesTransformers() throws {
        let golden = try Fixtures.json("tinyllama/golden.json")
        XCTAssertEqual(golden.count, 5)
        for (variant, value) in golden {
            let g = try XCTUnwrap(value as? [String: Any])
            let prompt = try XCTUnwrap(g["prompt_ids"] as? [Int])
            let expected = try XCTUnwrap(g["last_logits"] as? [Double]).map(Float.init)
            let model = try load(variant)
            let cache = model.makeCache()
            var logits = Array(try model.forward(tokens: prompt, cache: cache))
            let diff = maxDifference(logits, expected)
            XCTAssertLessThan(diff, 1e-4, "\(variant): last-position logits max diff \(diff)")

            var greedy: [Int] = []
            for _ in 0..<(g["greedy_ids"] as? [Int] ?? []).count {
                let id = logits.withUnsafeBufferPointer { Sampler.argmax($0) }
                greedy.append(id)
                logits = Array(try model.forward(tokens: [id], cache: cache))
            }
            XCTAssertEqual(greedy, g["greedy_ids"] as? [Int], "\(variant): greedy continuation")
        }
    }

    /// Decoding with the KV cache equals recomputing the whole sequence from scratch.
    func testCachedDecodeEqualsFullRecompute() throws {
        for variant in ["llama", "qwen2"] {
            let model = try load(variant)
            let tokens = [5, 17, 99, 3, 42, 7, 64, 120, 8, 31]
            let cache = model.makeCache(capacity: 2)   // also exercises cache growth
            _ = try model.forward(tokens: Array(tokens.prefix(4)), cache: cache)
            for n in 4..<tokens.count {
                let stepped = Array(try model.forward(tokens: [tokens[n]], cache: cache))
                let full = Array(try model.forward(tokens: Array(tokens.prefix(n + 1)), cache: model.makeCache()))
                let diff = maxDifference(stepped, full)
                XCTAssertLessThan(diff, 1e-5, "\(variant): position \(n) cached vs full, max diff \(diff)")
            }
            XCTAssertEqual(cache.count, tokens.count)
        }
    }

    /// An f16 cache (llama.cpp's default) rounds each key and value to half: a prompt, decode
    /// steps and a follow-up chunk (which reads the cache widened) follow the Float32 cache to
    /// half precision.
    func testHalfCacheFollowsFloatCache() throws {
        for variant in ["llama", "qwen2"] {
            let model = try load(variant)
            let half = model.makeCache(capacity: 2, precision: .f16), full = model.makeCache(capacity: 2, precision: .f32)
            XCTAssertEqual(half.bytesPerPosition * 2, full.bytesPerPosition)
            for (i, chunk) in [[5, 17, 99, 3], [42], [7, 64, 120], [8], [31]].enumerated() {
                let a = Array(try model.forward(tokens: chunk, cache: half)), b = Array(try model.forward(tokens: chunk, cache: full))
                let scale = b.map(abs).max() ?? 1
                XCTAssertLessThan(maxDifference(a, b), 2e-3 * scale, "\(variant): after \(chunk) f16 vs f32 cache")
                // The prompt attends to its own keys and values; later chunks read them back rounded.
                if i == 0 { XCTAssertEqual(a, b, variant) } else { XCTAssertGreaterThan(maxDifference(a, b), 0, "\(variant): the f16 cache rounds") }
            }
        }
    }

    func testMissingAndLeftoverWeightsAreErrors() throws {
        let folder = Fixtures.data.appendingPathComponent("tinyllama/llama").path
        let config = try JSONDecoder().decode(LlamaConfiguration.self,
                                              from: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json")))
        let source = try openCheckpoint(folder: folder)

        let missing = try WeightMap(file: folder, source: source)
        missing.rename { $0 == "model.norm.weight" ? nil : $0 }
        XCTAssertThrowsError(try LlamaModel(config: config, weights: missing, ropePairing: .halves)) {
            XCTAssertTrue("\($0)".contains("missing weight 'model.norm.weight'"), "\($0)")
        }

        var extra = config
        extra.numHiddenLayers = 1
        XCTAssertThrowsError(try LlamaModel(config: extra, weights: try WeightMap(file: folder, source: source), ropePairing: .halves)) {
            XCTAssertTrue("\($0)".contains("unexpected weight 'model.layers.1."), "\($0)")
        }
    }

    /// A checkpoint carrying a tensor the architecture does not use is not the model we think it
    /// is (wrong config, wrong architecture): loading names the tensor instead of ignoring it.
    func testCheckpointWithAnExtraTensorIsRefused() throws {
        let original = Fixtures.data.appendingPathComponent("tinyllama/llama").path
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-extra-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        try FileManager.default.copyItem(atPath: original + "/config.json", toPath: folder + "/config.json")
        let source = try openCheckpoint(folder: original)
        var tensors = try source.weightNames.sorted().map { (name: $0, tensor: try source.floats($0), dtype: GGMLType.f32) }
        let extraName = "model.layers.0.mlp.extra_proj.weight"
        tensors.append((name: extraName, tensor: try source.floats("model.norm.weight"), dtype: .f32))
        try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: folder + "/model.safetensors")

        XCTAssertThrowsError(try load(folder: folder)) {
            XCTAssertEqual("\($0)", "\(folder): unexpected weight '\(extraName)'")
        }
        // The same checkpoint without the extra tensor loads.
        tensors.removeLast()
        try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: folder + "/model.safetensors")
        XCTAssertNoThrow(try load(folder: folder))
    }

    func testOutOfVocabularyTokenIsAnError() throws {
        let model = try load("llama")
        XCTAssertThrowsError(try model.forward(tokens: [1, 500], cache: model.makeCache())) {
            XCTAssertTrue("\($0)".contains("token id 500"), "\($0)")
        }
    }
}

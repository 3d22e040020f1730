import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import XCTest

/// Tiny random LLaVA checkpoints in four weight layouts against transformers
/// (Tests/Fixtures/gen_llava.py): preprocessing, vision features, projector, logits, greedy ids.
final class LlavaTests: XCTestCase {
    static let folder = Fixtures.data.appendingPathComponent("llava")
    nonisolated(unsafe) static var models: [String: VisionLanguageModel] = [:]

    func golden() throws -> [String: Any] { try Fixtures.json("llava/golden.json") }

    func arrays() throws -> Data { try Data(contentsOf: Self.folder.appendingPathComponent("golden.f32")) }

    func model(_ name: String) throws -> VisionLanguageModel {
        if let m = Self.models[name] { return m }
        let m = try VisionLanguageModel(path: Self.folder.appendingPathComponent(name).path)
        Self.models[name] = m
        return m
    }

    func image(_ name: String) throws -> RGBImage {
        try ImageLoader.load(path: Self.folder.appendingPathComponent("images/\(name)").path)
    }

    func checkpoints() throws -> [(String, [String: Any])] {
        let cps = try XCTUnwrap(golden()["checkpoints"] as? [String: [String: Any]])
        return cps.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// Input embeddings of `slots`: token rows from the table, image rows from `features[hash]`.
    func embeddings(_ slots: [InputSlot], model: VisionLanguageModel, features: [String: Tensor]) throws -> Tensor {
        let d = model.decoder.config.hiddenSize
        let out = Tensor(shape: [slots.count, d], zeroed: false)
        for (i, slot) in slots.enumerated() {
            switch slot {
            case .token(let id): try model.decoder.embed([id], into: out.data + i * d)
            case .image(let hash, let row):
                let f = try XCTUnwrap(features[hash])
                (out.data + i * d).update(from: f.data + row * d, count: d)
            }
        }
        return out
    }

    func testEveryCheckpointAndCaseMatchesTransformers() throws {
        let data = try arrays()
        for (name, cp) in try checkpoints() {
            let model = try self.model(name)
            let llava = model.llava
            let cases = try XCTUnwrap(cp["cases"] as? [[String: Any]])
            XCTAssertEqual(llava.featureCount, cp["image_tokens_per_image"] as? Int, name)
            let goldenImageID = (cp["image_token_id"] as? Int) ?? (cp["twin_image_token_id"] as? Int)
            let mean = llava.imageProcessor.imageStd ?? [0.5]
            let pixelTolerance = Float(1.0 / 255.0 / mean.min()!) + 1e-5
            for (ci, c) in cases.enumerated() {
                let label = "\(name) case \(ci)"
                let names = try XCTUnwrap(c["images"] as? [String])
                let pixels = try Fixtures.array(c["pixel_values"], in: data)
                let vision = try Fixtures.array(c["vision_features"], in: data)
                let projected = try Fixtures.array(c["projector_output"], in: data)
                let plane = pixels.values.count / names.count
                let vrows = vision.values.count / names.count, prows = projected.values.count / names.count
                var features: [String: Tensor] = [:]
                var inputs: [ImageInput] = []
                for (i, file) in names.enumerated() {
                    // Our preprocessing of the image file.
                    let ours = try llava.preprocess(try image(file))
                    XCTAssertEqual(ours.shape, Array(pixels.shape.dropFirst()), label)
                    let expected = Array(pixels.values[(i * plane)..<((i + 1) * plane)])
                    let pd = maxDifference(ours.array, expected)
                    XCTAssertLessThanOrEqual(pd, pixelTolerance, "\(label) \(file) pixels")
                    // Vision tower and projector on the golden pixels.
                    let goldenPixels = Tensor(shape: Array(pixels.shape.dropFirst()), values: expected)
                    let v = try llava.visionFeatures(pixels: goldenPixels)
                    XCTAssertEqual(v.shape, Array(vision.shape.dropFirst()), label)
                    let vd = maxDifference(v.array, Array(vision.values[(i * vrows)..<((i + 1) * vrows)]))
                    XCTAssertLessThan(vd, 1e-4, "\(label) \(file) vision features")
                    let p = try llava.imageFeatures(pixels: goldenPixels)
                    let pdiff = maxDifference(p.array, Array(projected.values[(i * prows)..<((i + 1) * prows)]))
                    XCTAssertLessThan(pdiff, 1e-4, "\(label) \(file) projector output")
                    features[file] = p
                    inputs.append(ImageInput(hash: file, pixels: goldenPixels))
                }

                // Our tokenization of the prompt, then expansion at the image tokens.
                let promptIDs = try XCTUnwrap(c["prompt_ids"] as? [Int])
                let prompt = try XCTUnwrap(c["prompt"] as? String)
                XCTAssertEqual(model.promptEncoding.ids(prompt, addSpecialTokens: true), promptIDs, "\(label) prompt ids")
                let slots = try ChatSession.expand(ids: promptIDs, images: inputs, support: model.images)
                let expanded = slots.map { slot -> Int in
                    if case .token(let id) = slot { return id } else { return goldenImageID ?? -1 }
                }
                XCTAssertEqual(expanded, c["input_ids"] as? [Int], "\(label) input ids")

                // Last-position logits and 12 greedy ids (no EOS stop).
                let x = try embeddings(slots, model: model, features: features)
                let cache = model.decoder.makeCache(capacity: slots.count + 16)
                let logits = try withExtendedLifetime(x) { try model.decoder.forward(embeddings: x.data, count: slots.count, cache: cache) }
                let goldenLogits = try XCTUnwrap(c["last_logits"] as? [Double]).map(Float.init)
                XCTAssertEqual(logits.count, goldenLogits.count, label)
                let ld = maxDifference(Array(logits), goldenLogits)
                XCTAssertLessThan(ld, 1e-3, "\(label) last logits")
                let ids = try greedyIDs(after: logits, decoder: model.decoder, cache: cache, count: 12)
                XCTAssertEqual(ids, c["greedy_ids"] as? [Int], "\(label) greedy ids")
                print("\(label): last logits max diff \(ld)")
            }
        }
    }

    func greedy(_ maxTokens: Int) -> GenerationParameters {
        var p = GenerationParameters()
        p.temperature = 0
        p.maxTokens = maxTokens
        return p
    }

    func testImageEncodedOncePerDistinctImageAcrossTurns() throws {
        for name in ["clip-llama", "original-llava"] {
            let model = try self.model(name)
            let support = try XCTUnwrap(model.images)
            let square = ImageInput(hash: "square", pixels: try support.preprocess(try image("square.png")))
            let chat = ChatSession(model: model)
            let first = try chat.send("What is in the image?", images: [square], parameters: greedy(4))
            while try first.next() != nil {}
            chat.commit(reply: first.text)
            XCTAssertEqual(chat.encoderRuns, 1, name)
            let second = try chat.send("And now?", images: [square], parameters: greedy(4))
            while try second.next() != nil {}
            XCTAssertEqual(chat.encoderRuns, 1, "\(name): the same image is not encoded again")
            XCTAssertGreaterThan(chat.reusedPositions, support.featureCount, "\(name): the first turn comes from the cache")
            chat.commit(reply: second.text)
            let wide = ImageInput(hash: "wide", pixels: try support.preprocess(try image("wide.png")))
            let third = try chat.send("Compare.", images: [wide], parameters: greedy(2))
            while try third.next() != nil {}
            XCTAssertEqual(chat.encoderRuns, 2, name)

            // The third turn through prefix reuse equals the whole conversation run from scratch.
            let fresh = ChatSession(model: model, history: Array(chat.messages.prefix(4)), historyImages: [[square], [], [square], []])
            let again = try fresh.send("Compare.", images: [wide], parameters: greedy(2))
            while try again.next() != nil {}
            XCTAssertEqual(fresh.reusedPositions, 0)
            let diff = maxDifference(third.promptLogits, again.promptLogits)
            XCTAssertLessThan(diff, 1e-4, "\(name): prefix reuse vs from scratch, max diff \(diff)")
            XCTAssertEqual(third.ids, again.ids, name)
        }
    }

    func testOriginalLlavaChatPromptUsesTheSentinel() throws {
        let model = try self.model("original-llava")
        let ids = model.promptEncoding.ids("USER: <image>\nHi ASSISTANT:", addSpecialTokens: true)
        XCTAssertEqual(ids.filter { $0 == -200 }.count, 1)
        XCTAssertEqual(ids.first, model.tokenizer.bosTokenID)
    }

    func testCachedDecodeEqualsFullRecomputeWithAnImage() throws {
        let data = try arrays()
        for name in ["clip-llama", "siglip-qwen2"] {
            let model = try self.model(name)
            let cp = try XCTUnwrap(golden()["checkpoints"] as? [String: [String: Any]])[name]
            let c = try XCTUnwrap((cp?["cases"] as? [[String: Any]])?.first)
            let pixels = try Fixtures.array(c["pixel_values"], in: data)
            let input = ImageInput(hash: "img", pixels: Tensor(shape: Array(pixels.shape.dropFirst()), values: pixels.values))
            let features = ["img": try model.llava.imageFeatures(pixels: input.pixels)]
            let promptIDs = try XCTUnwrap(c["prompt_ids"] as? [Int])
            let slots = try ChatSession.expand(ids: promptIDs, images: [input], support: model.images)

            let cache = model.decoder.makeCache(capacity: slots.count + 8)
            let x = try embeddings(slots, model: model, features: features)
            var logits = try withExtendedLifetime(x) { Array(try model.decoder.forward(embeddings: x.data, count: slots.count, cache: cache)) }
            var generated: [Int] = []
            for _ in 0..<6 {
                let id = logits.indices.max { logits[$0] < logits[$1] }!
                generated.append(id)
                logits = Array(try model.decoder.forward(tokens: [id], cache: cache))
            }
            let all = slots + generated.map { .token($0) }
            let fresh = model.decoder.makeCache(capacity: all.count)
            let y = try embeddings(all, model: model, features: features)
            let full = try withExtendedLifetime(y) { Array(try model.decoder.forward(embeddings: y.data, count: all.count, cache: fresh)) }
            let diff = maxDifference(logits, full)
            XCTAssertLessThan(diff, 1e-4, "\(name): cached decode vs full recompute, max diff \(diff)")
        }
    }

    func config(_ name: String) throws -> LlavaConfiguration {
        try JSONDecoder().decode(LlavaConfiguration.self, from: Data(contentsOf: Self.folder.appendingPathComponent("\(name)/config.json")))
    }

    func sanitizedWeights(_ name: String) throws -> [String: (source: WeightSource, name: String)] {
        let path = Self.folder.appendingPathComponent(name).path
        let source = try openCheckpoint(folder: path)
        var entries: [String: (source: WeightSource, name: String)] = [:]
        for n in source.weightNames { if let s = LlavaWeights.sanitizeHF(n) { entries[s] = (source, n) } }
        return entries
    }

    func testMissingAndLeftOverWeightsAreNamed() throws {
        let path = Self.folder.appendingPathComponent("clip-llama").path
        let processor = try ImageProcessor.load(folder: path)
        for missing in ["multi_modal_projector.linear_2.bias", "language_model.lm_head.weight",
                        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"] {
            var entries = try sanitizedWeights("clip-llama")
            XCTAssertNotNil(entries.removeValue(forKey: missing), missing)
            let bare = missing.split(separator: ".").suffix(2).joined(separator: ".")
            XCTAssertThrowsError(try LlavaModel(config: config("clip-llama"), weights: WeightMap(file: path, entries: entries), imageProcessor: processor)) {
                XCTAssertTrue("\($0)".contains(bare), "error names the key: \($0)")
            }
        }
        var entries = try sanitizedWeights("clip-llama")
        entries["vision_tower.vision_model.extra.weight"] = entries["multi_modal_projector.linear_1.bias"]
        entries["unrelated.weight"] = entries["multi_modal_projector.linear_1.bias"]
        XCTAssertThrowsError(try LlavaModel(config: config("clip-llama"), weights: WeightMap(file: path, entries: entries), imageProcessor: processor)) {
            XCTAssertTrue("\($0)".contains("extra.weight"), "error names the key: \($0)")
        }
        entries.removeValue(forKey: "vision_tower.vision_model.extra.weight")
        XCTAssertThrowsError(try LlavaModel(config: config("clip-llama"), weights: WeightMap(file: path, entries: entries), imageProcessor: processor)) {
            XCTAssertTrue("\($0)".contains("unrelated.weight"), "error names the key: \($0)")
        }
    }

    func testConfigurationDecoding() throws {
        let layers = try config("clip-llama-layers")
        XCTAssertEqual(layers.visionFeatureLayers, [-2, -1])
        let siglip = try config("siglip-qwen2")
        XCTAssertEqual(siglip.visionFeatureLayers, [-1])
        XCTAssertEqual(siglip.visionFeatureSelectStrategy, .full)
        XCTAssertEqual(siglip.textConfig.modelType, "qwen2")
        guard case .siglip = siglip.visionConfig else { return XCTFail("siglip vision config") }
        let json = #"{"text_config": {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10}, "image_token_id": 9}"#
        let c = try JSONDecoder().decode(LlavaConfiguration.self, from: Data(json.utf8))
        XCTAssertEqual(c.imageTokenIndex, 9)
        let round = try JSONDecoder().decode(LlavaConfiguration.self, from: JSONEncoder().encode(layers))
        XCTAssertEqual(round.visionFeatureLayers, [-2, -1])
    }
}

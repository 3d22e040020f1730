import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers
import XCTest

/// LLaVA-1.5 as llama.cpp ships it (a text GGUF plus an mmproj GGUF, both written by llama.cpp's
/// converters, Tests/Fixtures/gen_gguf_pair.py) against transformers on the same weights:
/// preprocessing, image embeddings, prompt ids, last-position logits and 16 greedy tokens.
final class GGUFPairTests: XCTestCase {
    static let folder = Fixtures.data.appendingPathComponent("gguf_pair")
    static let text = folder.appendingPathComponent("tiny-llava-text-f16.gguf").path
    static let mmproj = folder.appendingPathComponent("tiny-llava-mmproj-f16.gguf").path
    nonisolated(unsafe) static var loaded: VisionLanguageModel?

    func model() throws -> VisionLanguageModel {
        if let m = Self.loaded { return m }
        let m = try VisionLanguageModel(text: Self.text, mmproj: Self.mmproj)
        Self.loaded = m
        return m
    }

    func golden() throws -> [String: Any] { try Fixtures.json("gguf_pair/golden.json") }

    func testMetadataMapsOntoTheLlavaComposition() throws {
        let gguf = try GGUFFile(path: Self.mmproj)
        let mm = try MMProjConfiguration(gguf: gguf)
        XCTAssertEqual(mm.projectorType, "mlp")
        XCTAssertTrue(mm.hasLlavaProjector)
        XCTAssertEqual(mm.blockCount, 2, "the converter dropped the last of 3 layers")
        XCTAssertNil(mm.featureLayers)
        XCTAssertEqual(mm.projectorFeatureLayers, [2], "LLaVA's -2 of 3 layers is the last stored one")
        XCTAssertEqual(mm.hiddenAct, .quickGelu)
        XCTAssertTrue(MMProjWeights.legacyFFN(in: gguf, hiddenSize: 32), "the legacy converter names fc1 ffn_down")
        XCTAssertEqual(MMProjWeights.sanitize("v.blk.1.ffn_down.weight", legacyFFN: true),
                       "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight")
        XCTAssertEqual(MMProjWeights.sanitize("v.blk.0.attn_out.bias", legacyFFN: true),
                       "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.bias")
        XCTAssertEqual(MMProjWeights.sanitize("mm.2.weight", legacyFFN: true), "multi_modal_projector.linear_2.weight")
        // The way back, for messages: every tensor of the file round-trips.
        for info in gguf.tensorInfos {
            let ours = try XCTUnwrap(MMProjWeights.sanitize(info.name, legacyFFN: true))
            XCTAssertEqual(MMProjWeights.fileName(ours, legacyFFN: true), info.name)
        }
        XCTAssertEqual(MMProjWeights.fileName("encoder.layers.1.mlp.fc1.weight", legacyFFN: true), "v.blk.1.ffn_down.weight")

        let llava = try model().llava
        guard case .clip(let c) = llava.config.visionConfig else { return XCTFail("not a CLIP tower") }
        XCTAssertEqual([c.hiddenSize, c.intermediateSize, c.numHiddenLayers, c.numAttentionHeads, c.imageSize, c.patchSize],
                       [32, 64, 2, 4, 32, 8])
        XCTAssertEqual(llava.config.visionFeatureLayers, [2])
        XCTAssertEqual(llava.featureCount, 16)
        XCTAssertEqual(llava.imageProcessor.imageMean?.map { Float($0) }, [0.48145466, 0.4578275, 0.40821073])
        XCTAssertEqual(try model().imageTokenID, 700)
    }

    func testEmbeddingsLogitsAndGreedyTokensMatchTransformers() throws {
        let g = try golden()
        let data = try Data(contentsOf: Self.folder.appendingPathComponent("golden.f32"))
        let model = try self.model()
        let llava = model.llava
        let cases = try XCTUnwrap(g["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 3)
        let pixelTolerance = Float(1.0 / 255.0 / 0.26130258) + 1e-5
        for c in cases {
            let name = try XCTUnwrap(c["image"] as? String)
            let pixels = try Fixtures.array(c["pixel_values"], in: data)
            let image = try ImageLoader.load(path: Self.folder.appendingPathComponent("images/\(name)").path)
            let ours = try llava.preprocess(image)
            XCTAssertEqual(ours.shape, Array(pixels.shape.dropFirst()), name)
            XCTAssertLessThanOrEqual(maxDifference(ours.array, pixels.values), pixelTolerance, "\(name) pixels")

            let goldenPixels = Tensor(shape: Array(pixels.shape.dropFirst()), values: pixels.values)
            let vision = try Fixtures.array(c["vision_features"], in: data)
            let v = try llava.visionFeatures(pixels: goldenPixels)
            XCTAssertEqual(v.shape, Array(vision.shape.dropFirst()), name)
            XCTAssertLessThan(relativeDifference(v.array, vision.values), 1e-3, "\(name) vision features")
            let projected = try Fixtures.array(c["projector_output"], in: data)
            let p = try llava.imageFeatures(pixels: goldenPixels)
            XCTAssertEqual(p.shape, Array(projected.shape.dropFirst()), name)
            let rel = relativeDifference(p.array, projected.values)
            XCTAssertLessThan(rel, 1e-3, "\(name) image embeddings")

            // The prompt as the text GGUF tokenizes it, expanded at the image token.
            let prompt = try XCTUnwrap(c["prompt"] as? String)
            let promptIDs = try XCTUnwrap(c["prompt_ids"] as? [Int])
            XCTAssertEqual(model.promptEncoding.ids(prompt, addSpecialTokens: true), promptIDs, "\(name) prompt ids")
            let question = try XCTUnwrap(((c["messages"] as? [[String: Any]])?.first?["content"] as? [[String: Any]])?.last?["text"] as? String)
            let chatIDs = model.promptEncoding.ids([ChatMessage(role: .user, text: ChatMessage.placingImages(1, in: question, placeholder: "<image>"))],
                                                   addGenerationPrompt: true)
            XCTAssertEqual(chatIDs, promptIDs, "\(name) chat template")
            let slots = try ChatSession.expand(ids: promptIDs, images: [ImageInput(hash: name, pixels: goldenPixels)], support: model.images)
            XCTAssertEqual(slots.map { slot -> Int in if case .token(let id) = slot { return id } else { return 700 } },
                           c["input_ids"] as? [Int], "\(name) input ids")

            let d = model.decoder.config.hiddenSize
            let x = Tensor(shape: [slots.count, d], zeroed: false)
            for (i, slot) in slots.enumerated() {
                switch slot {
                case .token(let id): try model.decoder.embed([id], into: x.data + i * d)
                case .image(_, let row): (x.data + i * d).update(from: p.data + row * d, count: d)
                }
            }
            let cache = model.decoder.makeCache(capacity: slots.count + 17)
            let logits = try withExtendedLifetime(x) { try model.decoder.forward(embeddings: x.data, count: slots.count, cache: cache) }
            let expected = try XCTUnwrap(c["last_logits"] as? [Double]).map(Float.init)
            XCTAssertEqual(logits.count, expected.count, name)
            let ld = maxDifference(Array(logits), expected)
            XCTAssertLessThan(ld, 1e-3, "\(name) last logits")
            let top = (0..<logits.count).sorted { logits[$0] > logits[$1] }.prefix(5)
            XCTAssertEqual(Array(top), c["top5_ids"] as? [Int], "\(name) top-5")
            let ids = try greedyIDs(after: logits, decoder: model.decoder, cache: cache, count: 16)
            XCTAssertEqual(ids, c["greedy_ids"] as? [Int], "\(name) greedy ids")
            print("\(name): image embeddings max relative diff \(rel), last logits max diff \(ld)")
        }
    }

    /// The mmproj with its linear weights in Q8_0 (dequantized to Float32 on load, as the tower trains
    /// in Float32) against the reference holding the same Q8_0 round-tripped weights.
    func testQ8_0MMProjMatchesItsReference() throws {
        let path = Self.folder.appendingPathComponent("tiny-llava-mmproj-q8_0.gguf").path
        let gguf = try GGUFFile(path: path)
        XCTAssertEqual(gguf.info("v.blk.0.attn_q.weight")?.type, .q8_0)
        XCTAssertEqual(gguf.info("mm.2.weight")?.type, .q8_0)
        let llava = try LlavaModel.load(text: Self.text, mmproj: path)
        let data = try Data(contentsOf: Self.folder.appendingPathComponent("golden.f32"))
        for c in try XCTUnwrap(golden()["cases"] as? [[String: Any]]) {
            let pixels = try Fixtures.array(c["pixel_values"], in: data)
            let p = try llava.imageFeatures(pixels: Tensor(shape: Array(pixels.shape.dropFirst()), values: pixels.values))
            let expected = try Fixtures.array(c["q8_0_projector_output"], in: data)
            XCTAssertLessThan(relativeDifference(p.array, expected.values), 1e-3, "\(c["image"] ?? "") q8_0 image embeddings")
            // Q8_0 moved them: the f16 goldens are not what this file gives.
            let f16 = try Fixtures.array(c["projector_output"], in: data)
            XCTAssertGreaterThan(relativeDifference(expected.values, f16.values), 1e-3)
        }
    }

    func testHostileMMProjFilesFailWithOneLine() throws {
        let hostile = Self.folder.appendingPathComponent("hostile")
        let expectations = [
            "huge-image-size.gguf": "clip.vision.image_size 1073741824 is out of range",
            "missing-tensor.gguf": "missing weight 'v.blk.1.attn_q.weight'",
            "llava16.gguf": "missing weight 'model.image_newline'",
        ]
        for (file, fragment) in expectations {
            XCTAssertThrowsError(try LlavaModel.load(text: Self.text, mmproj: hostile.appendingPathComponent(file).path), file) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(fragment), "\(file): \(message)")
                XCTAssertFalse(message.contains("\n"), "\(file): one line")
            }
        }
        // The text GGUF given as the mmproj, and the pair given the wrong way round.
        XCTAssertThrowsError(try LlavaModel.load(text: Self.text, mmproj: Self.text)) { error in
            XCTAssertTrue("\(error)".contains("not an mmproj file"), "\(error)")
        }
        XCTAssertThrowsError(try LlavaModel.load(text: Self.mmproj, mmproj: Self.mmproj)) { error in
            XCTAssertTrue("\(error)".contains("unsupported architecture 'clip'"), "\(error)")
        }
    }

    func testStoreFolderNamesThePair() throws {
        let home = NSTemporaryDirectory() + "vlmsh-pair-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: home) }
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        try Data("{\"model\": \"\(Self.text)\", \"mmproj\": \"\(Self.mmproj)\"}".utf8).write(to: URL(fileURLWithPath: home + "/mmproj.json"))
        let pair = try XCTUnwrap(try GGUFPair.read(folder: home))
        XCTAssertEqual(pair, GGUFPair(model: Self.text, mmproj: Self.mmproj))
        try Data("{\"model\": \"nope.gguf\", \"mmproj\": \"\(Self.mmproj)\"}".utf8).write(to: URL(fileURLWithPath: home + "/mmproj.json"))
        XCTAssertThrowsError(try GGUFPair.read(folder: home)) { XCTAssertTrue("\($0)".contains("'nope.gguf': no such file"), "\($0)") }
        // Which tower rows are image tokens, when the pair says (export-gguf of a `full` CLIP model).
        let select = "\"vision_feature_select_strategy\""
        try Data("{\"model\": \"\(Self.text)\", \"mmproj\": \"\(Self.mmproj)\", \(select): \"full\"}".utf8).write(to: URL(fileURLWithPath: home + "/mmproj.json"))
        XCTAssertEqual(try GGUFPair.read(folder: home)?.visionFeatureSelectStrategy, .full)
        let full = try LlavaModel.load(text: Self.text, mmproj: Self.mmproj, select: .full)
        let plain = try LlavaModel.load(text: Self.text, mmproj: Self.mmproj)
        XCTAssertEqual(full.config.visionFeatureSelectStrategy, .full)
        XCTAssertEqual(plain.config.visionFeatureSelectStrategy, .default)
        XCTAssertEqual(full.featureCount, plain.featureCount + 1, "the class token's row as well")
        try Data("{\"model\": \"\(Self.text)\", \"mmproj\": \"\(Self.mmproj)\", \(select): \"cls\"}".utf8).write(to: URL(fileURLWithPath: home + "/mmproj.json"))
        XCTAssertThrowsError(try GGUFPair.read(folder: home)) { XCTAssertTrue("\($0)".contains("not a model pair"), "\($0)") }
    }
}

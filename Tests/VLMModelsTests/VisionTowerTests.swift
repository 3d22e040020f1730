import Foundation
import VLMFormats
import VLMModels
import VLMTensor
import XCTest

/// Tiny random CLIP / SigLIP towers and LLaVA projectors against transformers
/// (Tests/Fixtures/gen_vision.py), plus a ViT-L/14-336 timing print.
final class VisionTowerTests: XCTestCase {
    static let folder = Fixtures.data.appendingPathComponent("vision")

    func golden() throws -> [String: Any] { try Fixtures.json("vision/golden.json") }

    func floats(_ value: Any?) throws -> [Float] { try XCTUnwrap(value as? [Double]).map(Float.init) }

    func pixels() throws -> Tensor { Tensor(shape: [3, 32, 32], values: try floats(golden()["pixels"])) }

    func config<C: Decodable>(_ type: C.Type, _ name: String) throws -> C {
        try JSONDecoder().decode(type, from: Data(contentsOf: Self.folder.appendingPathComponent("\(name)/config.json")))
    }

    func weights(_ name: String) throws -> WeightMap {
        let path = Self.folder.appendingPathComponent(name).path
        return try WeightMap(file: path, source: try openCheckpoint(folder: path))
    }

    func clip(_ weights: WeightMap? = nil) throws -> CLIPVisionTower {
        try CLIPVisionTower(config: config(CLIPVisionConfiguration.self, "clip"), weights: weights ?? self.weights("clip"))
    }

    func siglip(_ weights: WeightMap? = nil) throws -> SiglipVisionTower {
        try SiglipVisionTower(config: config(SiglipVisionConfiguration.self, "siglip"), weights: weights ?? self.weights("siglip"))
    }

    func compareAllHiddenStates(_ tower: VisionTower, _ name: String) throws {
        let expected = try XCTUnwrap(golden()[name] as? [String: Any])
        let states = try XCTUnwrap(expected["hidden_states"] as? [Any])
        XCTAssertEqual(states.count, tower.layerCount + 1)
        XCTAssertEqual(expected["tokens"] as? Int, tower.tokenCount)
        let got = try tower.hiddenStates(pixels: pixels(), layers: Set(0...tower.layerCount))
        for (i, state) in states.enumerated() {
            let actual = try XCTUnwrap(got[i], "\(name) hidden state \(i) missing")
            XCTAssertEqual(actual.shape, [tower.tokenCount, tower.hiddenSize])
            let diff = maxDifference(actual.array, try floats(state))
            print("\(name) hidden state \(i): max diff \(diff)")
            XCTAssertLessThan(diff, 1e-4, "\(name) hidden state \(i)")
        }
    }

    func testCLIPHiddenStatesMatchTransformers() throws {
        let tower = try clip()
        XCTAssertEqual(tower.tokenCount, 17)
        XCTAssertTrue(tower.hasClassToken)
        try compareAllHiddenStates(tower, "clip")
        let last = try tower.lastHiddenState(pixels: pixels())
        let diff = maxDifference(last.array, try floats((golden()["clip"] as? [String: Any])?["last_hidden_state"]))
        XCTAssertLessThan(diff, 1e-4, "clip last_hidden_state")
    }

    func testSiglipHiddenStatesMatchTransformers() throws {
        let tower = try siglip()   // the fixture carries the pooling head: accepted, not loaded
        XCTAssertEqual(tower.tokenCount, 16)
        XCTAssertFalse(tower.hasClassToken)
        try compareAllHiddenStates(tower, "siglip")
        let last = try tower.lastHiddenState(pixels: pixels())
        let diff = maxDifference(last.array, try floats((golden()["siglip"] as? [String: Any])?["last_hidden_state"]))
        print("siglip last_hidden_state (post_layernorm): max diff \(diff)")
        XCTAssertLessThan(diff, 1e-4, "siglip last_hidden_state")
    }

    /// Image sizes that are not a multiple of the patch (so400m: 384 / 14) drop the remainder.
    func testSiglipImageSizeNotAMultipleOfThePatch() throws {
        var config = try config(SiglipVisionConfiguration.self, "siglip")
        config.imageSize = 36
        let tower = try SiglipVisionTower(config: config, weights: weights("siglip"))
        XCTAssertEqual(tower.tokenCount, 16)
        let expected = try XCTUnwrap(golden()["siglip-36"] as? [String: Any])
        let pixels = Tensor(shape: [3, 36, 36], values: try floats(expected["pixels"]))
        let states = try XCTUnwrap(expected["hidden_states"] as? [Any])
        let got = try tower.hiddenStates(pixels: pixels, layers: [0, -1])
        for (key, index) in [(0, 0), (-1, states.count - 1)] {
            let diff = maxDifference(try XCTUnwrap(got[key]).array, try floats(states[index]))
            print("siglip 36x36 hidden state \(index): max diff \(diff)")
            XCTAssertLessThan(diff, 1e-4)
        }
    }

    /// Hub checkpoints (transformers 4.x, CLIPModel, LLaVA's vision_tower) nest the tower under
    /// `vision_model.`, sometimes with the position-id buffer; both layouts load the same.
    func testVisionModelPrefixAndNegativeIndices() throws {
        let path = Self.folder.appendingPathComponent("clip").path
        let source = try openCheckpoint(folder: path)
        var entries: [String: (source: WeightSource, name: String)] = [:]
        for name in source.weightNames { entries["vision_model." + name] = (source, name) }
        // Stands in for the integer position-id buffer older exports carry; it must be accepted unread.
        entries["vision_model.embeddings.position_ids"] = (source, "embeddings.class_embedding")
        let nested = WeightMap(file: path, entries: entries)
        let tower = try clip(nested)
        let got = try tower.hiddenStates(pixels: pixels(), layers: [-2, 1])
        XCTAssertEqual(Set(got.keys), [-2, 1])
        let states = try XCTUnwrap((golden()["clip"] as? [String: Any])?["hidden_states"] as? [Any])
        XCTAssertLessThan(maxDifference(try XCTUnwrap(got[-2]).array, try floats(states[states.count - 2])), 1e-4)
        XCTAssertLessThan(maxDifference(try XCTUnwrap(got[1]).array, try floats(states[1])), 1e-4)
        XCTAssertEqual(try tower.hiddenStates(pixels: pixels(), layers: []).count, 0)
    }

    func testProjectorsMatchTransformers() throws {
        let g = try golden()
        let input = try floats(g["projector_input"])
        let features = Tensor(shape: [input.count / 32, 32], values: input)
        for name in ["mlp2x_gelu", "mlp2x_gelu-nobias", "linear"] {
            let expected = try XCTUnwrap(g["projector-\(name)"] as? [String: Any])
            let kind = try XCTUnwrap(MultiModalProjector.Kind(rawValue: try XCTUnwrap(expected["kind"] as? String)))
            let path = Self.folder.appendingPathComponent("projector-\(name).safetensors").path
            let projector = try MultiModalProjector(
                kind: kind, inputSize: 32, outputSize: try XCTUnwrap(expected["text_hidden"] as? Int),
                bias: try XCTUnwrap(expected["bias"] as? Bool),
                weights: try WeightMap(file: path, source: try SafetensorsFile(path: path)))
            let out = try projector.forward(features)
            XCTAssertEqual(out.shape, [16, 48])
            let diff = maxDifference(out.array, try floats(expected["output"]))
            print("projector \(name): max diff \(diff)")
            XCTAssertLessThan(diff, 1e-4, "projector \(name)")
        }
    }

    func testLoadingAndInputErrors() throws {
        let missing = try weights("clip")
        missing.rename { $0 == "encoder.layers.1.mlp.fc2.bias" ? nil : $0 }
        XCTAssertThrowsError(try clip(missing)) {
            XCTAssertTrue("\($0)".contains("missing weight 'encoder.layers.1.mlp.fc2.bias'"), "\($0)")
        }

        var twoLayers = try config(CLIPVisionConfiguration.self, "clip")
        twoLayers.numHiddenLayers = 2
        XCTAssertThrowsError(try CLIPVisionTower(config: twoLayers, weights: weights("clip"))) {
            XCTAssertTrue("\($0)".contains("unexpected weight 'encoder.layers.2."), "\($0)")
        }

        let tower = try clip()
        XCTAssertThrowsError(try tower.hiddenStates(pixels: Tensor(shape: [3, 24, 32]), layers: [-2])) {
            XCTAssertTrue("\($0)".contains("[3, 32, 32]"), "\($0)")
        }
        XCTAssertThrowsError(try tower.hiddenStates(pixels: pixels(), layers: [4]))
        XCTAssertThrowsError(try tower.hiddenStates(pixels: pixels(), layers: [-5]))

        let projectorPath = Self.folder.appendingPathComponent("projector-mlp2x_gelu.safetensors").path
        let projector = try MultiModalProjector(kind: .mlp2xGelu, inputSize: 32, outputSize: 48,
                                                weights: try WeightMap(file: projectorPath, source: try SafetensorsFile(path: projectorPath)))
        XCTAssertThrowsError(try projector.forward(Tensor(shape: [4, 31])))
        // A `linear` projector over mlp weights leaves linear_2 unused.
        XCTAssertThrowsError(try MultiModalProjector(kind: .linear, inputSize: 32, outputSize: 48,
                                                     weights: try WeightMap(file: projectorPath, source: try SafetensorsFile(path: projectorPath))))
    }

    func testConfigurationsDecodeWithTransformersDefaults() throws {
        let large = try JSONDecoder().decode(CLIPVisionConfiguration.self,
                                             from: Data(contentsOf: Self.folder.appendingPathComponent("clip-vit-large-patch14-336.json")))
        XCTAssertEqual(large, CLIPVisionConfiguration(hiddenSize: 1024, intermediateSize: 4096, numHiddenLayers: 24,
                                                      numAttentionHeads: 16, imageSize: 336, patchSize: 14))
        // llava-hf configs list only what differs from the defaults.
        let sparse = try JSONDecoder().decode(SiglipVisionConfiguration.self, from: Data(#"{"image_size": [384, 384], "patch_size": 14}"#.utf8))
        XCTAssertEqual(sparse.imageSize, 384)
        XCTAssertEqual(sparse.hiddenAct, .geluPytorchTanh)
        XCTAssertEqual(sparse.layerNormEps, 1e-6)
        XCTAssertThrowsError(try JSONDecoder().decode(CLIPVisionConfiguration.self, from: Data(#"{"hidden_act": "mish"}"#.utf8)))
        XCTAssertThrowsError(try JSONDecoder().decode(CLIPVisionConfiguration.self, from: Data(#"{"image_size": [336, 224]}"#.utf8)))
    }

    /// ViT-L/14-336 with random weights generated here, one image, as LLaVA 1.5 runs it (up to
    /// hidden state -2) and through all 24 layers. Prints seconds; asserts nothing.
    func testViTLarge336Timing() throws {
        #if DEBUG
        throw XCTSkip("timing runs in release builds (swift test -c release)")
        #else
        let config = try JSONDecoder().decode(CLIPVisionConfiguration.self,
                                              from: Data(contentsOf: Self.folder.appendingPathComponent("clip-vit-large-patch14-336.json")))
        let start = Date()
        let tower = try CLIPVisionTower(config: config, weights: try WeightMap(file: "random", source: RandomWeights.clip(config)))
        print(String(format: "ViT-L/14-336: random weights built in %.2f s", Date().timeIntervalSince(start)))
        var image = [Float](repeating: 0, count: 3 * 336 * 336)
        for i in image.indices { image[i] = Float((i * 7919) % 255) / 127.5 - 1 }
        let pixels = Tensor(shape: [3, 336, 336], values: image)
        _ = try tower.hiddenStates(pixels: pixels, layers: [1])   // warm-up: page in weights, spin up threads
        for (label, layers) in [("hidden state -2 (LLaVA)", Set([-2])), ("all 24 layers", Set([24]))] {
            var best = Double.infinity
            for _ in 0..<2 {
                let t0 = Date()
                let states = try tower.hiddenStates(pixels: pixels, layers: layers)
                best = min(best, Date().timeIntervalSince(t0))
                XCTAssertFalse(states.values.first?.array.contains { !$0.isFinite } ?? true)
            }
            print(String(format: "ViT-L/14-336 %@: %.3f s per image (best of 2, %d threads)", label, best, Parallel.threads))
        }
        #endif
    }
}

import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import XCTest

/// The same checkpoints as PyTorch `.bin` files (Tests/Fixtures/gen_torch_bin.py): the
/// logits must be those of the safetensors copies, bit for bit.
extension LlavaTests {
    func testShardedBinCheckpointGivesTheSafetensorsLogits() throws {
        let bin = try VisionLanguageModel(path: Fixtures.data.appendingPathComponent("torch_bin/clip-llama-bin").path)
        let safetensors = try model("clip-llama")
        var results: [[Float]] = []
        for model in [bin, safetensors] {
            let pixels = try model.llava.preprocess(try image("square.png"))
            let features = ["square": try model.llava.imageFeatures(pixels: pixels)]
            let ids = model.promptEncoding.ids("USER: <image>\nWhat is in the image? ASSISTANT:", addSpecialTokens: true)
            let slots = try ChatSession.expand(ids: ids, images: [ImageInput(hash: "square", pixels: pixels)], support: model.images)
            XCTAssertGreaterThan(slots.count, ids.count, "the image expands")
            let x = try embeddings(slots, model: model, features: features)
            let cache = model.decoder.makeCache(capacity: slots.count)
            results.append(Array(try withExtendedLifetime(x) { try model.decoder.forward(embeddings: x.data, count: slots.count, cache: cache) }))
        }
        XCTAssertEqual(results[0], results[1])
    }
}

extension TinyLlamaTests {
    func testPytorchModelBinGivesTheSafetensorsLogits() throws {
        let bin = try load(folder: Fixtures.data.appendingPathComponent("torch_bin/llama-bin").path)
        let safetensors = try load("llama")
        let prompt = [1, 17, 42, 5, 99, 3]
        let a = Array(try bin.forward(tokens: prompt, cache: bin.makeCache()))
        let b = Array(try safetensors.forward(tokens: prompt, cache: safetensors.makeCache()))
        XCTAssertEqual(a, b)
    }
}

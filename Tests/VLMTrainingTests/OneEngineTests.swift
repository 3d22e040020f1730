import XCTest
@testable import VLMModels
import VLMGeneration
import VLMTensor
import VLMTraining

/// Inference and training run one forward per architecture: the same layers on a tape that does
/// not record (generation, encoding) and on one that does (a fine-tune with every part trainable).
/// On the tiny LLaVA fixture both give the same numbers, bit for bit.
final class OneEngineTests: XCTestCase {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/llava/clip-llama").path

    /// The fixture with a LoRA on every projection and the tower, projector and adapters trainable.
    func trainableModel() throws -> (VisionLanguageModel, TrainableModel) {
        let model = try VisionLanguageModel(path: Self.fixture)
        var random = SeededRandom(seed: 3)
        let lora = try LoRA.create(LoRAConfiguration(rank: 4, alpha: 8, dropout: 0), decoder: model.decoder, layout: .llava, random: &random)
        // B starts at zero; random values make the adapters take part in the comparison.
        for adapter in lora.adapters.values { for i in 0..<adapter.b.count { adapter.b.data[i] = random.nextUnit() - 0.5 } }
        let trainable = try TrainableModel(chat: model, mode: .visionLoRAProjector, lora: lora)
        XCTAssertTrue(trainable.parameters.allSatisfy { $0.variable.requiresGrad })
        return (model, trainable)
    }

    func randomTensor(_ shape: [Int], seed: UInt64) -> Tensor {
        var random = SeededRandom(seed: seed)
        return Tensor(shape: shape, values: (0..<shape.reduce(1, *)).map { _ in random.nextUnit() * 2 - 1 })
    }

    func testDecoderLayersAreOneCodeForGenerationAndTraining() throws {
        let (model, _) = try trainableModel()
        let decoder = model.decoder
        let n = 7, d = decoder.config.hiddenSize
        let x = randomTensor([n, d], seed: 11)

        let inference = Tape(recording: false)
        let cached = decoder.hiddenStates(Variable(x), pass: .cached(decoder.makeCache()), tape: inference)
        XCTAssertEqual(inference.count, 0, "inference records nothing")

        let training = Tape()
        let input = Variable(x, requiresGrad: true)
        let batch = decoder.hiddenStates(input, pass: .batch(SequenceLayout(batch: 1, length: n)), tape: training)
        XCTAssertGreaterThan(training.count, 0, "training records the ops")
        XCTAssertTrue(batch.requiresGrad)
        XCTAssertEqual(cached.value.array, batch.value.array)

        // And the gradient reaches the input and the adapters through the same layers.
        training.backward(batch, outputGradient: [Float](repeating: 1, count: batch.count))
        XCTAssertNotNil(input.grad)
        XCTAssertTrue(decoder.layers[0].q.adapter!.b.grad!.array.contains { $0 != 0 })
    }

    func testVisionLayerAndProjectorAreOneCodeForEncodingAndTraining() throws {
        let (model, _) = try trainableModel()
        let llava = model.llava
        let tower = try XCTUnwrap(llava.visionTransformer)
        let s = tower.shape
        let pixels = randomTensor([s.channels, s.imageSize, s.imageSize], seed: 5)

        // One vision layer: hidden state 1 through encoding and through the trainable tower.
        let encoded = try XCTUnwrap(try tower.hiddenStates(pixels: pixels, layers: [1])[1])
        let training = Tape()
        let trained = try tower.features([pixels], featureLayer: 1, dropClassToken: false, tape: training)
        XCTAssertTrue(trained.requiresGrad)
        XCTAssertGreaterThan(training.count, 0)
        XCTAssertEqual(encoded.array, trained.value.array)

        // The projector on the same features.
        let features = try llava.visionFeatures(pixels: pixels)
        let projected = try llava.projector.forward(features)
        let trainedProjection = llava.projector.forward(Variable(features), tape: training)
        XCTAssertTrue(trainedProjection.requiresGrad)
        XCTAssertEqual(projected.array, trainedProjection.value.array)
        XCTAssertEqual(try llava.imageFeatures(pixels: pixels).array, projected.array)
    }
}

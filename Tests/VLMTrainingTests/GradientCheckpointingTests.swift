import XCTest
import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor
import VLMTraining

/// Gradient checkpointing (`Tape.gradientCheckpointing`, `--gradient-checkpointing`) recomputes
/// each decoder layer in the backward pass: the loss, the adapters' gradients and the input's
/// gradient must be those of the plain graph, with LoRA dropout on (the recomputation draws the
/// same masks), and a run of optimizer steps must go the same way.
final class GradientCheckpointingTests: XCTestCase {
    static let data = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data").path

    func decoder(_ variant: String) throws -> LlamaModel {
        let folder = Self.data + "/tinyllama/" + variant
        let config = try JSONDecoder().decode(LlamaConfiguration.self, from: Data(contentsOf: URL(fileURLWithPath: folder + "/config.json")))
        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlamaWeights.sanitizeHF)
        return try LlamaModel(config: config, weights: weights, ropePairing: .halves)
    }

    /// Loss, every adapter's A and B gradients and the input embeddings' gradient of two padded
    /// rows through `model` with LoRA (dropout 0.1) on every projection.
    func lossAndGradients(_ model: LlamaModel, lora: LoRA, checkpointing: Bool) throws -> (loss: Float, grads: [String: [Float]], recorded: Int) {
        for adapter in lora.adapters.values { adapter.a.zeroGrad(); adapter.b.zeroGrad() }
        let layout = SequenceLayout(batch: 2, length: 6)
        let ids = [3, 17, 42, 5, 99, 7, 11, 64, 2, 0, 0, 0]
        let targets = [17, 42, 5, 99, 7, ignoreIndex, 64, 2, ignoreIndex, ignoreIndex, ignoreIndex, ignoreIndex]
        let d = model.config.hiddenSize
        let embeddings = Tensor(shape: [ids.count, d], zeroed: false)
        try model.embed(ids, into: embeddings.data)
        let input = Variable(embeddings, requiresGrad: true)

        let tape = Tape(random: SeededRandom(seed: 9))
        tape.gradientCheckpointing = checkpointing
        let hidden = model.hiddenStates(input, pass: .batch(layout), tape: tape)
        let recorded = tape.count
        let logits = tape.linear(tape.rmsNorm(hidden, weight: model.norm, eps: model.config.rmsNormEps), model.lmHead)
        let (loss, _) = tape.crossEntropy(logits, targets: targets, normalizer: 6)
        tape.backward(loss)

        var grads: [String: [Float]] = ["input": try XCTUnwrap(input.grad).array]
        for (name, adapter) in lora.adapters {
            grads[name + ".A"] = try XCTUnwrap(adapter.a.grad, name).array
            grads[name + ".B"] = try XCTUnwrap(adapter.b.grad, name).array
        }
        return (loss.data[0], grads, recorded)
    }

    func testLossAndGradientsEqualThePlainGraph() throws {
        for variant in ["llama", "qwen2"] {
            let model = try decoder(variant)
            var random = SeededRandom(seed: 5)
            let lora = try LoRA.create(LoRAConfiguration(rank: 4, alpha: 8, dropout: 0.1), decoder: model, layout: .text, random: &random)
            // B starts at zero; random values make every adapter's A gradient non-zero too.
            for adapter in lora.adapters.values {
                for i in 0..<adapter.b.count { adapter.b.data[i] = (random.nextUnit() - 0.5) * 0.2 }
                adapter.a.requiresGrad = true
                adapter.b.requiresGrad = true
            }
            try model.setAdapters(lora.adapters)

            let plain = try lossAndGradients(model, lora: lora, checkpointing: false)
            let checkpointed = try lossAndGradients(model, lora: lora, checkpointing: true)
            XCTAssertEqual(checkpointed.recorded, model.config.numHiddenLayers, "\(variant): one recorded op per layer")
            XCTAssertGreaterThan(plain.recorded, 10 * model.config.numHiddenLayers, variant)
            XCTAssertEqual(plain.loss, checkpointed.loss, accuracy: 1e-5, variant)
            XCTAssertEqual(Set(plain.grads.keys), Set(checkpointed.grads.keys))
            for (name, expected) in plain.grads {
                let got = checkpointed.grads[name]!
                XCTAssertTrue(expected.contains { $0 != 0 }, "\(variant) \(name): a gradient that is all zeros checks nothing")
                let worst = zip(got, expected).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(worst, 1e-5, "\(variant) \(name)")
            }
        }
    }

    /// Three optimizer steps of the trainer on the tiny LLaVA (LoRA with dropout, the projector
    /// trained too), with and without checkpointing: the same losses and the same adapters.
    func testTrainerStepsAreTheSameWithCheckpointing() throws {
        func run(_ checkpointing: Bool) throws -> (losses: [Double], weights: [[Float]]) {
            let model = try VisionLanguageModel(path: Self.data + "/llava/clip-llama")
            let lora = try LoRA.load(directory: Self.data + "/train/lora-init", decoder: model.decoder)
            let trainable = try TrainableModel(chat: model, mode: .loraProjector, lora: lora)
            let lines = try String(contentsOfFile: Self.data + "/train/examples.jsonl", encoding: .utf8).split(separator: "\n")
            let path = NSTemporaryDirectory() + "vlmsh-checkpointing-\(getpid()).jsonl"
            try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let dataset = try TrainingDataset.load(path: path, tokenizer: model.tokenizer, template: model.template,
                                                   image: (model.imageTokenID, model.llava.featureCount), imageFolder: Self.data + "/train")
            var s = FineTuneSettings()
            s.mode = .loraProjector; s.learningRate = 1e-2; s.steps = 3; s.loraDropout = 0.1; s.batchSize = 2
            s.gradientCheckpointing = checkpointing
            let trainer = try Trainer(model: trainable, dataset: dataset, settings: s)
            let losses = try (0..<3).map { _ in try trainer.step().loss }
            return (losses, trainable.parameters.map { $0.variable.value.array })
        }
        let plain = try run(false), checkpointed = try run(true)
        XCTAssertEqual(plain.losses.count, 3)
        for (a, b) in zip(plain.losses, checkpointed.losses) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(a))) }
        XCTAssertEqual(plain.weights.count, checkpointed.weights.count)
        for (a, b) in zip(plain.weights, checkpointed.weights) {
            XCTAssertLessThan(zip(a, b).map { abs($0 - $1) }.max() ?? 0, 1e-5)
        }
    }

    /// The memory check sizes a checkpointed step from one layer's activations plus every
    /// layer's input: a 7B Llama at 512 positions fits in a few hundred MB instead of gigabytes.
    func testMemoryEstimateCountsCheckpointing() {
        let config = LlamaConfiguration(modelType: "llama", hiddenSize: 4096, intermediateSize: 11008, numHiddenLayers: 32,
                                        numAttentionHeads: 32, numKeyValueHeads: 32, rmsNormEps: 1e-5, ropeTheta: 10000,
                                        ropeScaling: nil, vocabSize: 49152, maxPositionEmbeddings: 4096,
                                        tieWordEmbeddings: false, attentionBias: false)
        let plain = config.activationBytes(rows: 1, length: 512, recording: true)
        let checkpointed = config.activationBytes(rows: 1, length: 512, recording: true, checkpointing: true)
        XCTAssertGreaterThan(plain, 8e9)
        XCTAssertLessThan(checkpointed, 1e9)
        // Every layer's input is still counted.
        XCTAssertGreaterThan(checkpointed, 32 * 512 * 4096 * 4)
    }
}

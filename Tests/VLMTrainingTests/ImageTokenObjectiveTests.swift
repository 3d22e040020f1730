import XCTest
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import VLMTraining

/// `--objective image-token-embeddings` on the tiny LLaVA fixture: the loss is the formula over
/// the inference path's projected image features and the decoder's own embeddings, and training
/// with it moves every image token onto its text.
final class ImageTokenObjectiveTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data/llava").path
    static let words = ["square", "red", "blue", "tall", "wide", "grey"]

    /// Each image's texts: the rows cycle through a few one- and two-word texts, a different
    /// cycle per image, and one empty text (the zero vector).
    static func texts(image: Int, count: Int) -> [String] {
        (0..<count).map { k in
            if k == count - 1 { return "" }
            let i = (k + 2 * image) % words.count
            return k % 3 == 0 ? words[i] + " " + words[(i + 1) % words.count] : words[i]
        }
    }

    func makeTrainer(mode: FineTuneMode = .visionProjector, lr: Float = 1e-2, steps: Int = 1) throws -> Trainer {
        let model = try VisionLanguageModel(path: Self.fixtures + "/clip-llama")
        let n = model.llava.featureCount
        let rows = ["square", "wide", "tall", "gray"].enumerated().map { i, name -> String in
            let object: [String: Any] = [
                "image": Self.fixtures + "/images/\(name).png",
                "image_token_texts": Self.texts(image: i, count: n),
                "conversations": [["from": "human", "value": "<image>\nWhat is it?"], ["from": "gpt", "value": "A shape."]],
            ]
            return String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        }
        let path = NSTemporaryDirectory() + "vlmsh-token-texts-\(getpid()).jsonl"
        try rows.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let data = try TrainingDataset.load(path: path, tokenizer: model.tokenizer, template: model.template,
                                            image: (model.imageTokenID, n), readsImageTokenTexts: true)
        var s = FineTuneSettings()
        s.mode = mode; s.objective = .imageTokenEmbeddings; s.learningRate = lr; s.scheduler = .constant
        s.batchSize = 4; s.steps = steps
        return try Trainer(model: try TrainableModel(chat: model, mode: mode, lora: nil, objective: .imageTokenEmbeddings),
                           dataset: data, settings: s)
    }

    func testLossIsTheFormulaOverTheInferencePath() throws {
        let trainer = try makeTrainer()
        let model = trainer.model.chat as! VisionLanguageModel
        let batch = trainer.dataset.batch([0, 1, 2, 3], padID: trainer.padID)
        var random = SeededRandom(seed: 0)
        let units = trainer.model.lossUnits(batch)
        let (loss, stats) = try trainer.model.loss(batch, normalizer: Float(units), tape: Tape(), random: &random, training: false)

        // The same by hand: projected features from the inference path, targets from `embed`.
        let d = model.decoder.config.hiddenSize, n = model.llava.featureCount
        XCTAssertEqual(units, 4 * n * d)
        func embedding(_ ids: [Int]) throws -> [Double] {
            var sum = [Double](repeating: 0, count: d)
            let row = Tensor(shape: [d], zeroed: false)
            for id in ids {
                try model.decoder.embed([id], into: row.data)
                for k in 0..<d { sum[k] += Double(row.data[k]) }
            }
            return sum
        }
        let examples = trainer.dataset.examples
        var distinct: [[Int]] = []
        for e in examples { for t in e.imageTokenTexts! where !distinct.contains(t) { distinct.append(t) } }
        let candidates = try distinct.map(embedding)
        var expected = 0.0, nearest = 0
        for e in examples {
            let features = try model.llava.imageFeatures(pixels: try model.llava.preprocess(try ImageLoader.load(path: e.imagePath!)))
            for (k, ids) in e.imageTokenTexts!.enumerated() {
                let x = (0..<d).map { Double(features.data[k * d + $0]) }
                let distances = candidates.map { c in zip(x, c).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) } }
                let y = distinct.firstIndex(of: ids)!
                let m = distances.min()!
                expected += distances[y] + (distances[y] - m) + log(distances.map { exp(m - $0) }.reduce(0, +))
                nearest += distances[y] == m ? 1 : 0
            }
        }
        expected /= Double(units)
        XCTAssertEqual(Double(loss.data[0]), expected, accuracy: 1e-4 * expected, "loss \(loss.data[0]) vs formula \(expected)")
        XCTAssertEqual(stats.tokens, 4 * n)
        XCTAssertEqual(stats.correct, nearest)
        XCTAssertEqual(stats.lossSum / Double(stats.tokens), Double(loss.data[0]), accuracy: 1e-4 * expected, "evaluation reports the training loss")
    }

    func testTrainingPutsEveryImageTokenOnItsText() throws {
        let trainer = try makeTrainer(lr: 3e-3, steps: 150)
        let batch = trainer.dataset.batch([0, 1, 2, 3], padID: trainer.padID)
        func measure() throws -> (loss: Float, nearest: Int) {
            var random = SeededRandom(seed: 0)
            let (loss, stats) = try trainer.model.loss(batch, normalizer: Float(trainer.model.lossUnits(batch)), tape: Tape(),
                                                       random: &random, training: false)
            return (loss.data[0], stats.correct)
        }
        let before = try measure()
        while !trainer.isFinished { try trainer.step() }
        let after = try measure()
        XCTAssertLessThan(after.loss, before.loss / 20, "loss \(before.loss) → \(after.loss)")
        XCTAssertEqual(after.nearest, batch.imageTokenTexts.reduce(0) { $0 + $1!.count }, "every token nearest its own text")
    }

    func testNeedsAVisionMode() throws {
        XCTAssertThrowsError(try makeTrainer(mode: .loraProjector)) { error in
            XCTAssertTrue("\(error)".contains("--objective image-token-embeddings trains the vision side only"), "\(error)")
        }
    }
}

import Foundation
import XCTest
import VLMGeneration
import VLMModels
import VLMTensor
@testable import VLMTraining

/// `trainer_state.json` as the Hugging Face Trainer writes it, in every checkpoint (with what
/// resuming needs under "vlmsh") and in a run's output folder; and a row with two pictures
/// training through the model's multi-image path.
final class TrainerStateTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data/llava").path

    var work = ""

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "vlmsh-trainer-state-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: work) }

    /// Four rows (one with two pictures), one per micro-batch: four steps an epoch.
    func makeTrainer(steps: Int) throws -> Trainer {
        let model = try VisionLanguageModel(path: Self.fixtures + "/clip-llama")
        let images = Self.fixtures + "/images/"
        let rows: [[String: Any]] = [
            ["image": [images + "square.png", images + "wide.png"],
             "conversations": [["from": "human", "value": "<image>\nThis one, <image>\nthat one: same?"], ["from": "gpt", "value": "No."]]],
            ["image": images + "tall.png", "conversations": [["from": "human", "value": "<image>\nWhat is it?"], ["from": "gpt", "value": "Tall."]]],
            ["image": images + "gray.png", "conversations": [["from": "human", "value": "What is it?"], ["from": "gpt", "value": "Gray."]]],
            ["conversations": [["from": "human", "value": "Hi"], ["from": "gpt", "value": "Hello."]]],
        ]
        let path = work + "/data.jsonl"
        try rows.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(separator: "\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let data = try TrainingDataset.load(path: path, tokenizer: model.tokenizer, template: model.template,
                                            image: (model.imageTokenID, model.llava.featureCount))
        XCTAssertEqual(data[0].imagePaths.count, 2)
        var s = FineTuneSettings()
        s.mode = .loraProjector; s.steps = steps; s.learningRate = 1e-3; s.saveSteps = 2
        var random = SeededRandom(seed: s.seed)
        let lora = try LoRA.create(s.loraConfiguration, decoder: model.decoder, layout: .llava, random: &random)
        return try Trainer(model: try TrainableModel(chat: model, mode: s.mode, lora: lora), dataset: data, settings: s)
    }

    func json(_ path: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    func testCheckpointAndOutputFolderHoldTheHuggingFaceTrainerState() throws {
        let trainer = try makeTrainer(steps: 3)
        var metrics: [StepMetrics] = []
        for _ in 0..<3 { metrics.append(try trainer.step()) }
        XCTAssertTrue(metrics.allSatisfy { $0.loss.isFinite && $0.loss > 0 }, "\(metrics)")
        trainer.recordEvaluation(loss: 1.5)
        try trainer.save(to: work + "/out/checkpoint-3", baseModel: "base")
        try trainer.writeTrainerState(to: work + "/out", baseModel: "base", resumable: false)

        for (path, resumable) in [(work + "/out/checkpoint-3/trainer_state.json", true), (work + "/out/trainer_state.json", false)] {
            let state = try json(path)
            XCTAssertEqual(state["global_step"] as? Int, 3)
            XCTAssertEqual(state["max_steps"] as? Int, 3)
            XCTAssertEqual(state["num_train_epochs"] as? Int, 1)
            XCTAssertEqual(state["epoch"] as? Double, 0.75)
            XCTAssertEqual(state["train_batch_size"] as? Int, 1)
            XCTAssertEqual(state["save_steps"] as? Int, 2)
            XCTAssertEqual(state["logging_steps"] as? Int, 1)
            for key in ["best_metric", "best_model_checkpoint", "best_global_step", "trial_name", "trial_params"] {
                XCTAssertTrue(state[key] is NSNull, "\(key) is null")
            }
            let log = try XCTUnwrap(state["log_history"] as? [[String: Any]])
            XCTAssertEqual(log.count, 4)
            for (entry, m) in zip(log.prefix(3), metrics) {
                XCTAssertEqual(Set(entry.keys), ["epoch", "grad_norm", "learning_rate", "loss", "step"])
                XCTAssertEqual(entry["step"] as? Int, m.step)
                // Foundation's JSON reader may miss the last bit of a double.
                XCTAssertEqual(try XCTUnwrap(entry["loss"] as? Double), m.loss, accuracy: 1e-12 * m.loss)
                XCTAssertEqual(try XCTUnwrap(entry["learning_rate"] as? Double), m.learningRate, accuracy: 1e-12 * m.learningRate)
                XCTAssertEqual(try XCTUnwrap(entry["grad_norm"] as? Double), m.gradNorm, accuracy: 1e-12 * m.gradNorm)
                XCTAssertEqual(entry["epoch"] as? Double, Double(m.step) / 4)
            }
            XCTAssertEqual(log[3]["eval_loss"] as? Double, 1.5)
            XCTAssertEqual(log[3]["step"] as? Int, 3)
            XCTAssertEqual(state["vlmsh"] != nil, resumable, path)
        }
        // Written atomically: nothing else in the folders.
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: work + "/out")), ["checkpoint-3", "trainer_state.json"])
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: work + "/out/checkpoint-3").contains { $0.contains("tmp") })

        // The checkpoint resumes to the same state.
        let resumed = try makeTrainer(steps: 3)
        try resumed.restore(from: work + "/out/checkpoint-3")
        XCTAssertEqual(resumed.state, trainer.state)
    }

    func testCheckpointsWrittenBeforeTheHuggingFaceFieldsStillResume() throws {
        let trainer = try makeTrainer(steps: 2)
        try trainer.step()
        let old: [String: Any] = [
            "settings": try JSONSerialization.jsonObject(with: JSONEncoder().encode(trainer.settings)),
            "state": try JSONSerialization.jsonObject(with: JSONEncoder().encode(trainer.state)),
            "base_model": "base", "optimizer_step": 1,
        ]
        try FileManager.default.createDirectory(atPath: work + "/old", withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: old).write(to: URL(fileURLWithPath: work + "/old/trainer_state.json"))
        let record = try CheckpointRecord.read(directory: work + "/old")
        XCTAssertEqual(record.state, trainer.state)
        XCTAssertEqual(record.settings, trainer.settings)
        XCTAssertEqual(record.optimizerStep, 1)
    }
}

extension TrainerStateTests {
    func testAnOutputFolderIsNotTakenForACheckpoint() throws {
        let trainer = try makeTrainer(steps: 1)
        try trainer.step()
        try trainer.writeTrainerState(to: work, baseModel: nil, resumable: false)
        XCTAssertThrowsError(try trainer.restore(from: work)) { error in
            XCTAssertTrue("\(error)".contains("no resume state"), "\(error)")
        }
    }
}

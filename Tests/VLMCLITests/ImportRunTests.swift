import Foundation
import VLMFormats
import VLMStore
import VLMTensor
import XCTest

/// `vlmsh import-run` on a run of the Hugging Face Trainer as LLaVA's train.py makes one
/// (Fixtures/gen_import_run.py: PEFT LoRA plus the projector in non_lora_trainables.bin,
/// trainer_state.json, checkpoint-N/): its log and checkpoints land in the store, and the folder
/// used as an adapter scores the data as the trained PyTorch model does.
final class ImportRunTests: XCTestCase {
    static let data = CLITests.fixtures.path
    static let run = data + "/import_run/run"
    static let base = data + "/llava/clip-llama"
    static let examples = data + "/train/examples.jsonl"
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: ImportRunTests.data + "/import_run/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    var home = ""
    override func setUpWithError() throws { home = try scratchDirectory("vlmsh-import-run") }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result { try CLITests.vlmsh(arguments, home: home, timeout: 300) }

    func testTheRunsLogAndCheckpointsGoIntoTheStore() throws {
        let r = try vlmsh(["import-run", Self.run, "--model", Self.base])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("run 1 imported from \(Self.run): lora+projector, 3 steps (3 logged)"), r.stdout)
        XCTAssertTrue(r.stdout.contains("2 checkpoints"), r.stdout)

        let store = try Store(path: home + "/vlmsh.sqlite")
        let run = try XCTUnwrap(try store.runs().first)
        XCTAssertEqual(run.status, .completed)
        XCTAssertEqual(run.outDir, Self.run)
        let metrics = try store.metrics(run: run.id)
        let logged = (Self.golden["log_history"] as! [[String: Any]]).filter { $0["loss"] != nil }
        XCTAssertEqual(metrics.map(\.step), logged.map { $0["step"] as! Int })
        for (m, l) in zip(metrics, logged) {
            XCTAssertEqual(m.loss, l["loss"] as? Double)
            XCTAssertEqual(m.lr, l["learning_rate"] as? Double)
            XCTAssertEqual(m.gradNorm, l["grad_norm"] as? Double)
        }
        let checkpoints = try store.checkpoints(run: run.id)
        XCTAssertEqual(checkpoints.map(\.step), [2, 3])
        XCTAssertEqual(checkpoints.map(\.kind), [.lora, .lora], "the Trainer's checkpoints hold the LoRA only")
        XCTAssertTrue(checkpoints.allSatisfy { $0.sha256?.count == 64 })
    }

    /// The imported folder as `--adapter`: each example's loss as PyTorch computes it on the model
    /// the run trained (LoRA from adapter_model.safetensors, projector from non_lora_trainables.bin).
    func testTheImportedAdapterScoresAsTheTrainedModel() throws {
        XCTAssertEqual(try vlmsh(["import-run", Self.run]).status, 0)
        try assertLossesMatchTraining(adapter: Self.run)
    }

    /// Older PEFT (and LLaVA's LoRA releases) save adapter_model.bin with torch.save.
    func testAPickledAdapterReadsTheSame() throws {
        let copy = try scratchDirectory("vlmsh-import-bin") + "/run"
        try FileManager.default.copyItem(atPath: Self.run, toPath: copy)
        let file = try SafetensorsFile(path: copy + "/adapter_model.safetensors")
        try TorchCheckpointWriter.write(try file.weightNames.sorted().map { ($0, try file.floats($0)) }, to: copy + "/adapter_model.bin")
        try FileManager.default.removeItem(atPath: copy + "/adapter_model.safetensors")
        XCTAssertEqual(try vlmsh(["import-run", copy, "--model", Self.base]).status, 0)
        try assertLossesMatchTraining(adapter: copy)
    }

    func assertLossesMatchTraining(adapter: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try vlmsh(["eval", "--model", Self.base, "--adapter", adapter, "--data", Self.examples, "--max-new-tokens", "1", "--json", "--no-store"])
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], file: file, line: line)
        let rows = try XCTUnwrap(j["per_row"] as? [[String: Any]], file: file, line: line)
        let expected = Self.golden["losses_after_training"] as! [String: Double]
        XCTAssertEqual(rows.count, 3, file: file, line: line)
        for (row, name) in zip(rows, ["A", "B", "B-text"]) {
            let loss = try XCTUnwrap(row["loss"] as? Double, file: file, line: line)
            XCTAssertEqual(loss, expected[name]!, accuracy: 1e-4 * expected[name]!, "example \(name)", file: file, line: line)
        }
    }

    func testAFolderThatIsNotARunIsOneLine() throws {
        let empty = try scratchDirectory("vlmsh-import-empty")
        let none = try vlmsh(["import-run", empty])
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.stderr.contains("not an adapter folder"), none.stderr)

        let copy = empty + "/run"
        try FileManager.default.copyItem(atPath: Self.run, toPath: copy)
        try FileManager.default.removeItem(atPath: copy + "/trainer_state.json")
        let noState = try vlmsh(["import-run", copy])
        XCTAssertEqual(noState.status, 1)
        XCTAssertTrue(noState.stderr.contains("trainer_state.json: missing"), noState.stderr)

        try #"{"global_step": 3, "log_history": [{"step": 9, "loss": 1.0}]}"#.write(toFile: copy + "/trainer_state.json", atomically: true, encoding: .utf8)
        let badStep = try vlmsh(["import-run", copy])
        XCTAssertEqual(badStep.status, 1)
        XCTAssertTrue(badStep.stderr.contains("log_history[0]: step is missing or outside 0…3"), badStep.stderr)
        XCTAssertEqual(badStep.stderr.split(separator: "\n").count, 1, badStep.stderr)
        if FileManager.default.fileExists(atPath: home + "/vlmsh.sqlite") {
            XCTAssertEqual(try Store(path: home + "/vlmsh.sqlite").runs().count, 0, "nothing recorded")
        }
    }
}

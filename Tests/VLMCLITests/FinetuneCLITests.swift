import Foundation
import VLMStore
import XCTest

/// `vlmsh finetune` end to end on the tiny LLaVA fixture: the --json contract, checkpoints and
/// store rows, a resumed run reproducing an uninterrupted one, and kill -9 mid-run.
final class FinetuneCLITests: XCTestCase {
    static let fixtures = CLITests.fixtures.path
    var home = ""

    override func setUpWithError() throws {
        home = NSTemporaryDirectory() + "vlmsh-ft-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: home) }

    func process(_ arguments: [String]) -> (Process, Pipe, Pipe) {
        let p = Process()
        p.executableURL = CLITests.binary
        p.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["VLMSH_HOME"] = home
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out; p.standardError = err
        return (p, out, err)
    }

    func vlmsh(_ arguments: [String]) throws -> (status: Int32, lines: [[String: Any]], stderr: String) {
        let (p, out, err) = process(arguments)
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        return (p.terminationStatus, lines, errors)
    }

    func finetune(_ extra: [String], out: String) throws -> (status: Int32, lines: [[String: Any]], stderr: String) {
        try vlmsh(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", Self.fixtures + "/train/examples.jsonl",
                   "--mode", "lora+projector", "--lr", "1e-2", "--out", out, "--json"] + extra)
    }

    func losses(_ lines: [[String: Any]]) -> [Int: Double] {
        var out: [Int: Double] = [:]
        for l in lines { if let s = l["step"] as? Int, let loss = l["loss"] as? Double { out[s] = loss } }
        return out
    }

    func testJSONStepsCheckpointsAndStore() throws {
        let out = home + "/run"
        let r = try finetune(["--steps", "4", "--save-steps", "2", "--eval-data", Self.fixtures + "/train/examples.jsonl"], out: out)
        XCTAssertEqual(r.status, 0, r.stderr)
        let steps = r.lines.filter { $0["loss"] != nil }
        XCTAssertEqual(steps.map { $0["step"] as? Int }, [1, 2, 3, 4])
        for s in steps { for key in ["step", "loss", "lr", "grad_norm", "tokens_per_second"] { XCTAssertNotNil(s[key], key) } }
        let summary = try XCTUnwrap(r.lines.last?["summary"] as? [String: Any])
        XCTAssertEqual(summary["status"] as? String, "completed")
        XCTAssertNotNil(summary["eval_loss"])
        // PEFT adapter, projector under both names, curve, checkpoints.
        for f in ["adapter_config.json", "adapter_model.safetensors", "multi_modal_projector.safetensors", "mm_projector.safetensors", "mm_projector.bin",
                  "loss.svg", "checkpoint-2/trainer_state.json", "checkpoint-4/optimizer.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        let store = try Store(path: home + "/vlmsh.sqlite")
        let run = try XCTUnwrap(try store.runs().first)
        XCTAssertEqual(run.status, .completed)
        XCTAssertEqual(try store.metrics(run: run.id).compactMap(\.loss).count, 4)
        XCTAssertEqual(try store.checkpoints(run: run.id).map(\.step), [2, 4])
    }

    func testResumedRunMatchesUninterruptedRun() throws {
        let full = try finetune(["--steps", "6", "--save-steps", "2"], out: home + "/full")
        XCTAssertEqual(full.status, 0, full.stderr)
        let resumed = try vlmsh(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", Self.fixtures + "/train/examples.jsonl",
                                 "--resume", home + "/full/checkpoint-2", "--out", home + "/resumed", "--json"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let a = losses(full.lines), b = losses(resumed.lines)
        XCTAssertEqual(Set(b.keys), Set(3...6))
        for step in 3...6 { XCTAssertEqual(b[step]!, a[step]!, accuracy: 1e-6 * abs(a[step]!), "step \(step)") }
    }

    func testKillDuringTrainingLeavesLoadableCheckpoint() throws {
        let out = home + "/killed"
        let (p, _, _) = process(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", Self.fixtures + "/train/examples.jsonl",
                                 "--mode", "lora", "--steps", "100000", "--save-steps", "3", "--out", out, "--json"])
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && !FileManager.default.fileExists(atPath: out + "/checkpoint-9") { usleep(2_000) }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: out).filter { $0.hasPrefix("checkpoint-") && !$0.contains(".tmp") }
        let last = try XCTUnwrap(checkpoints.compactMap { Int($0.dropFirst("checkpoint-".count)) }.max())
        XCTAssertGreaterThanOrEqual(last, 9)
        // The newest complete checkpoint resumes.
        let resumed = try vlmsh(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", Self.fixtures + "/train/examples.jsonl",
                                 "--resume", out + "/checkpoint-\(last)", "--steps", "\(last + 2)", "--out", home + "/after", "--json"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(losses(resumed.lines).keys.sorted(), [last + 1, last + 2])
        let store = try Store(path: home + "/vlmsh.sqlite")
        XCTAssertEqual(try store.integrityCheck(), "ok")
    }

    func testCtrlCStopsAtAStepBoundaryWithACheckpoint() throws {
        let out = home + "/interrupted"
        let (p, stdout, _) = process(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", Self.fixtures + "/train/examples.jsonl",
                                      "--mode", "lora", "--steps", "100000", "--out", out, "--json"])
        try p.run()
        // Wait for the first step line, then interrupt as Ctrl-C would.
        let reader = stdout.fileHandleForReading
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while !text.contains("\"step\"") && Date() < deadline { text += String(decoding: reader.availableData, as: UTF8.self) }
        kill(p.processIdentifier, SIGINT)
        text += String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let summary = try XCTUnwrap(text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .last?["summary"] as? [String: Any])
        XCTAssertEqual(summary["status"] as? String, "stopped")
        let steps = try XCTUnwrap(summary["steps"] as? Int)
        XCTAssertLessThan(steps, 100000)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/checkpoint-\(steps)/trainer_state.json"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/adapter_model.safetensors"))
        let store = try Store(path: home + "/vlmsh.sqlite")
        XCTAssertEqual(try store.runs().first?.status, .stopped)
    }

    func testBadDataStopsBeforeTheFirstStep() throws {
        let data = home + "/bad.jsonl"
        try "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n".write(toFile: data, atomically: true, encoding: .utf8)
        let r = try vlmsh(["finetune", "--model", Self.fixtures + "/llava/clip-llama", "--data", data, "--out", home + "/x", "--json"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("bad.jsonl:1"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: home + "/x/adapter_model.safetensors"))
    }
}

/// sessions/finetune-eval.vlm on the real model: eval before, /finetune, eval after, /adapter unload.
final class FinetuneSessionScriptTests: XCTestCase {
    func testFinetuneThenEvalScript() throws {
        let model = try CLITests.defaultModel()
        let home = NSTemporaryDirectory() + "vlmsh-fte-\(getpid())"
        try? FileManager.default.removeItem(atPath: home)
        try FileManager.default.createDirectory(atPath: home + "/models", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: home + "/models/" + (model as NSString).lastPathComponent, withDestinationPath: model)
        defer { try? FileManager.default.removeItem(atPath: home) }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let script = try String(contentsOf: repo.appendingPathComponent("sessions/finetune-eval.vlm"), encoding: .utf8)
            .replacingOccurrences(of: "/tmp/vlmsh-facts-lora", with: home + "/lora")
            .replacingOccurrences(of: "sessions/data/", with: repo.path + "/sessions/data/")
        try script.write(toFile: home + "/script.vlm", atomically: true, encoding: .utf8)

        let p = Process()
        p.executableURL = CLITests.binary
        p.arguments = ["run", home + "/script.vlm", "--json"]
        var env = ProcessInfo.processInfo.environment
        env["VLMSH_HOME"] = home
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let result = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual((result["errors"] as? [String]) ?? [], [])
        let replies = try XCTUnwrap(result["replies"] as? [String])
        XCTAssertEqual(replies.first, "A terminal shell for vision-language models.")
        XCTAssertNotEqual(replies.last, replies.first, "after /adapter unload the base model answers")

        let store = try Store(path: home + "/vlmsh.sqlite")
        let exact = try store.evals().filter { $0.metric == "exact_match" }.map(\.value)
        XCTAssertEqual(exact.count, 2)
        XCTAssertLessThan(exact[0], 0.5, "before fine-tuning")
        XCTAssertEqual(exact[1], 1, "after fine-tuning")
        XCTAssertEqual(try store.runs().first?.status, .completed)
        XCTAssertEqual(try store.checkpoints().count, 1)
    }
}

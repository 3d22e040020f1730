import Foundation
import VLMStore
import XCTest

/// `vlmsh export-run`: the launch folder it writes trains under torchrun to vlmsh's own losses.
/// Fixtures/gen_export_run.py ran the release binary's folder with two CPU processes (gloo) and
/// kept the folder, torchrun's log and the adapter it left; here the folder is written again and
/// must be the same (so the committed run goes stale loudly), `vlmsh finetune` with the same
/// arguments must give torchrun's losses, and the imported torchrun adapter vlmsh's logits.
final class ExportRunTests: XCTestCase {
    static let data = CLITests.fixtures.path
    static let area = data + "/export_run"
    static let model = data + "/llava/clip-llama"
    static let trainData = area + "/data/train.json"
    static let cases = ["lora", "lora+projector"]
    /// Files of the folder compared byte for byte with the committed ones.
    static let sameFiles = ["train.py", "launch.sh", "ds_config_zero2.json", "ds_config_zero3.json", "requirements.txt",
                            "tokenized.jsonl", "llava.json"]
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: ExportRunTests.area + "/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    var home = ""
    override func setUpWithError() throws { home = try scratchDirectory("vlmsh-export-run") }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result { try CLITests.vlmsh(arguments, home: home, timeout: 600) }

    func goldenCase(_ name: String) -> [String: Any] { (Self.golden["cases"] as! [String: Any])[name] as! [String: Any] }

    /// The case's finetune arguments with the fixture's paths.
    func arguments(_ name: String) -> [String] {
        (goldenCase(name)["args"] as! [String]).map { $0 == "$MODEL" ? Self.model : $0 == "$DATA" ? Self.trainData : $0 }
    }

    func export(_ name: String, to out: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try vlmsh(["export-run", "--out", out, "--nproc-per-node", "2", "--from-args"] + arguments(name))
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stdout.contains("3 steps over 8 rows and 3 images"), r.stdout, file: file, line: line)
    }

    func jsonObject(_ path: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: try Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
    }

    func testTheFolderIsTheOneTorchrunRan() throws {
        for name in Self.cases {
            let out = try scratchDirectory("vlmsh-export-run-out") + "/folder"
            try export(name, to: out)
            let committed = Self.area + "/\(name)/export"
            for file in Self.sameFiles {
                let written = try String(contentsOfFile: out + "/" + file, encoding: .utf8)
                XCTAssertEqual(written, try String(contentsOfFile: committed + "/" + file, encoding: .utf8),
                               "\(name): \(file) differs from the one gen_export_run.py ran (regenerate: generate.py export_run)")
            }
            XCTAssertEqual(try ContentHash.hex(file: out + "/train.py"), goldenCase(name)["train_py_sha256"] as? String)
            // run.json names the model by this machine's path; the rest (steps' rows, settings) is the same.
            var run = try jsonObject(out + "/run.json"), committedRun = try jsonObject(committed + "/run.json")
            XCTAssertEqual(run.removeValue(forKey: "model") as? String, Self.model)
            committedRun.removeValue(forKey: "model")
            XCTAssertEqual(NSDictionary(dictionary: run), NSDictionary(dictionary: committedRun), "\(name): run.json")
            XCTAssertEqual((run["steps"] as? [Any])?.count, 3)
            // Self-contained: the pictures copied in under their content names, the data naming them.
            let images = try FileManager.default.contentsOfDirectory(atPath: out + "/images").sorted()
            XCTAssertEqual(images.count, 3)
            let llava = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/llava.json"))) as? [[String: Any]])
            for record in llava {
                let named = (record["image"] as? String).map { [$0] } ?? (record["image"] as? [String]) ?? []
                for path in named { XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + path), path) }
            }
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: out + "/launch.sh"))
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/init/adapter_model.safetensors"))
        }
    }

    /// Same arguments, same global batch (torchrun: 2 processes): the same losses, and the
    /// adapter torchrun left gives vlmsh's adapter's logits once imported.
    func testFinetuneLossesAndAdapterMatchTorchrun() throws {
        for (index, name) in Self.cases.enumerated() {
            let trained = try scratchDirectory("vlmsh-export-run-ft") + "/out"
            let r = try vlmsh(["finetune"] + arguments(name) + ["--out", trained, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let losses = r.stdout.split(separator: "\n").compactMap { line -> Double? in
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], object["step"] != nil else { return nil }
                return object["loss"] as? Double
            }
            let torchrun = (goldenCase(name)["torchrun"] as! [String: Any])["losses"] as! [Double]
            XCTAssertEqual(losses.count, 3, r.stdout)
            for (step, (mine, theirs)) in zip(losses, torchrun).enumerated() {
                XCTAssertEqual(mine, theirs, accuracy: 1e-4 * abs(theirs), "\(name): step \(step + 1)")
            }

            let output = Self.area + "/\(name)/output"
            let imported = try vlmsh(["import-run", output, "--model", Self.model])
            XCTAssertEqual(imported.status, 0, imported.stderr)
            XCTAssertTrue(imported.stdout.contains("run \(2 * index + 2) imported from \(output): \(name), 3 steps (3 logged)"), imported.stdout)
            let ours = try logits(adapter: trained), theirs = try logits(adapter: output)
            XCTAssertEqual(ours.count, 701)
            XCTAssertEqual(Set(ours.keys), Set(theirs.keys))
            let worst = ours.map { abs($0.value - theirs[$0.key]!) / max(1, abs($0.value)) }.max()!
            XCTAssertLessThanOrEqual(worst, 1e-4, "\(name): logits of the imported torchrun adapter")
            let base = try logits(adapter: nil)
            XCTAssertGreaterThan(base.map { abs($0.value - ours[$0.key]!) }.max()!, 1e-3, "\(name): training changed the logits")
        }
    }

    /// Every logit of the last position, by token id, for an image and a question.
    func logits(adapter: String?) throws -> [Int: Double] {
        let r = try vlmsh(["logits", "--model", Self.model] + (adapter.map { ["--adapter", $0] } ?? [])
                          + ["--image", Self.data + "/llava/images/square.png", "--prompt", "What is this?", "--top-k", "701", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let top = try XCTUnwrap(object["top"] as? [[Double]])
        return Dictionary(uniqueKeysWithValues: top.map { (Int($0[0]), $0[1]) })
    }

    /// A stored run exports to the same folder as its arguments.
    func testAStoredRunExportsAsItsArguments() throws {
        let trained = try scratchDirectory("vlmsh-export-run-stored") + "/out"
        XCTAssertEqual(try vlmsh(["finetune"] + arguments("lora+projector") + ["--out", trained, "--json"]).status, 0)
        let fromRun = try scratchDirectory("vlmsh-export-run-id") + "/folder"
        let r = try vlmsh(["export-run", "1", "--out", fromRun])
        XCTAssertEqual(r.status, 0, r.stderr)
        let committed = Self.area + "/lora+projector/export"
        for file in ["train.py", "tokenized.jsonl", "llava.json"] {
            XCTAssertEqual(try String(contentsOfFile: fromRun + "/" + file, encoding: .utf8),
                           try String(contentsOfFile: committed + "/" + file, encoding: .utf8), file)
        }
        var run = try jsonObject(fromRun + "/run.json"), committedRun = try jsonObject(committed + "/run.json")
        run.removeValue(forKey: "model"); committedRun.removeValue(forKey: "model")
        XCTAssertEqual(NSDictionary(dictionary: run), NSDictionary(dictionary: committedRun))
    }

    func assertOneLineError(_ r: CLITests.Result, _ needle: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(needle), r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
    }

    func testHostileInputsAreOneLine() throws {
        let scratch = try scratchDirectory("vlmsh-export-run-bad")
        assertOneLineError(try vlmsh(["export-run", "99", "--out", scratch + "/a"]), "no run 99")
        assertOneLineError(try vlmsh(["export-run", "abc", "--out", scratch + "/a"]), "abc: not a run id")

        let bad = scratch + "/missing.json"
        try #"[{"image": "nowhere.png", "conversations": [{"from": "human", "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}]}]"#
            .write(toFile: bad, atomically: true, encoding: .utf8)
        let missing = try vlmsh(["export-run", "--out", scratch + "/b", "--from-args", "--model", Self.model, "--data", bad, "--mode", "lora"])
        assertOneLineError(missing, "nowhere.png")
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch + "/b/run.json"))

        let aFile = scratch + "/file"
        try "x".write(toFile: aFile, atomically: true, encoding: .utf8)
        assertOneLineError(try vlmsh(["export-run", "--out", aFile, "--from-args"] + arguments("lora")), "exists and is not a folder")
        assertOneLineError(try vlmsh(["export-run", "--out", scratch + "/c", "--from-args"] + arguments("lora") + ["--mode", "vision+projector"]),
                           "export-run writes --mode lora, projector, lora+projector")
    }
}

import Foundation
import XCTest

/// llama.cpp's LLaVA pair (text GGUF + mmproj GGUF) through the binary: `generate` / `logits`
/// with `--mmproj`, `/load … --mmproj …` in a script, a store name for the pair, hostile mmproj
/// files, and a few fine-tuning steps.
final class GGUFPairCLITests: XCTestCase {
    static let folder = CLITests.fixtures.appendingPathComponent("gguf_pair")
    static let text = folder.appendingPathComponent("tiny-llava-text-f16.gguf").path
    static let mmproj = folder.appendingPathComponent("tiny-llava-mmproj-f16.gguf").path
    var home = ""

    override func setUpWithError() throws {
        home = NSTemporaryDirectory() + "vlmsh-pair-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: home) }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result { try CLITests.vlmsh(arguments, home: home, timeout: 300) }

    func json(_ r: CLITests.Result) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
    }

    func golden(_ index: Int) throws -> [String: Any] {
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: Self.folder.appendingPathComponent("golden.json"))) as? [String: Any])
        return try XCTUnwrap((root["cases"] as? [[String: Any]])?[index])
    }

    func question(_ c: [String: Any]) throws -> String {
        try XCTUnwrap(((c["messages"] as? [[String: Any]])?.first?["content"] as? [[String: Any]])?.last?["text"] as? String)
    }

    func image(_ c: [String: Any]) throws -> String {
        Self.folder.appendingPathComponent("images/" + (try XCTUnwrap(c["image"] as? String))).path
    }

    func testGenerateAndLogitsWithMMProjMatchTransformers() throws {
        for index in 0..<3 {
            let c = try golden(index)
            let gen = try json(try vlmsh(["generate", "--model", Self.text, "--mmproj", Self.mmproj, "--prompt", try question(c),
                                          "--image", try image(c), "--temperature", "0", "--max-tokens", "16", "--json"]))
            XCTAssertEqual(gen["prompt_ids"] as? [Int], c["prompt_ids"] as? [Int], "case \(index) prompt")
            let greedy = try XCTUnwrap(c["greedy_ids"] as? [Int])
            let got = try XCTUnwrap(gen["ids"] as? [Int])
            // Generation stops at EOS; the goldens never stop.
            XCTAssertFalse(got.isEmpty)
            XCTAssertEqual(got, Array(greedy.prefix(got.count)), "case \(index) greedy")

            let logits = try json(try vlmsh(["logits", "--model", Self.text, "--mmproj", Self.mmproj, "--prompt", try question(c),
                                             "--image", try image(c), "--top-k", "5", "--json"]))
            let top = try XCTUnwrap(logits["top"] as? [[Any]])
            XCTAssertEqual(top.map { $0[0] as? Int }, (c["top5_ids"] as? [Int])?.map { $0 }, "case \(index) top-5")
            let expected = try XCTUnwrap(c["last_logits"] as? [Double])
            for entry in top {
                XCTAssertEqual(try XCTUnwrap(entry[1] as? Double), expected[try XCTUnwrap(entry[0] as? Int)], accuracy: 1e-3)
            }
        }
    }

    /// LLaVA-1.6's pair (Fixtures/gen_gguf_pair_next.py): the prompt's image takes as many positions
    /// as its size gives, and the greedy reply is transformers'.
    func testLLaVA16PairGeneratesTransformersGreedyIds() throws {
        let folder = CLITests.fixtures.appendingPathComponent("gguf_pair_next")
        let golden = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("golden.json"))) as? [String: Any])
        for c in try XCTUnwrap(golden["cases"] as? [[String: Any]]) {
            let file = try XCTUnwrap(c["image"] as? String)
            let ids = try XCTUnwrap(c["prompt_ids"] as? [Int]).map(String.init).joined(separator: ",")
            let gen = try json(try vlmsh(["generate", "--model", folder.appendingPathComponent("tiny-next-text-f16.gguf").path,
                                          "--mmproj", folder.appendingPathComponent("tiny-next-mmproj-f16.gguf").path, "--ids", ids,
                                          "--image", CLITests.fixtures.appendingPathComponent("llava_next/images/\(file)").path,
                                          "--temperature", "0", "--max-tokens", "16", "--json"]))
            let got = try XCTUnwrap(gen["ids"] as? [Int])
            XCTAssertFalse(got.isEmpty, file)
            XCTAssertEqual(got, Array(try XCTUnwrap(c["greedy_ids"] as? [Int]).prefix(got.count)), "\(file) greedy")
        }
    }

    /// LoRA and projector tuning on the LLaVA-1.6 pair: a training row's image is tiled and packed
    /// as at inference, and the first loss is the source checkpoint's in transformers (up to the
    /// pair's f16 weights).
    func testFinetuneOnTheLLaVA16Pair() throws {
        let next = CLITests.fixtures.appendingPathComponent("llava_next")
        let golden = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: next.appendingPathComponent("golden.json"))) as? [String: Any])
        let checkpoint = try XCTUnwrap((golden["checkpoints"] as? [String: [String: Any]])?["clip-llama"])
        let row = try XCTUnwrap((checkpoint["train_rows"] as? [[String: Any]])?.first)
        let data = home + "/row.jsonl"
        let record: [String: Any] = ["input_ids": row["input_ids"]!, "labels": row["labels"]!,
                                     "image": next.appendingPathComponent("images/" + (row["image"] as! String)).path]
        try JSONSerialization.data(withJSONObject: record).write(to: URL(fileURLWithPath: data))
        let pair = CLITests.fixtures.appendingPathComponent("gguf_pair_next")
        let r = try vlmsh(["finetune", "--model", pair.appendingPathComponent("tiny-next-text-f16.gguf").path,
                           "--mmproj", pair.appendingPathComponent("tiny-next-mmproj-f16.gguf").path, "--data", data,
                           "--mode", "lora+projector", "--lr", "1e-2", "--lora-dropout", "0", "--steps", "4", "--out", home + "/next", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let losses = r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .compactMap { $0["loss"] as? Double }
        XCTAssertEqual(losses.count, 4, r.stdout)
        let expected = try XCTUnwrap(row["loss"] as? Double)
        XCTAssertEqual(try XCTUnwrap(losses.first), expected, accuracy: 1e-2 * expected)
        XCTAssertLessThan(try XCTUnwrap(losses.last), try XCTUnwrap(losses.first), "\(losses)")
    }

    func testREPLLoadWithMMProjAndAStoreName() throws {
        let c = try golden(0)
        let greedy = try XCTUnwrap(c["greedy_ids"] as? [Int])
        let script = home + "/pair.vlm"
        try """
            /load \(Self.text) --mmproj \(Self.mmproj)
            /set temperature 0
            /set max_tokens 16
            /image \(try image(c))
            \(try question(c))
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try json(try vlmsh(["run", script, "--json"]))
        XCTAssertEqual((r["errors"] as? [String]) ?? ["?"], [])
        let reply = try XCTUnwrap((r["replies"] as? [String])?.first)
        XCTAssertFalse(reply.isEmpty)
        // The same reply through the store name of the pair: a folder whose mmproj.json names both files.
        let entry = home + "/models/tiny-llava"
        try FileManager.default.createDirectory(atPath: entry, withIntermediateDirectories: true)
        try "{\"model\": \"\(Self.text)\", \"mmproj\": \"\(Self.mmproj)\"}\n".write(toFile: entry + "/mmproj.json", atomically: true, encoding: .utf8)
        try String(decoding: try Data(contentsOf: URL(fileURLWithPath: script)), as: UTF8.self)
            .replacingOccurrences(of: "/load \(Self.text) --mmproj \(Self.mmproj)", with: "/load tiny-llava")
            .write(toFile: script, atomically: true, encoding: .utf8)
        let byName = try json(try vlmsh(["run", script, "--json"]))
        XCTAssertEqual((byName["errors"] as? [String]) ?? ["?"], [])
        XCTAssertEqual((byName["replies"] as? [String])?.first, reply)
        let gen = try json(try vlmsh(["generate", "--model", "tiny-llava", "--prompt", try question(c), "--image", try image(c),
                                      "--temperature", "0", "--max-tokens", "16", "--json"]))
        let got = try XCTUnwrap(gen["ids"] as? [Int])
        XCTAssertEqual(got, Array(greedy.prefix(got.count)))
        // A stored session of the pair replays with the pair.
        let session = try XCTUnwrap(r["session"] as? Int)
        let replay = try json(try vlmsh(["replay", String(session), "--check", "--json"]))
        XCTAssertEqual((replay["turns"] as? [[String: Any]])?.map { $0["identical"] as? Bool ?? false }, [true])
    }

    func testHostileMMProjIsOneLineAndExitOne() throws {
        let hostile = Self.folder.appendingPathComponent("hostile")
        for (file, fragment) in ["huge-image-size.gguf": "clip.vision.image_size", "missing-tensor.gguf": "missing weight",
                                 "llava16.gguf": "missing weight 'model.image_newline'"] {
            let r = try vlmsh(["generate", "--model", Self.text, "--mmproj", hostile.appendingPathComponent(file).path,
                               "--prompt", "hi", "--max-tokens", "1"])
            XCTAssertEqual(r.status, 1, file)
            let lines = r.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(file): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(fragment), "\(file): \(r.stderr)")
        }
        let missing = try vlmsh(["generate", "--model", Self.text, "--mmproj", home + "/none.gguf", "--prompt", "hi"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("no such file"), missing.stderr)
    }

    func testFinetuneOnThePairChangesTheLoss() throws {
        let out = home + "/run"
        let r = try CLITests.vlmsh(["finetune", "--model", Self.text, "--mmproj", Self.mmproj,
                                    "--data", CLITests.fixtures.appendingPathComponent("train/examples.jsonl").path,
                                    "--mode", "lora+projector", "--lr", "1e-2", "--steps", "4", "--out", out, "--json"],
                                   home: home, timeout: 600)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let losses = lines.compactMap { $0["loss"] as? Double }
        XCTAssertEqual(losses.count, 4, r.stdout)
        XCTAssertTrue(losses.allSatisfy(\.isFinite))
        XCTAssertNotEqual(losses.first, losses.last, "the loss moves")
        XCTAssertLessThan(try XCTUnwrap(losses.last), try XCTUnwrap(losses.first), "\(losses)")
        for f in ["adapter_model.safetensors", "multi_modal_projector.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        // The trained LoRA and projector apply to the pair and change what it says about an image.
        let c = try golden(0)
        let args = ["logits", "--model", Self.text, "--mmproj", Self.mmproj, "--prompt", try question(c), "--image", try image(c),
                    "--top-k", "1", "--json"]
        let before = try json(try vlmsh(args))
        let after = try json(try vlmsh(args + ["--adapter", out]))
        let top = { (j: [String: Any]) in ((j["top"] as? [[Any]])?.first?[1] as? Double) ?? .nan }
        XCTAssertEqual(top(before), (c["last_logits"] as? [Double])?.max() ?? 0, accuracy: 1e-3)
        XCTAssertNotEqual(top(before), top(after), accuracy: 1e-4)
    }
}

import Foundation
import XCTest

/// A LLaVA-NeXT folder from the command line: `generate --image` gives transformers' greedy ids,
/// and a fine-tune's first loss is transformers' loss of the row, then falls.
final class LlavaNextCLITests: XCTestCase {
    static let data = CLITests.fixtures.path + "/llava_next"
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: LlavaNextCLITests.data + "/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()
    var home = ""

    override func setUpWithError() throws { home = try scratchDirectory("vlmsh-llava-next") }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result { try CLITests.vlmsh(arguments, home: home, timeout: 300) }

    func checkpoint(_ name: String) -> [String: Any] {
        (Self.golden["checkpoints"] as! [String: Any])[name] as! [String: Any]
    }

    func json(_ r: CLITests.Result, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout, file: file, line: line)
    }

    func testGenerateWithAnImageGivesTransformersGreedyIDs() throws {
        for name in ["clip-llama", "siglip-mistral"] {
            for c in checkpoint(name)["cases"] as! [[String: Any]] {
                let ids = (c["prompt_ids"] as! [Int]).map(String.init).joined(separator: ",")
                let j = try json(vlmsh(["generate", "--model", Self.data + "/" + name, "--image", Self.data + "/images/" + (c["image"] as! String),
                                        "--ids", ids, "--temperature", "0", "--max-tokens", "16", "--json"]))
                XCTAssertEqual(j["ids"] as? [Int], c["greedy_ids"] as? [Int], "\(name) \(c["image"]!)")
            }
        }
        // Through the chat template, as a user types it.
        let r = try vlmsh(["generate", "--model", Self.data + "/clip-llama", "--image", Self.data + "/images/square.png",
                           "--prompt", "What is in the image?", "--temperature", "0", "--max-tokens", "4", "--json"])
        let j = try json(r)
        XCTAssertEqual((j["ids"] as? [Int])?.count, 4)
    }

    /// LLaVA-NeXT's train.py flags that describe the model are checked against the folder.
    func testLLaVANeXTModelFlagsAreCheckedAgainstTheFolder() throws {
        let row = (checkpoint("clip-llama")["train_rows"] as! [[String: Any]])[1]
        let data = home + "/row.jsonl"
        let record: [String: Any] = ["input_ids": row["input_ids"]!, "labels": row["labels"]!,
                                     "image": Self.data + "/images/" + (row["image"] as! String)]
        try JSONSerialization.data(withJSONObject: record).write(to: URL(fileURLWithPath: data))
        let base = ["finetune", "--model", Self.data + "/clip-llama", "--data", data, "--mode", "lora", "--steps", "1"]
        let ok = try vlmsh(base + ["--out", home + "/a", "--image_aspect_ratio", "anyres", "--mm_patch_merge_type", "spatial_unpad"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
        let flat = try vlmsh(base + ["--out", home + "/b", "--mm_patch_merge_type", "flat"])
        XCTAssertNotEqual(flat.status, 0)
        XCTAssertTrue(flat.stderr.contains("spatial_unpad"), flat.stderr)
        let pad = try vlmsh(base + ["--out", home + "/c", "--image_aspect_ratio", "pad"])
        XCTAssertNotEqual(pad.status, 0)
        XCTAssertTrue(pad.stderr.contains("anyres"), pad.stderr)
    }

    func testLoRAFineTuneStartsAtTransformersLossAndLowersIt() throws {
        for (name, mode) in [("clip-llama", "vision+lora+projector"), ("siglip-mistral", "lora")] {
            let row = (checkpoint(name)["train_rows"] as! [[String: Any]])[0]
            let data = home + "/\(name).jsonl"
            let record: [String: Any] = ["input_ids": row["input_ids"]!, "labels": row["labels"]!,
                                         "image": Self.data + "/images/" + (row["image"] as! String)]
            try JSONSerialization.data(withJSONObject: record).write(to: URL(fileURLWithPath: data))
            let out = home + "/run-\(name)"
            let r = try vlmsh(["finetune", "--model", Self.data + "/" + name, "--data", data, "--mode", mode, "--steps", "4",
                               "--lr", "1e-2", "--lora-dropout", "0", "--out", out, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let summary = try XCTUnwrap(r.stdout.split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
            }.compactMap { $0["summary"] as? [String: Any] }.first, r.stdout)
            let losses = try XCTUnwrap(summary["losses"] as? [Double])
            let expected = try XCTUnwrap(row["loss"] as? Double)
            XCTAssertEqual(losses.count, 4)
            XCTAssertEqual(losses[0], expected, accuracy: 1e-4 * expected, "\(name): first loss is transformers'")
            XCTAssertLessThan(losses[3], losses[0] - 0.05, "\(name) \(mode): \(losses)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/adapter_model.safetensors"), name)
            // The trained adapter applies at load and changes the reply's logits.
            let ids = (row["input_ids"] as! [Int]).prefix { $0 != 2 }.map(String.init)
            func top(_ extra: [String]) throws -> [Int: Double] {
                let j = try json(vlmsh(["logits", "--model", Self.data + "/" + name, "--image", Self.data + "/images/" + (row["image"] as! String),
                                        "--ids", ids.joined(separator: ","), "--top-k", "701", "--json"] + extra))
                let top = try XCTUnwrap(j["top"] as? [[Any]])
                return Dictionary(uniqueKeysWithValues: top.map { ($0[0] as! Int, $0[1] as! Double) })
            }
            let base = try top([]), adapted = try top(["--adapter", out])
            XCTAssertGreaterThan(base.keys.map { abs(adapted[$0]! - base[$0]!) }.max()!, 1e-3, name)
        }
    }
}

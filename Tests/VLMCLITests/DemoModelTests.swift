import Foundation
import VLMFormats
import XCTest

/// sessions/build-demo.vlm's recipe on the real SmolLM2, in miniature, as a user runs it: a new
/// LLaVA folder around the GGUF (`init-llava`), the tower trained from scratch toward SmolLM2's
/// word embeddings (`--objective image-token-embeddings --mode vision+projector`), stage 2
/// continuing from it (`lora --adapter-init`, and the other modes that can follow it), and
/// `merge` into a composed folder that loads on its own.
final class DemoModelTests: XCTestCase {

    var home = ""
    var work = ""

    override func setUpWithError() throws {
        home = try scratchHomeWithDefaultModel("vlmsh-demo-home")
        work = try scratchDirectory("vlmsh-demo")
    }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result {
        try CLITests.vlmsh(arguments, home: home, timeout: 600)
    }

    @discardableResult
    func ok(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let r = try vlmsh(arguments)
        XCTAssertEqual(r.status, 0, "vlmsh \(arguments.joined(separator: " ")): \(r.stderr)", file: file, line: line)
        return r.stdout
    }

    func tensors(_ path: String) throws -> [String: [Float]] {
        let f = try SafetensorsFile(path: path)
        var out: [String: [Float]] = [:]
        for name in f.weightNames { out[name] = try f.floats(name).array }
        return out
    }

    func testInitTrainTwoStagesAndMergeIntoAComposedFolder() throws {
        let data = work + "/data", initial = work + "/init", stage1 = work + "/stage1", stage2 = work + "/stage2", merged = work + "/demo"
        try ok(["make-demo-data", "--out", data, "--train", "4", "--validation", "0", "--test", "2", "--multi-turn", "--image-size", "48"])
        let made = try ok(["init-llava", "--out", initial, "--vision-hidden", "32", "--vision-layers", "2", "--vision-heads", "2",
                           "--vision-intermediate", "64", "--image-size", "48", "--patch-size", "16"])
        XCTAssertTrue(made.contains("9 image tokens"), made)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: initial + "/config.json"))) as! [String: Any]
        XCTAssertEqual(config["text_model"] as? String, "smollm2")
        XCTAssertEqual(config["image_token_index"] as? Int, 49152)
        // A second init into the same folder is refused.
        let again = try vlmsh(["init-llava", "--out", initial])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("already exists"), again.stderr)

        // Stage 1: the tower and the projector toward the records' image_token_texts; the tower
        // file holds every tensor, trained ones changed.
        let s1 = try ok(["finetune", "--model", initial, "--data", data + "/train.json", "--objective", "image-token-embeddings",
                         "--mode", "vision+projector", "--out", stage1, "--steps", "3", "--batch-size", "2", "--lr", "1e-3", "--json"])
        let losses = try XCTUnwrap(s1.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["summary"] as? [String: Any]
        }.first?["losses"] as? [Double])
        XCTAssertEqual(losses.count, 3)
        // A mean squared distance per element (a next-token loss would start near ln 49152 ≈ 10.8).
        XCTAssertTrue(losses.allSatisfy { $0.isFinite && $0 > 0 && $0 < 1 }, "\(losses)")
        let before = try tensors(initial + "/model.safetensors"), tower1 = try tensors(stage1 + "/vision_tower.safetensors")
        XCTAssertEqual(Set(tower1.keys), Set(before.keys.filter { $0.hasPrefix("vision_tower.") }))
        XCTAssertNotEqual(tower1["vision_tower.vision_model.embeddings.patch_embedding.weight"],
                          before["vision_tower.vision_model.embeddings.patch_embedding.weight"])
        XCTAssertEqual(tower1["vision_tower.vision_model.post_layernorm.weight"], before["vision_tower.vision_model.post_layernorm.weight"],
                       "the post-norm is not on LLaVA's path and does not train")
        XCTAssertFalse(FileManager.default.fileExists(atPath: stage1 + "/adapter_config.json"))

        // Stage 2 adds a LoRA over stage 1's frozen tower and projector, which its folder carries.
        let s2 = try ok(["finetune", "--model", initial, "--data", data + "/train.json", "--mode", "lora",
                         "--adapter-init", stage1, "--out", stage2, "--steps", "1", "--batch-size", "2", "--lr", "1e-3", "--json"])
        XCTAssertTrue(s2.contains("\"summary\""), s2)
        for file in ["adapter_config.json", "adapter_model.safetensors", "vision_tower.safetensors", "multi_modal_projector.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: stage2 + "/" + file), file)
        }
        XCTAssertEqual(try tensors(stage2 + "/vision_tower.safetensors"), tower1)
        XCTAssertEqual(try tensors(stage2 + "/multi_modal_projector.safetensors"), try tensors(stage1 + "/multi_modal_projector.safetensors"))

        // Or everything trains on from stage 1.
        let everything = work + "/stage2-everything"
        try ok(["finetune", "--model", initial, "--data", data + "/train.json", "--mode", "vision+lora+projector",
                "--adapter-init", stage1, "--out", everything, "--steps", "1", "--batch-size", "2", "--lr", "1e-3", "--json"])
        XCTAssertNotEqual(try tensors(everything + "/vision_tower.safetensors"), tower1)

        // Stage 2 with the tower frozen: its folder still carries stage 1's tower, so it is
        // complete over the init folder.
        let frozenTower = work + "/stage2-frozen-tower"
        try ok(["finetune", "--model", initial, "--data", data + "/train.json", "--mode", "lora+projector",
                "--adapter-init", stage1, "--out", frozenTower, "--steps", "1", "--batch-size", "2", "--lr", "1e-3", "--json"])
        XCTAssertEqual(try tensors(frozenTower + "/vision_tower.safetensors"), tower1)
        XCTAssertNotEqual(try tensors(frozenTower + "/multi_modal_projector.safetensors"), try tensors(stage1 + "/multi_modal_projector.safetensors"))

        // Merge: the composed folder gets stage 2's tower and projector, and keeps its LoRA as files.
        let m = try ok(["merge", "--model", initial, "--adapter", stage2, "--out", merged, "--json"])
        let report = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(m.utf8)) as? [String: Any])
        XCTAssertEqual(report["kept_lora"] as? Bool, true)
        XCTAssertEqual(report["merged_weights"] as? Int, 0)
        let weights = try tensors(merged + "/model.safetensors"), tower2 = try tensors(stage2 + "/vision_tower.safetensors")
        for (name, value) in tower2 { XCTAssertEqual(weights[name], value, name) }
        let projector2 = try tensors(stage2 + "/multi_modal_projector.safetensors")
        for (name, value) in projector2 { XCTAssertEqual(weights[name], value, name) }
        XCTAssertEqual(try tensors(merged + "/adapter_model.safetensors"), try tensors(stage2 + "/adapter_model.safetensors"))
        // The kept LoRA's base is now the merged folder, not the init folder it trained on.
        let keptConfig = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: merged + "/adapter_config.json"))) as? [String: Any])
        XCTAssertEqual(keptConfig["base_model_name_or_path"] as? String, (merged as NSString).lastPathComponent)
        XCTAssertEqual(keptConfig["r"] as? Int, 8)

        // The merged folder alone scores and answers as the base with stage 2 applied.
        func rows(_ arguments: [String]) throws -> [[String: Any]] {
            let out = try ok(["eval", "--data", data + "/test.json", "--limit", "3", "--max-new-tokens", "6", "--no-store", "--json"] + arguments)
            return try XCTUnwrap((JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["per_row"] as? [[String: Any]])
        }
        let viaAdapter = try rows(["--model", initial, "--adapter", stage2]), viaFolder = try rows(["--model", merged])
        XCTAssertEqual(viaFolder.map { $0["generated"] as? String }, viaAdapter.map { $0["generated"] as? String })
        XCTAssertEqual(viaFolder.map { $0["loss"] as? Double }, viaAdapter.map { $0["loss"] as? Double })

        // A fine-tune of the merged folder continues its own LoRA; a mode without LoRA is refused.
        let refused = try vlmsh(["finetune", "--model", merged, "--data", data + "/train.json", "--mode", "projector", "--out", work + "/x", "--steps", "1"])
        XCTAssertEqual(refused.status, 1)
        XCTAssertTrue(refused.stderr.contains("carries a LoRA"), refused.stderr)
    }

    /// `--projector-std` sets the projector's initial spread (the tower's stays transformers').
    func testProjectorStd() throws {
        func std(_ values: [Float]) -> Double {
            let mean = values.reduce(0.0) { $0 + Double($1) } / Double(values.count)
            return (values.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(values.count)).squareRoot()
        }
        for (value, expected) in [(nil, 0.02), ("0.1", 0.1)] as [(String?, Double)] {
            let folder = work + "/std-\(value ?? "default")"
            try ok(["init-llava", "--out", folder, "--vision-hidden", "32", "--vision-layers", "1", "--vision-heads", "2",
                    "--vision-intermediate", "64", "--image-size", "32", "--patch-size", "16"] + (value.map { ["--projector-std", $0] } ?? []))
            let w = try tensors(folder + "/model.safetensors")
            XCTAssertEqual(std(w["multi_modal_projector.linear_2.weight"]!), expected, accuracy: expected * 0.05)
            XCTAssertEqual(std(w["vision_tower.vision_model.embeddings.patch_embedding.weight"]!), 0.02, accuracy: 0.002)
        }
        let bad = try vlmsh(["init-llava", "--out", work + "/std-bad", "--projector-std", "0"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("--projector-std"), bad.stderr)
    }

    /// A composed folder whose language model is not there: one line naming config.json.
    func testMissingTextModelIsOneLineNamingTheConfig() throws {
        let folder = work + "/orphan"
        try ok(["init-llava", "--out", folder, "--vision-hidden", "16", "--vision-layers", "1", "--vision-heads", "2",
                "--vision-intermediate", "32", "--image-size", "32", "--patch-size", "16"])
        let config = folder + "/config.json"
        let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "\"smollm2\"", with: "\"no-such-model\"")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        let r = try vlmsh(["generate", "--model", folder, "--prompt", "hi", "--max-tokens", "1"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains(config) && r.stderr.contains("no-such-model"), r.stderr)
    }

    /// A CLIP tower that keeps its class token (`--vision-feature-select full`) has one image token
    /// more, and trains toward records that name it first: the number of shapes, then a 6×6 grid
    /// of patches labelled by coverage. Labels for another number of tokens are refused by name.
    func testClassTokenTowerTrainsOnCountAndCoverageLabels() throws {
        let data = work + "/cover", wrong = work + "/cells", initial = work + "/init-full"
        try ok(["make-demo-data", "--out", data, "--train", "4", "--validation", "0", "--test", "0", "--kinds", "caption",
                "--layout", "free", "--image-size", "48", "--token-grid", "6", "--token-covered", "--count-token"])
        let records = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: data + "/train.json"))) as? [[String: Any]])
        let texts = try XCTUnwrap(records.first?["image_token_texts"] as? [String])
        XCTAssertEqual(texts.count, 37)
        XCTAssertTrue(["one", "two", "three", "four"].contains(texts[0]), "\(texts)")
        let made = try ok(["init-llava", "--out", initial, "--vision-hidden", "32", "--vision-layers", "1", "--vision-heads", "2",
                           "--vision-intermediate", "64", "--image-size", "48", "--patch-size", "8", "--vision-feature-select", "full"])
        XCTAssertTrue(made.contains("37 image tokens"), made)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: initial + "/config.json"))) as! [String: Any]
        XCTAssertEqual(config["vision_feature_select_strategy"] as? String, "full")
        try ok(["finetune", "--model", initial, "--data", data + "/train.json", "--objective", "image-token-embeddings",
                "--mode", "vision+projector", "--out", work + "/s1", "--steps", "2", "--batch-size", "2"])

        try ok(["make-demo-data", "--out", wrong, "--train", "2", "--validation", "0", "--test", "0", "--kinds", "caption", "--image-size", "48"])
        let refused = try vlmsh(["finetune", "--model", initial, "--data", wrong + "/train.json", "--objective", "image-token-embeddings",
                                 "--mode", "vision+projector", "--out", work + "/s1b", "--steps", "1", "--batch-size", "1"])
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.stderr.contains("image_token_texts"), refused.stderr)
        let bad = try vlmsh(["make-demo-data", "--out", work + "/bad", "--token-grid", "4"])
        XCTAssertEqual(bad.status, 64)
        XCTAssertTrue(bad.stderr.contains("--token-grid"), bad.stderr)
    }
}

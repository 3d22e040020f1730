import Foundation
import VLMStore
import VLMTensor
import XCTest
@testable import VLMCLI

/// LLaVA's training flags and launch scripts on `vlmsh finetune` (translated into vlmsh's options
/// by one table), and the loop chat → `export --format llava --out` → fine-tune on the demo model.
final class LlavaLaunchTests: XCTestCase {
    /// LLaVA v1.5's scripts/v1_5/finetune_task_lora.sh, as the repository has it.
    static let taskLoRAScript = #"""
        #!/bin/bash

        deepspeed llava/train/train_mem.py \
            --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 \
            --deepspeed ./scripts/zero3.json \
            --model_name_or_path liuhaotian/llava-v1.5-13b \
            --version v1 \
            --data_path ./playground/data/llava_v1_5_mix665k.json \
            --image_folder ./playground/data \
            --vision_tower openai/clip-vit-large-patch14-336 \
            --mm_projector_type mlp2x_gelu \
            --mm_vision_select_layer -2 \
            --mm_use_im_start_end False \
            --mm_use_im_patch_token False \
            --image_aspect_ratio pad \
            --group_by_modality_length True \
            --bf16 True \
            --output_dir ./checkpoints/llava-v1.5-13b-task-lora \
            --num_train_epochs 1 \
            --per_device_train_batch_size 16 \
            --per_device_eval_batch_size 4 \
            --gradient_accumulation_steps 1 \
            --evaluation_strategy "no" \
            --save_strategy "steps" \
            --save_steps 50000 \
            --save_total_limit 1 \
            --learning_rate 2e-4 \
            --weight_decay 0. \
            --warmup_ratio 0.03 \
            --lr_scheduler_type "cosine" \
            --logging_steps 1 \
            --tf32 True \
            --model_max_length 2048 \
            --gradient_checkpointing True \
            --dataloader_num_workers 4 \
            --lazy_preprocess True \
            --report_to wandb

        """#

    var work = ""

    override func setUpWithError() throws {
        work = NSTemporaryDirectory() + "vlmsh-llava-launch-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: work)
        // Parsing validates a command, and LLaVA's --bf16 True (vlmsh's --bf16) sets this process's products.
        Kernels.bf16Products = false
    }

    /// The value after `option` in `arguments` (nil when absent; "" for a flag without one).
    func value(_ option: String, in arguments: [String]) -> String? {
        guard let i = arguments.lastIndex(of: option) else { return nil }
        return i + 1 < arguments.count && !arguments[i + 1].hasPrefix("--") ? arguments[i + 1] : ""
    }

    func translate(_ arguments: [String]) throws -> [String] { try LlavaArguments.translate(["finetune"] + arguments) }

    /// The one line of ignored flags the translation passes on (`--llava-ignored=LIST`).
    func ignored(in arguments: [String]) -> String? {
        arguments.first { $0.hasPrefix("--llava-ignored=") }.map { String($0.dropFirst("--llava-ignored=".count)) }
    }

    func assertError(_ arguments: [String], mentions needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try translate(arguments), file: file, line: line) { error in
            for needle in needles { XCTAssertTrue("\(error)".contains(needle), "'\(needle)' not in: \(error)", file: file, line: line) }
        }
    }

    func testFlagsMapOntoVlmshOptionsInHfArgumentParserSpellings() throws {
        let out = try translate([
            "--lora_enable", "True", "--lora_r=128", "--lora_alpha", "256", "--lora_dropout", "0.05", "--mm_projector_lr", "2e-5",
            "--model_name_or_path", "vlmsh-demo", "--version", "chatml_direct", "--data_path", "d.json", "--image_folder", "imgs",
            "--output_dir", "o", "--num_train_epochs", "2", "--max_steps", "-1", "--per_device_train_batch_size", "4",
            "--gradient_accumulation_steps", "2", "--learning_rate", "2e-4", "--weight_decay", "0.", "--warmup_ratio", "0.03",
            "--lr_scheduler_type", "cosine", "--model_max_length", "2048", "--seed", "7", "--save_strategy", "steps",
            "--save_steps", "5", "--logging_steps", "1", "--optim", "adamw_torch", "--group_by_modality_length", "--bf16",
            "--deepspeed", "zero3.json", "--gradient_checkpointing", "true", "--tf32=1", "--freeze_mm_mlp_adapter", "0",
        ])
        let expected: [String: String] = [
            "--mode": "lora+projector", "--lora-r": "128", "--lora-alpha": "256", "--lora-dropout": "0.05", "--mm-projector-lr": "2e-5",
            "--model": "vlmsh-demo", "--template": "chatml", "--data": "d.json", "--image-folder": "imgs", "--out": "o",
            "--epochs": "2", "--batch-size": "4", "--grad-accum": "2", "--lr": "2e-4", "--weight-decay": "0.", "--warmup-ratio": "0.03",
            "--scheduler": "cosine", "--max-length": "2048", "--seed": "7", "--save-steps": "5", "--group-by-modality-length": "",
            "--gradient-checkpointing": "", "--bf16": "",
        ]
        for (option, v) in expected { XCTAssertEqual(value(option, in: out), v, option) }
        XCTAssertNil(value("--steps", in: out), "max_steps -1 leaves the epochs to decide")
        // The cluster settings in one line.
        XCTAssertEqual(ignored(in: out), "--deepspeed zero3.json, --tf32 1")
        XCTAssertFalse(out.contains { $0.hasPrefix("--") && $0.contains("_") && !$0.hasPrefix("--llava-") })

        // ArgumentParser takes the result, and the settings are LLaVA's.
        let command = try XCTUnwrap(try VLMCommand.parseAsRoot(out) as? FinetuneCommand)
        let settings = try command.options.settings()
        XCTAssertEqual(settings.mode, .loraProjector)
        XCTAssertEqual(settings.loraRank, 128)
        XCTAssertEqual(settings.loraAlpha, 256)
        XCTAssertEqual(settings.projectorLearningRate, 2e-5)
        XCTAssertEqual(settings.batchSize, 4)
        XCTAssertEqual(settings.gradientAccumulation, 2)
        XCTAssertEqual(settings.epochs, 2)
        XCTAssertEqual(settings.warmupRatio, 0.03)
        XCTAssertEqual(settings.maxLength, 2048)
        XCTAssertEqual(settings.seed, 7)
        XCTAssertTrue(settings.groupByModalityLength)
        let request = try command.options.request()
        XCTAssertEqual(request.imageFolder, "imgs")
        XCTAssertEqual(request.launch?.arguments.prefix(4), ["--lora_enable", "True", "--lora_r", "128"])
    }

    func testWhatTrainsFollowsTrainPy() throws {
        XCTAssertEqual(value("--mode", in: try translate(["--lora_enable", "--data_path", "d", "--output_dir", "o"])), "lora+projector")
        XCTAssertEqual(value("--mode", in: try translate(["--lora_enable=true", "--freeze_mm_mlp_adapter", "True"])), "lora")
        XCTAssertEqual(value("--mode", in: try translate(["--tune_mm_mlp_adapter", "True", "--data_path", "d"])), "projector")
        XCTAssertEqual(value("--mode", in: try translate(["--freeze_backbone", "True", "--data_path", "d"])), "projector")
        XCTAssertNil(value("--mode", in: try translate(["--data_path", "d"])), "no LLaVA flag about it: vlmsh's --mode")
        assertError(["--lora_enable", "False", "--data_path", "d"], mentions: ["full fine-tuning", "not supported by vlmsh"])
        assertError(["--tune_mm_mlp_adapter", "True", "--freeze_mm_mlp_adapter", "True"], mentions: ["nothing to train"])
        assertError(["--lora_enable", "maybe"], mentions: ["--lora_enable maybe", "expected a boolean"])
    }

    func testUnknownAndUnsupportedFlagsAreErrorsNamingThem() {
        assertError(["--data_path", "d", "--frobnicate_level", "3"], mentions: ["--frobnicate_level"])
        assertError(["--bits", "4"], mentions: ["--bits 4", "not supported by vlmsh", "QLoRA"])
        assertError(["--mm_use_im_start_end", "True"], mentions: ["--mm_use_im_start_end True", "not supported by vlmsh"])
        assertError(["--lr_scheduler_type", "polynomial"], mentions: ["polynomial", "not supported by vlmsh"])
        assertError(["--optim", "sgd"], mentions: ["--optim sgd", "not supported by vlmsh"])
        assertError(["--logging_steps", "10"], mentions: ["--logging_steps 10", "logs every step"])
        assertError(["--version", "mpt"], mentions: ["--version mpt", "not supported by vlmsh"])
        assertError(["--save_strategy", "epoch"], mentions: ["--save_strategy epoch", "not supported by vlmsh"])
        assertError(["--pretrain_mm_mlp_adapter", "x/mm_projector.bin"], mentions: ["mm_projector.bin", "safetensors"])
        assertError(["--data_path"], mentions: ["--data_path needs a value"])
    }

    func testLaterFlagsAndVlmshOptionsOverride() throws {
        let out = try translate(["--lora_r", "128", "--lora_r", "16", "--learning_rate", "1e-3", "--lr", "5e-4", "--data_path", "d",
                                 "--save_strategy", "no", "--save_steps", "10"])
        XCTAssertEqual(value("--lora-r", in: out), "16")
        XCTAssertEqual(out.filter { $0 == "--lr" }.count, 1)
        XCTAssertEqual(value("--lr", in: out), "5e-4")
        XCTAssertNil(value("--save-steps", in: out), "save_strategy no")
        // Native options are passed through as they were.
        XCTAssertEqual(try translate(["--data", "d", "--out", "o"]), ["finetune", "--data", "d", "--out", "o"])
    }

    func testLaunchScriptIsReadWithVariablesAndOverrides() throws {
        let script = work + "/finetune_task_lora.sh"
        try Self.taskLoRAScript.write(toFile: script, atomically: true, encoding: .utf8)
        let out = try translate(["--from-script", script, "--per_device_train_batch_size", "1", "--lora_r", "4"])
        XCTAssertEqual(value("--model", in: out), "liuhaotian/llava-v1.5-13b")
        XCTAssertEqual(value("--template", in: out), "llava-v1")
        XCTAssertEqual(value("--data", in: out), "./playground/data/llava_v1_5_mix665k.json")
        XCTAssertEqual(value("--batch-size", in: out), "1")
        XCTAssertEqual(value("--lora-r", in: out), "4")
        XCTAssertEqual(value("--lora-alpha", in: out), "256")
        XCTAssertEqual(value("--mode", in: out), "lora+projector")
        XCTAssertEqual(value("--scheduler", in: out), "cosine")
        XCTAssertEqual(value("--save-steps", in: out), "50000")
        XCTAssertEqual(ignored(in: out),
                       "--deepspeed ./scripts/zero3.json, --per_device_eval_batch_size 4, --evaluation_strategy no, "
                       + "--save_total_limit 1, --tf32 True, --dataloader_num_workers 4, "
                       + "--lazy_preprocess True, --report_to wandb")
        XCTAssertTrue(out.contains("--gradient-checkpointing"), "\(out)")
        XCTAssertTrue(out.contains("--bf16"), "LLaVA's --bf16 True is vlmsh's --bf16: \(out)")
        XCTAssertEqual(out.filter { $0 == "--llava-model-check" }.count, 4)
        let launch = try XCTUnwrap(value("--llava-launch", in: out))
        XCTAssertTrue(launch.contains("finetune_task_lora.sh"), launch)

        // Variables: assignments in the script expand; one never set is an error naming it,
        // unless the flag is given on the command line.
        let withVariables = work + "/vars.sh"
        try """
            #!/bin/bash
            # A comment line.
            MODEL_VERSION=vicuna-v1-3-7b
            export OUT="./checkpoints/llava-$MODEL_VERSION"
            torchrun --nproc_per_node 8 llava/train/train.py \\
                --lora_enable True \\
                --model_name_or_path ./checkpoints/${MODEL_VERSION} \\
                --data_path $DATA \\
                --output_dir $OUT   # where it goes
            """.write(toFile: withVariables, atomically: true, encoding: .utf8)
        assertError(["--from-script", withVariables], mentions: ["$DATA", "--data_path"])
        let resolved = try translate(["--from-script", withVariables, "--data_path", "d.json"])
        XCTAssertEqual(value("--model", in: resolved), "./checkpoints/vicuna-v1-3-7b")
        XCTAssertEqual(value("--out", in: resolved), "./checkpoints/llava-vicuna-v1-3-7b")
        XCTAssertEqual(value("--data", in: resolved), "d.json")
        XCTAssertEqual(value("--data", in: try translate(["--from-script", withVariables, "--data", "n.json"])), "n.json")

        try "echo nothing to see\n".write(toFile: work + "/none.sh", atomically: true, encoding: .utf8)
        assertError(["--from-script", work + "/none.sh"], mentions: ["no training command"])
        assertError(["--from-script", work + "/missing.sh"], mentions: ["missing.sh", "cannot read"])
    }

    // MARK: - End to end on the demo model

    var home = ""

    func vlmsh(_ arguments: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CLITests.Result {
        let r = try CLITests.vlmsh(arguments, home: home, timeout: 900)
        XCTAssertEqual(r.status, 0, "vlmsh \(arguments.joined(separator: " ")): \(r.stderr)", file: file, line: line)
        return r
    }

    func testTwoPictureChatExportsToAFolderThatFineTunesElsewhere() throws {
        home = try scratchHomeWithDefaultModel("vlmsh-llava-loop")
        try CLITests.installDemo(home: home)
        let shapes = CLITests.root.appendingPathComponent("sessions/data/shapes").path
        let pictures = try FileManager.default.contentsOfDirectory(atPath: shapes).filter { $0.hasSuffix(".png") }.sorted()
        XCTAssertGreaterThanOrEqual(pictures.count, 3)
        // A chat: two pictures on the first question, a third on the follow-up.
        let script = work + "/two-pictures.vlm"
        try """
            /load vlmsh-demo
            /set temperature 0
            /set max_tokens 6
            /image \(shapes)/\(pictures[0])
            /image \(shapes)/\(pictures[1])
            What colour is the star?
            /image \(shapes)/\(pictures[2])
            And in this one?
            """.write(toFile: script, atomically: true, encoding: .utf8)
        let chat = try JSONSerialization.jsonObject(with: Data(try vlmsh(["run", script, "--json"]).stdout.utf8)) as? [String: Any]
        let session = try XCTUnwrap(chat?["session"] as? Int)

        // Exported into a folder, then moved: the data must not point back at the originals.
        let exported = work + "/export"
        let said = try vlmsh(["export", String(session), "--format", "llava", "--out", exported]).stdout
        XCTAssertTrue(said.contains("1 conversation, 3 images"), said)
        let moved = NSTemporaryDirectory() + "vlmsh-moved-\(UUID().uuidString)"
        try FileManager.default.moveItem(atPath: exported, toPath: moved)
        defer { try? FileManager.default.removeItem(atPath: moved) }
        let data = moved + "/llava.json"
        let records = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: data))) as? [[String: Any]])
        XCTAssertEqual(records.count, 1)
        let images = try XCTUnwrap(records[0]["image"] as? [String])
        XCTAssertEqual(images.count, 3)
        for (image, picture) in zip(images, pictures) {
            XCTAssertTrue(image.hasPrefix("images/") && image.hasSuffix(".png") && image.count == "images/".count + 16 + 4, image)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: moved + "/" + image)),
                           try Data(contentsOf: URL(fileURLWithPath: shapes + "/" + picture)))
        }
        let turns = try XCTUnwrap(records[0]["conversations"] as? [[String: String]])
        XCTAssertEqual(turns.map { $0["from"] }, ["human", "gpt", "human", "gpt"])
        XCTAssertTrue(turns[0]["value"]!.hasPrefix("<image>\n<image>\nWhat colour is the star?"), turns[0]["value"]!)
        XCTAssertTrue(turns[2]["value"]!.hasPrefix("<image>\nAnd in this one?"), turns[2]["value"]!)

        // Fine-tuned from there as it is.
        let out = work + "/tuned"
        let tuned = try vlmsh(["finetune", "--model", "vlmsh-demo", "--data", data, "--mode", "lora+projector", "--steps", "2",
                               "--out", out, "--json"])
        let summary = try XCTUnwrap(tuned.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["summary"] as? [String: Any]
        }.first)
        XCTAssertEqual(summary["steps"] as? Int, 2)
        let losses = try XCTUnwrap(summary["losses"] as? [Double])
        XCTAssertTrue(losses.allSatisfy { $0.isFinite && $0 > 0 }, "\(losses)")
        print("exported two-picture chat fine-tunes: losses \(losses)")
        for path in [out + "/trainer_state.json", out + "/checkpoint-2/trainer_state.json"] {
            let state = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
            XCTAssertEqual(state["global_step"] as? Int, 2, path)
            let logged = try XCTUnwrap(state["log_history"] as? [[String: Any]]).compactMap { $0["loss"] as? Double }
            XCTAssertEqual(logged.count, losses.count, path)
            for (a, b) in zip(logged, losses) { XCTAssertEqual(a, b, accuracy: 1e-9 * b, path) }
        }

        // The same through a LLaVA launch script, scaled down by flags to the demo model and
        // this data; the run's record keeps the script and its arguments.
        let launch = work + "/finetune_task_lora.sh"
        try Self.taskLoRAScript.write(toFile: launch, atomically: true, encoding: .utf8)
        let viaScript = try vlmsh(["finetune", "--from-script", launch, "--model_name_or_path", "vlmsh-demo", "--version", "chatml_direct",
                                   "--data_path", data, "--image_folder", moved, "--output_dir", work + "/from-script",
                                   "--vision_tower", "vlmsh-demo", "--mm_vision_select_layer", "-1", "--image_aspect_ratio", "square",
                                   "--max_steps", "2", "--per_device_train_batch_size", "1", "--lora_r", "8", "--lora_alpha", "16",
                                   "--json"])
        XCTAssertTrue(viaScript.stderr.contains("ignored (cluster, precision and memory settings a CPU run has no use for): --deepspeed ./scripts/zero3.json, --per_device_eval_batch_size"),
                      viaScript.stderr)
        XCTAssertEqual(viaScript.stderr.components(separatedBy: "ignored (").count, 2, "one line")
        XCTAssertTrue(FileManager.default.fileExists(atPath: work + "/from-script/checkpoint-2/trainer_state.json"))
        let store = try Store(path: home + "/vlmsh.sqlite")
        let run = try XCTUnwrap(try store.runs().first { $0.outDir == work + "/from-script" })
        let args = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(run.args.utf8)) as? [String: Any])
        XCTAssertEqual(args["from_script"] as? String, launch)
        let arguments = try XCTUnwrap(args["llava_arguments"] as? [String])
        XCTAssertEqual(arguments.prefix(2), ["--lora_enable", "True"])
        XCTAssertEqual(arguments.suffix(2), ["--lora_alpha", "16"])
        XCTAssertEqual(args["lora_r"] as? Int, 8)
        XCTAssertEqual(args["mode"] as? String, "lora+projector")

        // A LLaVA flag that contradicts the model folder is an error saying what the folder has.
        let wrong = try CLITests.vlmsh(["finetune", "--from-script", launch, "--model_name_or_path", "vlmsh-demo", "--data_path", data,
                                        "--output_dir", work + "/wrong", "--max_steps", "1", "--version", "chatml_direct"], home: home, timeout: 300)
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.stderr.contains("--mm_vision_select_layer -2: the model folder has -1"), wrong.stderr)
    }
}

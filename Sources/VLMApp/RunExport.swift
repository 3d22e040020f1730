import Foundation
import VLMFormats
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

/// `vlmsh export-run`: a fine-tune written as a folder that trains on transformers + PEFT in one
/// process, under torchrun or under DeepSpeed, computing what `vlmsh finetune` computes. What
/// depends on vlmsh's own code is written out rather than re-derived in Python: every row as
/// vlmsh tokenizes it (chat template, label masking, images expanded to their feature
/// positions), the rows of every optimizer step (the seeded order, length grouping, epochs), and
/// the trainable weights at step 0 (vlmsh's LoRA init). `train.py` (RunExportScripts.swift)
/// does the rest as vlmsh's trainer does.
public enum RunExport {
    public enum Launcher: String, Sendable, CaseIterable {
        case torchrun, deepspeed
    }

    /// What the folder's launch is set up for.
    public struct Launch: Sendable {
        public var processes: Int
        public var launcher: Launcher
        public init(processes: Int, launcher: Launcher) { self.processes = processes; self.launcher = launcher }
    }

    public struct Summary: Sendable {
        public var out: String
        public var steps: Int
        public var rows: Int
        public var images: Int
        public var launch: Launch
        public var text: String {
            "\(out): \(steps) step\(steps == 1 ? "" : "s") over \(rows) row\(rows == 1 ? "" : "s") and \(images) image\(images == 1 ? "" : "s"); "
                + "\(out)/launch.sh runs it (\(launch.launcher == .deepspeed ? "deepspeed --num_gpus" : "torchrun --nproc_per_node") \(launch.processes); `launch.sh cpu`: one process)"
        }
    }

    /// The modes train.py reproduces.
    public static let modes: [FineTuneMode] = [.lora, .projector, .loraProjector]

    static let runFile = "run.json"
    static let rowsFile = "tokenized.jsonl"
    static let initFolder = "init"

    /// Writes the launch folder of `request` on `chat` (loaded from `modelPath`, a Hugging Face
    /// LLaVA folder transformers loads as `LlavaForConditionalGeneration`) into `out`.
    public static func write(chat: ChatModel, modelPath: String, request: FineTuneRequest, to out: String, launch: Launch,
                             store: Store, console: Console) throws -> Summary {
        try requireFolderOrAbsent(out)
        guard launch.processes >= 1 && launch.processes <= 4096 else { throw UsageError("--nproc-per-node must be between 1 and 4096") }
        guard request.resume == nil else { throw UsageError("export-run writes a run from its first step: leave out --resume") }
        let settings = request.settings
        guard modes.contains(settings.mode) else {
            throw UsageError("export-run writes --mode \(modes.map(\.rawValue).joined(separator: ", ")), not \(settings.mode.rawValue)")
        }
        guard settings.trainingObjective == .nextToken else { throw UsageError("export-run writes next-token runs, not --objective \(settings.trainingObjective.rawValue)") }
        guard (settings.optimizer ?? .adamw) == .adamw else { throw UsageError("export-run writes AdamW runs (--optim adamw_torch), not --optim \(settings.optimizer!.rawValue)") }
        guard request.evalData == nil else { throw UsageError("export-run does not carry --eval-data: evaluate the result with vlmsh eval") }
        let imageSize = try checkTransformersLlava(modelPath, chat: chat)

        let runner = FineTuneRunner(chat: chat, modelPath: modelPath, request: request, store: store, console: console)
        let (resolved, model, dataset) = try runner.prepare()
        guard !dataset.isLazy else {
            throw UsageError("\(request.data): more than \(TrainingDataset.eagerRowLimit) rows; export-run writes every row tokenized and reads files up to that size")
        }
        for problem in dataset.problems { console.line("skipped \(problem)") }
        let trainer = try Trainer(model: model, dataset: dataset, settings: resolved)
        let plan = trainer.plannedSteps()

        let fm = FileManager.default
        do { try fm.createDirectory(atPath: out, withIntermediateDirectories: true) } catch {
            throw UsageError("\(out): cannot create the folder (\(error.localizedDescription))")
        }
        // Images under their content names, as `export --format llava --out` writes them.
        var copied: [String: String] = [:]
        for path in dataset.examples.flatMap(\.imagePaths) where copied[path] == nil {
            guard fm.isReadableFile(atPath: path) else { throw UsageError("\(path): image missing") }
            copied[path] = try LLaVAFolderExport.copyImage(path, sha256: try ContentHash.hex(file: path), into: out)
        }
        var rows = "", records: [Any] = []
        for (index, example) in dataset.examples.enumerated() {
            let images = example.imagePaths.map { copied[$0]! }
            rows += try jsonText(["input_ids": example.inputIDs, "labels": example.labels, "images": images]) + "\n"
            guard var record = dataset.rawRow(of: index) else { continue }
            if !images.isEmpty { record["image"] = images.count == 1 ? images[0] as Any : images as Any }
            records.append(record)
        }
        try writeAtomically(Data(rows.utf8), to: out + "/" + rowsFile)
        try writeAtomically(try JSONSerialization.data(withJSONObject: records, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
                            to: out + "/" + LLaVAFolderExport.dataFileName)

        // Step 0's trainable weights: vlmsh's LoRA init (or --adapter-init's) and the projector.
        let initDirectory = out + "/" + initFolder
        try? fm.removeItem(atPath: initDirectory)
        try trainer.writeWeights(to: initDirectory, baseModel: modelPath)
        let projectorInit = initFolder + "/" + ProjectorFiles.hfFile
        let perDevice = perDeviceBatches(settings: resolved, processes: launch.processes)
        if launch.launcher == .deepspeed && perDevice == nil {
            throw UsageError("--launcher deepspeed: the \(resolved.batchSize * resolved.gradientAccumulation) rows of a step do not split into equal micro-batches over \(launch.processes) processes (make --grad-accum a multiple of --nproc-per-node)")
        }
        let image = chat.images
        var run: [String: Any] = [
            "format": 1,
            "model": modelPath,
            "mode": resolved.mode.rawValue,
            "data": rowsFile,
            "image_token_id": image?.tokenID ?? -1,
            // A blank image's size and positions (train.py runs the tower on every micro-batch under DeepSpeed).
            "image_size": imageSize, "image_feature_count": image?.featureCount ?? 0,
            "pad_id": trainer.padID,
            "seed": Int(resolved.seed),
            "batch_size": perDevice?.batchSize ?? resolved.batchSize,
            "steps_per_epoch": trainer.stepsPerEpoch,
            "max_grad_norm": Double(resolved.maxGradNorm),
            "gradient_checkpointing": resolved.checkpointsLayers,
            "optimizer": [
                "lr": Double(resolved.learningRate), "weight_decay": Double(resolved.weightDecay),
                "mm_projector_lr": resolved.projectorLearningRate.map { Double($0) as Any } ?? NSNull(),
                "mm_vision_tower_lr": resolved.visionTowerLearningRate.map { Double($0) as Any } ?? NSNull(),
                "betas": [0.9, 0.999], "eps": 1e-8,   // torch.optim.AdamW's, as vlmsh's
            ] as [String: Any],
            "schedule": ["kind": trainer.schedule.kind.rawValue, "warmup_steps": trainer.schedule.warmupSteps, "total_steps": trainer.schedule.totalSteps],
            "steps": plan.map { ["micro_batches": $0.microBatches, "epoch": $0.epoch] as [String: Any] },
            "settings": try JSONSerialization.jsonObject(with: JSONEncoder().encode(resolved)),
        ]
        run["lora_init"] = model.lora != nil ? initFolder as Any : NSNull()
        run["projector_init"] = fm.fileExists(atPath: out + "/" + projectorInit) ? projectorInit as Any : NSNull()
        run["save_steps"] = resolved.saveSteps.map { $0 as Any } ?? NSNull()
        try writeAtomically(try JSONSerialization.data(withJSONObject: run, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]),
                            to: out + "/" + runFile)

        try writeAtomically(Data(RunExportScripts.trainPy.utf8), to: out + "/train.py")
        try writeAtomically(Data(RunExportScripts.requirements.utf8), to: out + "/requirements.txt")
        for stage in [2, 3] {
            let path = out + "/ds_config_zero\(stage).json"
            if let perDevice {
                try writeAtomically(Data(RunExportScripts.deepSpeedConfig(stage: stage, microBatch: perDevice.batchSize, accumulation: perDevice.accumulation,
                                                                          processes: launch.processes, maxGradNorm: resolved.maxGradNorm).utf8), to: path)
            } else {
                try? fm.removeItem(atPath: path)
            }
        }
        let script = out + "/launch.sh"
        try writeAtomically(Data(RunExportScripts.launchScript(processes: launch.processes, launcher: launch.launcher).utf8), to: script)
        try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script)
        if perDevice == nil {
            console.line("no ds_config_zero*.json: a step's \(resolved.batchSize * resolved.gradientAccumulation) rows do not split into equal micro-batches over \(launch.processes) processes")
        }
        return Summary(out: out, steps: plan.count, rows: dataset.count, images: copied.count, launch: launch)
    }

    /// Each process's micro-batch size and count per step when a step's rows split evenly (what a
    /// DeepSpeed config states); nil when they do not.
    static func perDeviceBatches(settings: FineTuneSettings, processes: Int) -> (batchSize: Int, accumulation: Int)? {
        let rows = settings.batchSize * settings.gradientAccumulation
        guard rows % processes == 0 else { return nil }
        let perProcess = rows / processes
        let micro = perProcess % settings.batchSize == 0 ? settings.batchSize : perProcess
        return (micro, perProcess / micro)
    }

    /// train.py loads the model with transformers: a Hugging Face LLaVA folder (`model_type` llava).
    /// Returns its vision tower's image size.
    static func checkTransformersLlava(_ path: String, chat: ChatModel) throws -> Int {
        let configPath = path + "/config.json"
        let object = (try? SmallFile.readIfPresent(configPath)).flatMap { $0 }.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        guard chat is VisionLanguageModel, let object, object["model_type"] as? String == "llava" else {
            throw UsageError("\(path): export-run needs a Hugging Face LLaVA folder (config.json model_type \"llava\", transformers' LlavaForConditionalGeneration)")
        }
        guard let size = (object["vision_config"] as? [String: Any])?["image_size"] as? Int, size > 0, size <= 1 << 16 else {
            throw UsageError("\(configPath): vision_config.image_size is missing or out of range")
        }
        return size
    }

    static func jsonText(_ object: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }
}

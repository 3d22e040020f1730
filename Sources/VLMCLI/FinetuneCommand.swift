import ArgumentParser
import Foundation
import VLMApp
import VLMTensor
import VLMTraining

/// The fine-tune arguments, shared by `vlmsh finetune` and the REPL's `/finetune`.
struct FineTuneOptions: ParsableArguments {
    @Option(name: .long, help: "Training data: LLaVA JSON/JSONL conversations or pre-tokenized JSONL rows. Files of up to \(TrainingDataset.eagerRowLimit) rows are checked whole before training; larger ones are read lazily (an index of row offsets; the first \(TrainingDataset.lazyProbeRows) rows checked up front, a bad row met later skipped with a warning and counted in the summary; --group-by-modality-length then uses LLaVA's word-count lengths).") var data: String
    @Option(name: .long, help: "What trains.") var mode: FineTuneMode = .lora
    @Option(name: .long, help: "What the loss compares (image-token-embeddings: image tokens against the summed embeddings of the data's image_token_texts).") var objective: TrainingObjective = .nextToken
    @Option(name: .long, help: "Output folder (checkpoints, final adapter, loss.svg).") var out: String
    @Option(name: .customLong("lora-r"), help: "LoRA rank.") var loraR = 8
    @Option(name: .long, help: "LoRA alpha (scale = alpha / r).") var loraAlpha: Float = 16
    @Option(name: .long, help: "LoRA dropout.") var loraDropout: Float = 0.05
    @Option(name: .long, help: "LoRA targets: all, a comma list (q_proj,v_proj) or a regular expression.") var loraTargets = "all"
    @Option(name: .long, help: "Start from this adapter folder: its LoRA instead of PEFT's init, its projector and vision tower over the model's.") var adapterInit: String?
    @Option(name: .long, help: "Optimizer steps (default: one epoch).") var steps: Int?
    @Option(name: .long, help: "Epochs (when --steps is not given).") var epochs: Double?
    @Option(name: .long, help: "Examples per micro-batch.") var batchSize = 1
    @Option(name: .long, help: "Micro-batches per optimizer step.") var gradAccum = 1
    @Option(name: .long, help: "Learning rate.") var lr: Float = 2e-4
    @Option(name: .long, help: "Learning rate of the projector's parameters (LLaVA's mm_projector_lr).") var mmProjectorLr: Float?
    @Option(name: .long, help: "Learning rate of the vision tower's parameters (LLaVA-NeXT's mm_vision_tower_lr).") var mmVisionTowerLr: Float?
    @Option(name: .long, help: "AdamW weight decay (not on biases and norms).") var weightDecay: Float = 0
    @Option(name: .long, help: "Optimizer, by the HF Trainer's names: adamw_torch (Float32 moments) or adamw_bnb_8bit (bitsandbytes' blockwise 8-bit moments, about a quarter of the memory; tensors under 4096 elements and embeddings keep Float32). adamw_hf, adamw_torch_fused, adamw_8bit and paged_adamw_8bit are read as these.") var optim: OptimizerKind = .adamw
    @Option(name: .long, help: "Learning-rate schedule.") var scheduler: LearningRateSchedule.Kind = .cosine
    @Option(name: .long, help: "Warmup steps.") var warmupSteps: Int?
    @Option(name: .long, help: "Warmup as a fraction of all steps.") var warmupRatio: Double?
    @Option(name: .long, help: "Gradient clipping norm; 0 turns clipping off.") var maxGradNorm: Float = 1
    @Option(name: .long, help: "Truncate sequences to this many tokens.") var maxLength: Int?
    @Option(name: .long, help: "Seed of data order, LoRA init and dropout.") var seed: UInt64 = 42
    @Option(name: .long, help: "Write a checkpoint every N steps.") var saveSteps: Int?
    @Option(name: .long, help: "Held-out data for evaluation loss.") var evalData: String?
    @Option(name: .long, help: "Evaluate every N steps (and at the end).") var evalSteps: Int?
    @Option(name: .long, help: "Folder image paths are relative to (default: the data file's folder).") var imageFolder: String?
    @Flag(name: .long, help: "LLaVA's --group_by_modality_length sampler.") var groupByModalityLength = false
    @Flag(name: .long, help: "Skip bad data rows (reported) instead of stopping.") var skipBadRows = false
    @Flag(name: .long, help: "Keep only each decoder layer's input in the forward pass and recompute the layer in the backward pass (the HF Trainer's gradient_checkpointing): far less memory for longer sequences and bigger models, about a third more time per step.") var gradientCheckpointing = false
    @Option(name: .long, help: "Continue from a checkpoint folder of an earlier run.") var resume: String?
    @Option(name: .customLong("from-script"), help: "Read the training command (deepspeed/python/torchrun … train.py --flags) of one of LLaVA's launch scripts and run it with LLaVA's flags mapped onto these options; flags on the command line override the script's. LLaVA's flag names (--lora_enable True, --data_path, --output_dir, …) are also accepted directly.") var fromScript: String?
    // What the LLaVA flags' translation (LlavaArguments) passes on.
    @Option(name: .customLong("llava-ignored"), help: .hidden) var llavaIgnored: String?
    @Option(name: .customLong("llava-model-check"), help: .hidden) var llavaModelChecks: [String] = []
    @Option(name: .customLong("llava-launch"), help: .hidden) var llavaLaunch: String?

    func settings() throws -> FineTuneSettings {
        var s = FineTuneSettings()
        guard loraR > 0, batchSize > 0, gradAccum > 0, lr > 0 else { throw UsageError("--lora-r, --batch-size, --grad-accum and --lr must be positive") }
        if let steps, steps < 1 { throw UsageError("--steps must be ≥ 1") }
        if let saveSteps, saveSteps < 1 { throw UsageError("--save-steps must be ≥ 1") }
        s.mode = mode; s.objective = objective == .nextToken ? nil : objective; s.loraRank = loraR; s.loraAlpha = loraAlpha; s.loraDropout = loraDropout
        s.loraTargets = try LoRATargets(argument: loraTargets); s.adapterInit = adapterInit
        s.steps = steps; s.epochs = epochs; s.batchSize = batchSize; s.gradientAccumulation = gradAccum
        s.learningRate = lr; s.projectorLearningRate = mmProjectorLr
        s.visionTowerLearningRate = mmVisionTowerLr; s.weightDecay = weightDecay; s.scheduler = scheduler
        s.warmupSteps = warmupSteps; s.warmupRatio = warmupRatio; s.maxGradNorm = maxGradNorm; s.maxLength = maxLength
        s.seed = seed; s.saveSteps = saveSteps; s.groupByModalityLength = groupByModalityLength
        s.optimizer = optim == .adamw ? nil : optim
        s.gradientCheckpointing = gradientCheckpointing ? true : nil
        return s
    }

    /// The run these options ask for.
    func request() throws -> FineTuneRequest {
        if fromScript != nil { throw UsageError("\(LlavaArguments.fromScriptOption) is read by `vlmsh finetune` on the command line") }
        let launch = try llavaLaunch.map { try JSONDecoder().decode(FineTuneRequest.LaunchRecord.self, from: Data($0.utf8)) }
        return FineTuneRequest(data: data, out: out, settings: try settings(), resume: resume, evalData: evalData, evalSteps: evalSteps,
                               imageFolder: imageFolder, skipBadRows: skipBadRows, launch: launch)
    }
}

struct FinetuneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "finetune", abstract: "LoRA / projector fine-tuning with the LLaVA trainer's semantics.")
    @OptionGroup var model: ModelOptions
    @OptionGroup var options: FineTuneOptions
    @Flag(name: .long, help: "Print one JSON object per optimizer step and a final summary.") var json = false

    func validate() throws {
        try model.rejectAdapter("finetune starts from an adapter folder with --adapter-init DIR")
    }

    func run() async throws {
        let request = try options.request()
        if let ignored = options.llavaIgnored {
            FileHandle.standardError.write(Data("ignored (cluster, precision and memory settings a CPU run has no use for): \(ignored)\n".utf8))
        }
        let path = URL(fileURLWithPath: try model.path()).standardizedFileURL.path
        let chat = try ProgressBar.run("loading \(URL(fileURLWithPath: path).lastPathComponent)", enabled: !json && ProgressBar.stderrIsTerminal) { _ in
            try loadChatModel(path: path, mmproj: try model.mmprojPath(), template: model.template)
        }
        try LlavaModelCheck.verify(options.llavaModelChecks, against: chat)
        Interrupt.install()
        let runner = FineTuneRunner(chat: chat, modelPath: path, request: request, store: try openStore(),
                                    console: json ? JSONLinesConsole() : TerminalConsole())
        let summary = try runner.run(shouldStop: { Interrupt.take() })
        guard json else { return print(summary.text) }
        var object: [String: Any] = ["run": Int(summary.run), "status": summary.status.rawValue, "steps": summary.steps,
                                     "out": summary.outDir, "seconds": summary.seconds, "losses": summary.losses]
        if let loss = summary.finalLoss { object["final_loss"] = loss }
        if let loss = summary.evalLoss { object["eval_loss"] = loss }
        if summary.skippedRows > 0 { object["skipped_rows"] = summary.skippedRows }
        object["optimizer_state_bytes"] = summary.optimizerStateBytes
        try printJSON(["summary": object])
    }
}

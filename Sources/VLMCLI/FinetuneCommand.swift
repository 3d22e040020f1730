import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

/// The fine-tune arguments, shared by `vlmsh finetune` and the REPL's `/finetune`.
struct FineTuneOptions: ParsableArguments {
    @Option(name: .long, help: "Training data: LLaVA JSON/JSONL conversations or pre-tokenized JSONL rows.") var data: String
    @Option(name: .long, help: "What trains: \(FineTuneMode.allCases.map(\.rawValue).joined(separator: ", ")).") var mode: String = "lora"
    @Option(name: .long, help: "What the loss compares: \(TrainingObjective.allCases.map(\.rawValue).joined(separator: ", ")) (image tokens against the summed embeddings of the data's image_token_texts).") var objective: String = TrainingObjective.nextToken.rawValue
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
    @Option(name: .long, help: "constant, linear or cosine.") var scheduler = "cosine"
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
    @Option(name: .long, help: "Continue from a checkpoint folder of an earlier run.") var resume: String?

    func settings() throws -> FineTuneSettings {
        var s = FineTuneSettings()
        guard let m = FineTuneMode(rawValue: mode) else {
            throw UsageError("--mode must be one of \(FineTuneMode.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let o = TrainingObjective(rawValue: objective) else {
            throw UsageError("--objective must be one of \(TrainingObjective.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let kind = LearningRateSchedule.Kind(rawValue: scheduler) else { throw UsageError("--scheduler must be constant, linear or cosine") }
        guard loraR > 0, batchSize > 0, gradAccum > 0, lr > 0 else { throw UsageError("--lora-r, --batch-size, --grad-accum and --lr must be positive") }
        if let steps, steps < 1 { throw UsageError("--steps must be ≥ 1") }
        if let saveSteps, saveSteps < 1 { throw UsageError("--save-steps must be ≥ 1") }
        s.mode = m; s.objective = o == .nextToken ? nil : o; s.loraRank = loraR; s.loraAlpha = loraAlpha; s.loraDropout = loraDropout
        s.loraTargets = try LoRATargets(argument: loraTargets); s.adapterInit = adapterInit
        s.steps = steps; s.epochs = epochs; s.batchSize = batchSize; s.gradientAccumulation = gradAccum
        s.learningRate = lr; s.projectorLearningRate = mmProjectorLr
        s.visionTowerLearningRate = mmVisionTowerLr; s.weightDecay = weightDecay; s.scheduler = kind
        s.warmupSteps = warmupSteps; s.warmupRatio = warmupRatio; s.maxGradNorm = maxGradNorm; s.maxLength = maxLength
        s.seed = seed; s.saveSteps = saveSteps; s.groupByModalityLength = groupByModalityLength
        return s
    }
}

struct FinetuneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "finetune", abstract: "LoRA / projector fine-tuning with the LLaVA trainer's semantics.")
    @OptionGroup var model: ModelOptions
    @OptionGroup var options: FineTuneOptions
    @Flag(name: .long, help: "Print one JSON object per optimizer step and a final summary.") var json = false

    func run() async throws {
        let path = URL(fileURLWithPath: try ModelStore.resolve(model.model)).standardizedFileURL.path
        let chat = try ProgressBar.run("loading \(URL(fileURLWithPath: path).lastPathComponent)", enabled: !json && ProgressBar.stderrIsTerminal) { _ in
            try loadChatModel(path: path, template: model.template)
        }
        Interrupt.install()
        let runner = FineTuneRunner(chat: chat, modelPath: path, options: options, store: try openStore(),
                                    output: json ? .json : (ProgressBar.stderrIsTerminal ? .interactive : .lines))
        let summary = try runner.run(shouldStop: { Interrupt.take() })
        if !json { print(summary.text) }
    }
}

/// One fine-tuning run end to end: data, model, loop, checkpoints, store rows, output.
final class FineTuneRunner {
    enum Output { case json, interactive, lines, quiet }

    struct Summary {
        var run: Int64
        var status: RunStatus
        var steps: Int
        var finalLoss: Double?
        var evalLoss: Double?
        var outDir: String
        var seconds: Double
        var text: String {
            var s = "run \(run) \(status.rawValue): \(steps) steps"
            if let finalLoss { s += String(format: ", loss %.4f", finalLoss) }
            if let evalLoss { s += String(format: ", eval loss %.4f", evalLoss) }
            return s + String(format: " in %.1fs; adapter in %@", seconds, outDir)
        }
    }

    let chat: ChatModel
    let modelPath: String
    let options: FineTuneOptions
    let store: Store
    let output: Output
    var session: Int64?
    /// Where lines go in `.lines`/`.interactive` mode (the REPL's console, or stdout).
    var printLine: (String) -> Void = { line in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

    init(chat: ChatModel, modelPath: String, options: FineTuneOptions, store: Store, output: Output) {
        self.chat = chat; self.modelPath = modelPath; self.options = options; self.store = store; self.output = output
    }

    func run(shouldStop: () -> Bool) throws -> Summary {
        let started = Date()
        var settings = try options.settings()
        let resume = options.resume
        if let resume {
            // A resumed run continues with the checkpoint's settings; --steps may extend it.
            let recorded = try TrainingCheckpoint.settings(directory: resume)
            let steps = options.steps
            settings = recorded
            if let steps { settings.steps = steps }
        }

        // A model folder with its own LoRA is continued, not replaced.
        if resume == nil, settings.adapterInit == nil, hasOwnAdapter(modelPath) {
            guard settings.mode.trainsLoRA else {
                throw UsageError("\(modelPath)/adapter_config.json: this model carries a LoRA; train with a --mode that includes lora (it continues from it)")
            }
            settings.adapterInit = modelPath
            note("continuing the model's own LoRA (\(modelPath)/adapter_config.json)")
        }
        // Model: everything from the checkpoint or the init folder; otherwise a fresh LoRA with PEFT's init.
        var lora: LoRA?
        var initKind: AdapterKind?
        if let start = resume ?? settings.adapterInit {
            let applied = try AppliedAdapter.apply(directory: start, to: chat)
            initKind = applied.kind
            if settings.mode.trainsLoRA { lora = applied.lora }
            else if applied.lora != nil { throw UsageError("\(start): holds a LoRA, but --mode \(settings.mode.rawValue) does not train one") }
        }
        if settings.mode.trainsLoRA && lora == nil {
            var random = SeededRandom(seed: settings.seed)
            lora = try LoRA.create(settings.loraConfiguration, decoder: chat.decoder,
                                   layout: chat is VisionLanguageModel ? .llava : .text, random: &random)
        }
        let model = try TrainableModel(chat: chat, mode: settings.mode, lora: lora, objective: settings.trainingObjective,
                                       initKind: initKind)
        let image = chat.images.map { (tokenID: $0.tokenID, featureCount: $0.featureCount) }
        func load(_ path: String) throws -> TrainingDataset {
            try TrainingDataset.load(path: path, tokenizer: chat.tokenizer, template: chat.template, image: image,
                                     imageFolder: options.imageFolder, maxLength: settings.maxLength, skipBadRows: options.skipBadRows,
                                     readsImageTokenTexts: settings.trainingObjective == .imageTokenEmbeddings)
        }
        let dataset = try load(options.data)
        let evalSet = try options.evalData.map(load)
        for problem in dataset.problems + (evalSet?.problems ?? []) { note("skipped \(problem)") }
        let trainer = try Trainer(model: model, dataset: dataset, settings: settings)
        if let resume { try trainer.restore(from: resume) }

        // Store: the run and its arguments.
        let modelID = try store.upsertModel(path: modelPath, fingerprint: try ModelFingerprint.compute(modelPath),
                                            architecture: chat is VisionLanguageModel ? "llava" : chat.decoder.config.modelType)
        var args = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(settings))) as? [String: Any] ?? [:]
        args["model"] = modelPath; args["model_id"] = Int(modelID); args["data"] = options.data; args["examples"] = dataset.count
        if let resume { args["resume"] = resume }
        if let e = options.evalData { args["eval_data"] = e }
        let argsText = String(decoding: try JSONSerialization.data(withJSONObject: args, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
        let run = try store.startRun(session: session, args: argsText, outDir: options.out)
        guard let kind = CheckpointKind(rawValue: settings.mode.rawValue) else { throw UsageError("no checkpoint kind for --mode \(settings.mode.rawValue)") }
        let total = trainer.totalSteps

        let bar = output == .interactive ? ProgressBar(label: "fine-tuning", total: total) : nil
        var evalLoss: Double?
        var evaluations: [(step: Int, loss: Double)] = []
        func checkpoint(_ directory: String) throws {
            try trainer.save(to: directory, baseModel: modelPath)
            let main = settings.mode.trainsLoRA ? "adapter_model.safetensors" : ProjectorFiles.hfFile
            try store.addCheckpoint(run: run, step: trainer.state.step, path: directory, kind: kind,
                                    sha256: try ContentHash.hex(file: directory + "/" + main))
        }
        func evaluate() throws {
            guard let evalSet else { return }
            let stats = try trainer.evaluate(evalSet)
            let loss = stats.lossSum / Double(max(stats.tokens, 1))
            evalLoss = loss
            evaluations.append((trainer.state.step, loss))
            try store.addMetric(run: run, step: trainer.state.step, evalLoss: loss)
            emit(["eval_loss": loss, "step": trainer.state.step, "eval_token_accuracy": Double(stats.correct) / Double(max(stats.tokens, 1))],
                 line: String(format: "step %d eval loss %.4f", trainer.state.step, loss))
        }

        var status = RunStatus.completed
        do {
            while !trainer.isFinished {
                let m = try trainer.step()
                try store.addMetric(run: run, step: m.step, loss: m.loss, lr: m.learningRate, gradNorm: m.gradNorm, tokensPerSecond: m.tokensPerSecond)
                let line = String(format: "step %d/%d loss %.4f lr %.2e grad_norm %.3f %.1f tok/s", m.step, total, m.loss, m.learningRate, m.gradNorm, m.tokensPerSecond)
                if let bar {
                    let remaining = Double(total - m.step) * (Date().timeIntervalSince(started) / Double(max(m.step, 1)))
                    let losses = trainer.state.history.suffix(40).map(\.loss)
                    bar.update(step: m.step, of: total, trailing: String(format: "loss %.3f lr %.1e %.0f tok/s ETA %@ %@",
                                                                         m.loss, m.learningRate, m.tokensPerSecond,
                                                                         ProgressBar.duration(remaining), sparkline(losses)))
                } else {
                    emit(["step": m.step, "loss": m.loss, "lr": m.learningRate, "grad_norm": m.gradNorm,
                          "tokens_per_second": m.tokensPerSecond], line: line)
                }
                if let every = settings.saveSteps, m.step % every == 0, m.step < total {
                    try checkpoint(options.out + "/checkpoint-\(m.step)")
                }
                if let every = options.evalSteps, m.step % every == 0, m.step < total { try evaluate() }
                if shouldStop() { status = .stopped; break }
            }
            bar?.finish()
            try checkpoint(options.out + "/checkpoint-\(trainer.state.step)")
            try trainer.writeWeights(to: options.out, baseModel: modelPath)
            if status == .completed { try evaluate() }
            let curve = LossCurve.svg(steps: trainer.state.history.map { ($0.step, $0.loss) }, evaluations: evaluations,
                                      title: "\(URL(fileURLWithPath: modelPath).lastPathComponent) · \(settings.mode.rawValue) · run \(run)")
            try Data(curve.utf8).write(to: URL(fileURLWithPath: options.out + "/loss.svg"), options: .atomic)
            try store.updateRunStatus(run, status)
        } catch {
            bar?.finish(trailing: "failed")
            try? store.updateRunStatus(run, .failed)
            throw error
        }
        let summary = Summary(run: run, status: status, steps: trainer.state.step, finalLoss: trainer.state.history.last?.loss,
                              evalLoss: evalLoss, outDir: options.out, seconds: Date().timeIntervalSince(started))
        if output == .json {
            var object: [String: Any] = ["run": Int(run), "status": status.rawValue, "steps": summary.steps, "out": options.out,
                                         "seconds": summary.seconds, "losses": trainer.state.history.map(\.loss)]
            if let l = summary.finalLoss { object["final_loss"] = l }
            if let e = evalLoss { object["eval_loss"] = e }
            try printJSON(["summary": object])
        }
        return summary
    }

    private func emit(_ object: [String: Any], line: String) {
        switch output {
        case .json: try? printJSON(object)
        case .lines, .interactive: printLine(line)
        case .quiet: break
        }
    }

    private func note(_ text: String) {
        if output == .json { FileHandle.standardError.write(Data((text + "\n").utf8)) } else if output != .quiet { printLine(text) }
    }
}

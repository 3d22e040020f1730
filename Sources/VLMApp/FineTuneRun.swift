import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTensor
import VLMTraining

/// What a fine-tuning run is asked to do: `vlmsh finetune`'s and `/finetune`'s arguments.
public struct FineTuneRequest: Sendable {
    public var data: String
    public var out: String
    public var settings: FineTuneSettings
    /// `--resume DIR/checkpoint-N`: the checkpoint's settings, with `settings.steps` extending it when given.
    public var resume: String?
    public var evalData: String?
    public var evalSteps: Int?
    public var imageFolder: String?
    public var skipBadRows: Bool
    /// How the run was launched in LLaVA's words, when it was (`--from-script`, LLaVA's flags):
    /// recorded with the run.
    public var launch: LaunchRecord?

    /// A LLaVA-style launch: the script read (if any) and the LLaVA arguments, script's first.
    public struct LaunchRecord: Sendable, Codable, Equatable {
        public var script: String?
        public var arguments: [String]
        public init(script: String?, arguments: [String]) { self.script = script; self.arguments = arguments }
    }

    public init(data: String, out: String, settings: FineTuneSettings, resume: String? = nil, evalData: String? = nil,
                evalSteps: Int? = nil, imageFolder: String? = nil, skipBadRows: Bool = false, launch: LaunchRecord? = nil) {
        self.data = data; self.out = out; self.settings = settings; self.resume = resume; self.evalData = evalData
        self.evalSteps = evalSteps; self.imageFolder = imageFolder; self.skipBadRows = skipBadRows; self.launch = launch
    }
}

/// One fine-tuning run end to end: data, model, loop, resume, checkpoints, store rows and the
/// loss plot. Progress goes to the console as events (steps, evaluations, notes).
public final class FineTuneRunner {
    public struct Summary: Sendable {
        public var run: Int64
        public var status: RunStatus
        public var steps: Int
        public var finalLoss: Double?
        public var evalLoss: Double?
        public var outDir: String
        public var seconds: Double
        /// Every step's loss, in order.
        public var losses: [Double]
        /// Bad data rows skipped: at load (with --skip-bad-rows) and, for a lazily read file, when met.
        public var skippedRows = 0
        /// Bytes the optimizer's moments take (`--optim adamw_bnb_8bit` cuts them to about a quarter).
        public var optimizerStateBytes = 0

        public var text: String {
            var s = "run \(run) \(status.rawValue): \(steps) steps"
            if let finalLoss { s += String(format: ", loss %.4f", finalLoss) }
            if let evalLoss { s += String(format: ", eval loss %.4f", evalLoss) }
            if skippedRows > 0 { s += ", \(skippedRows) bad row\(skippedRows == 1 ? "" : "s") skipped" }
            s += ", optimizer state \(MemoryBudget.describe(Double(optimizerStateBytes)))"
            return s + String(format: " in %.1fs; adapter in %@", seconds, outDir)
        }
    }

    let chat: ChatModel
    let modelPath: String
    let request: FineTuneRequest
    let store: Store
    let console: Console
    /// The REPL session the run belongs to, if any.
    public var session: Int64?

    public init(chat: ChatModel, modelPath: String, request: FineTuneRequest, store: Store, console: Console) {
        self.chat = chat; self.modelPath = modelPath; self.request = request; self.store = store; self.console = console
    }

    public func run(shouldStop: () -> Bool) throws -> Summary {
        let started = Date()
        let (settings, model, dataset) = try prepare()
        let evalSet = try request.evalData.map { try load($0, settings) }
        for problem in dataset.problems + (evalSet?.problems ?? []) { console.line("skipped \(problem)") }
        let trainer = try Trainer(model: model, dataset: dataset, settings: settings)
        if let resume = request.resume { try trainer.restore(from: resume) }
        for name in Trainer.removeStaleCheckpoints(in: request.out) { console.line("removed the half-written \(name) of an earlier run") }
        let run = try recordRun(settings, examples: dataset.count)
        if dataset.isLazy {
            console.line("\(dataset.count) rows in \(request.data): read as training goes (bad rows met are skipped and counted)")
        }
        let loop = TrainingLoop(runner: self, trainer: trainer, settings: settings, run: run, evalSet: evalSet, started: started)
        let status = try loop.run(shouldStop: shouldStop)
        let skipped = [dataset, evalSet].compactMap { $0 }.reduce(0) { $0 + $1.problems.count + $1.badRowsMetWhileReading }
        return Summary(run: run, status: status, steps: trainer.state.step, finalLoss: trainer.state.history.last?.loss,
                       evalLoss: loop.evalLoss, outDir: request.out, seconds: Date().timeIntervalSince(started),
                       losses: trainer.state.history.map(\.loss), skippedRows: skipped,
                       optimizerStateBytes: trainer.optimizer.stateBytes)
    }

    /// The run's settings, its model on the tape (LoRA initialized, adapters applied) and its
    /// training data, before any step.
    func prepare() throws -> (settings: FineTuneSettings, model: TrainableModel, dataset: TrainingDataset) {
        let settings = try resolvedSettings()
        return (settings, try trainableModel(settings), try load(request.data, settings))
    }

    /// The request's settings; a resumed run continues with its checkpoint's (`steps` may extend
    /// it; gradient checkpointing, which changes memory and not results, is the request's), and a
    /// model folder with its own LoRA is continued rather than replaced.
    private func resolvedSettings() throws -> FineTuneSettings {
        var settings = request.settings
        if let resume = request.resume {
            let steps = request.settings.steps
            settings = try TrainingCheckpoint.settings(directory: resume)
            if let steps { settings.steps = steps }
            settings.gradientCheckpointing = request.settings.gradientCheckpointing
        }
        if request.resume == nil, settings.adapterInit == nil, hasOwnAdapter(modelPath) {
            guard settings.mode.trainsLoRA else {
                throw UsageError("\(modelPath)/adapter_config.json: this model carries a LoRA; train with a --mode that includes lora (it continues from it)")
            }
            settings.adapterInit = modelPath
            console.line("continuing the model's own LoRA (\(modelPath)/adapter_config.json)")
        }
        return settings
    }

    /// The model on the tape: everything from the checkpoint or the init folder, otherwise a
    /// fresh LoRA with PEFT's init.
    private func trainableModel(_ settings: FineTuneSettings) throws -> TrainableModel {
        var lora: LoRA?
        var initKind: AdapterKind?
        if let start = request.resume ?? settings.adapterInit {
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
        return try TrainableModel(chat: chat, mode: settings.mode, lora: lora, objective: settings.trainingObjective, initKind: initKind)
    }

    private func load(_ path: String, _ settings: FineTuneSettings) throws -> TrainingDataset {
        let image = chat.images.map { (tokenID: $0.tokenID, featureCount: $0.featureCount) }
        return try TrainingDataset.load(path: path, tokenizer: chat.tokenizer, template: chat.template, image: image,
                                        imageFolder: request.imageFolder, maxLength: settings.maxLength,
                                        contextLength: chat.decoder.config.contextLength, skipBadRows: request.skipBadRows,
                                        readsImageTokenTexts: settings.trainingObjective == .imageTokenEmbeddings,
                                        imageFeatureCount: TrainingDataset.imageFeatureCount(for: chat))
    }

    /// The run's store row, with its arguments.
    private func recordRun(_ settings: FineTuneSettings, examples: Int) throws -> Int64 {
        let modelID = try store.upsertModel(path: modelPath, fingerprint: try ModelFingerprint.compute(modelPath),
                                            architecture: chat is VisionLanguageModel ? "llava" : chat.decoder.config.modelType)
        var args = (try? JSONSerialization.jsonObject(with: JSONEncoder().encode(settings))) as? [String: Any] ?? [:]
        args["model"] = modelPath; args["model_id"] = Int(modelID); args["data"] = request.data; args["examples"] = examples
        if let resume = request.resume { args["resume"] = resume }
        if let e = request.evalData { args["eval_data"] = e }
        if let folder = request.imageFolder { args["image_folder"] = folder }
        if let launch = request.launch {
            args["llava_arguments"] = launch.arguments
            if let script = launch.script { args["from_script"] = script }
        }
        let argsText = String(decoding: try JSONSerialization.data(withJSONObject: args, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
        return try store.startRun(session: session, args: argsText, outDir: request.out)
    }

    /// The optimizer loop of one run, with its checkpoints, evaluations and final files.
    private final class TrainingLoop {
        let runner: FineTuneRunner
        let trainer: Trainer
        let settings: FineTuneSettings
        let run: Int64
        let evalSet: TrainingDataset?
        let started: Date
        private(set) var evalLoss: Double?
        private var evaluations: [(step: Int, loss: Double)] = []
        /// Lazily met bad rows already reported, per file (training, evaluation).
        private var reportedProblems = (train: 0, eval: 0)

        init(runner: FineTuneRunner, trainer: Trainer, settings: FineTuneSettings, run: Int64, evalSet: TrainingDataset?, started: Date) {
            self.runner = runner; self.trainer = trainer; self.settings = settings; self.run = run; self.evalSet = evalSet; self.started = started
        }

        var store: Store { runner.store }
        var out: String { runner.request.out }

        func run(shouldStop: () -> Bool) throws -> RunStatus {
            var status = RunStatus.completed
            let total = trainer.totalSteps
            do {
                while !trainer.isFinished {
                    let m = try trainer.step()
                    reportNewProblems()
                    try store.addMetric(run: run, step: m.step, loss: m.loss, lr: m.learningRate, gradNorm: m.gradNorm, tokensPerSecond: m.tokensPerSecond)
                    runner.console.report(.trainingStep(TrainingStep(
                        step: m.step, total: total, loss: m.loss, learningRate: Double(m.learningRate), gradNorm: Double(m.gradNorm),
                        tokensPerSecond: m.tokensPerSecond, elapsed: Date().timeIntervalSince(started),
                        recentLosses: trainer.state.history.suffix(40).map(\.loss))))
                    if let every = settings.saveSteps, m.step % every == 0, m.step < total { try checkpoint(out + "/checkpoint-\(m.step)") }
                    if let every = runner.request.evalSteps, m.step % every == 0, m.step < total { try evaluate() }
                    if shouldStop() { status = .stopped; break }
                }
                runner.console.report(.ended(failed: false))
                try finish(status)
            } catch {
                runner.console.report(.ended(failed: true))
                try? store.updateRunStatus(run, .failed)
                throw error
            }
            return status
        }

        /// The last checkpoint, the weights, the final evaluation and the loss plot.
        private func finish(_ status: RunStatus) throws {
            try checkpoint(out + "/checkpoint-\(trainer.state.step)")
            try trainer.writeWeights(to: out, baseModel: runner.modelPath)
            if status == .completed { try evaluate() }
            try trainer.writeTrainerState(to: out, baseModel: runner.modelPath, resumable: false)
            let curve = LossCurve.svg(steps: trainer.state.history.map { ($0.step, $0.loss) }, evaluations: evaluations,
                                      title: "\(URL(fileURLWithPath: runner.modelPath).lastPathComponent) · \(settings.mode.rawValue) · run \(run)")
            try Data(curve.utf8).write(to: URL(fileURLWithPath: out + "/loss.svg"), options: .atomic)
            try store.updateRunStatus(run, status)
        }

        /// The bad rows met since the last report (files read lazily find them as training goes).
        private func reportNewProblems() {
            let train = trainer.dataset.problemsMetWhileReading
            for problem in train.dropFirst(reportedProblems.train) { runner.console.line("skipped \(problem)") }
            reportedProblems.train = train.count
            guard let evalSet else { return }
            let eval = evalSet.problemsMetWhileReading
            for problem in eval.dropFirst(reportedProblems.eval) { runner.console.line("skipped \(problem)") }
            reportedProblems.eval = eval.count
        }

        private func checkpoint(_ directory: String) throws {
            guard let kind = CheckpointKind(rawValue: settings.mode.rawValue) else { throw UsageError("no checkpoint kind for --mode \(settings.mode.rawValue)") }
            try trainer.save(to: directory, baseModel: runner.modelPath)
            let sha = try settings.mode.mainFile(in: directory).map { try ContentHash.hex(file: directory + "/" + $0) }
            try store.addCheckpoint(run: run, step: trainer.state.step, path: directory, kind: kind, sha256: sha)
        }

        private func evaluate() throws {
            guard let evalSet else { return }
            let stats = try trainer.evaluate(evalSet)
            let loss = stats.lossSum / Double(max(stats.tokens, 1))
            evalLoss = loss
            reportNewProblems()
            evaluations.append((trainer.state.step, loss))
            trainer.recordEvaluation(loss: loss)
            try store.addMetric(run: run, step: trainer.state.step, evalLoss: loss)
            runner.console.report(.trainingEvaluation(TrainingEvaluation(
                step: trainer.state.step, loss: loss, tokenAccuracy: Double(stats.correct) / Double(max(stats.tokens, 1)))))
        }
    }
}

/// A loaded model's trainable weights as they are now (its own LoRA, projector, vision tower),
/// to put back after training changed them in place.
public struct WeightsSnapshot {
    let model: ChatModel
    let adapters: [String: LowRankAdapter]
    let projector: [Tensor]?
    let tower: [Tensor]?

    public init(of model: ChatModel) {
        self.model = model
        adapters = AppliedAdapter.installedAdapters(on: model.decoder)
        let llava = (model as? VisionLanguageModel)?.llava
        projector = llava.map { ProjectorFiles.snapshot($0.projector) }
        tower = llava?.visionTransformer.map(VisionTowerFiles.snapshot)
    }

    public func restore() throws {
        try model.decoder.setAdapters(adapters)
        let llava = (model as? VisionLanguageModel)?.llava
        if let llava, let projector { ProjectorFiles.apply(projector, to: llava.projector) }
        if let tower, let visionTower = llava?.visionTransformer { VisionTowerFiles.apply(tower, to: visionTower) }
    }

    /// Runs `body` (which may change the weights) and restores them afterwards, also when it throws.
    public func restoring<T>(after body: () throws -> T) throws -> T {
        let result: T
        do { result = try body() } catch {
            try? restore()
            throw error
        }
        try restore()
        return result
    }
}

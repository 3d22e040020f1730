import Foundation
import VLMFormats
import VLMGeneration
import VLMTensor

// The training loop of the HF Trainer as LLaVA uses it: micro-batches accumulated into optimizer
// steps with the loss normalized over every label token of the step, clipping, AdamW with the
// LLaVA groups, a warmup-then-decay schedule, seeded data order, and checkpoints that resume to
// the same losses.

/// What a fine-tune was asked to do (recorded in the store and in every checkpoint).
public struct FineTuneSettings: Codable, Sendable, Equatable {
    public var mode: FineTuneMode = .lora
    /// nil: next-token (checkpoints written before the choice existed have none); read it as
    /// `trainingObjective`.
    public var objective: TrainingObjective?
    public var loraRank = 8
    public var loraAlpha: Float = 16
    public var loraDropout: Float = 0.05
    public var loraTargets: LoRATargets = .all
    public var adapterInit: String?
    public var steps: Int?
    public var epochs: Double?
    public var batchSize = 1
    public var gradientAccumulation = 1
    public var learningRate: Float = 2e-4
    public var projectorLearningRate: Float?
    public var visionTowerLearningRate: Float?
    public var weightDecay: Float = 0
    public var scheduler: LearningRateSchedule.Kind = .cosine
    public var warmupSteps: Int?
    public var warmupRatio: Double?
    public var maxGradNorm: Float = 1
    public var maxLength: Int?
    public var seed: UInt64 = 42
    public var saveSteps: Int?
    public var groupByModalityLength = false
    /// nil: AdamW with Float32 moments (what runs recorded before the choice existed used).
    public var optimizer: OptimizerKind?
    /// The HF Trainer's `gradient_checkpointing`: decoder layers recomputed in the backward pass
    /// (nil, off, in checkpoints written before it existed; read it as `checkpointsLayers`).
    public var gradientCheckpointing: Bool?
    public init() {}

    enum CodingKeys: String, CodingKey {
        case mode, objective, loraRank = "lora_r", loraAlpha = "lora_alpha", loraDropout = "lora_dropout", loraTargets = "lora_targets"
        case adapterInit = "adapter_init", steps, epochs, batchSize = "batch_size", gradientAccumulation = "grad_accum"
        case learningRate = "lr", projectorLearningRate = "mm_projector_lr", visionTowerLearningRate = "mm_vision_tower_lr", weightDecay = "weight_decay", scheduler
        case warmupSteps = "warmup_steps", warmupRatio = "warmup_ratio", maxGradNorm = "max_grad_norm"
        case maxLength = "max_length", seed, saveSteps = "save_steps", groupByModalityLength = "group_by_modality_length"
        case optimizer = "optim"
        case gradientCheckpointing = "gradient_checkpointing"
    }

    /// Whether decoder layers are recomputed in the backward pass instead of kept.
    public var checkpointsLayers: Bool { gradientCheckpointing ?? false }

    /// The objective, next-token when none is recorded.
    public var trainingObjective: TrainingObjective { objective ?? .nextToken }

    public var loraConfiguration: LoRAConfiguration {
        LoRAConfiguration(rank: loraRank, alpha: loraAlpha, dropout: loraDropout, targets: loraTargets)
    }
}

/// One optimizer step's numbers.
public struct StepMetrics: Codable, Sendable, Equatable {
    public var step: Int
    public var loss: Double
    public var learningRate: Double
    public var gradNorm: Double
    public var tokensPerSecond: Double
    public var labelTokens: Int
    public var seconds: Double
    /// Epochs done when the step ended, fractional, as the HF Trainer logs it (nil in checkpoints
    /// written before it was kept).
    public var epoch: Double?

    enum CodingKeys: String, CodingKey {
        case step, loss, learningRate = "lr", gradNorm = "grad_norm", tokensPerSecond = "tokens_per_second"
        case labelTokens = "label_tokens", seconds, epoch
    }
}

/// One evaluation of held-out data during a run.
public struct EvaluationMetrics: Codable, Sendable, Equatable {
    public var step: Int
    public var loss: Double
    public var epoch: Double
    enum CodingKeys: String, CodingKey { case step, loss = "eval_loss", epoch }
}

/// Where the loop is: enough to continue exactly (data position, dropout stream, log).
public struct TrainerState: Codable, Sendable, Equatable {
    public var step = 0
    public var epoch = 0
    /// Next micro-batch within the epoch's batches.
    public var batchCursor = 0
    public var dropoutRandom: SeededRandom
    public var history: [StepMetrics] = []
    /// Evaluations of held-out data, in order.
    public var evaluations: [EvaluationMetrics] = []

    public init(dropoutRandom: SeededRandom) { self.dropoutRandom = dropoutRandom }

    enum CodingKeys: String, CodingKey {
        case step = "global_step", epoch, batchCursor = "batch_cursor", dropoutRandom = "dropout_random", history = "log_history"
        case evaluations
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        step = try c.decode(Int.self, forKey: .step)
        epoch = try c.decode(Int.self, forKey: .epoch)
        batchCursor = try c.decode(Int.self, forKey: .batchCursor)
        dropoutRandom = try c.decode(SeededRandom.self, forKey: .dropoutRandom)
        history = try c.decode([StepMetrics].self, forKey: .history)
        evaluations = try c.decodeIfPresent([EvaluationMetrics].self, forKey: .evaluations) ?? []
    }
}

public final class Trainer {
    public let model: TrainableModel
    public let dataset: TrainingDataset
    public let settings: FineTuneSettings
    public let optimizer: AdamW
    public let schedule: LearningRateSchedule
    public private(set) var state: TrainerState
    public let padID: Int
    private let order: TrainingOrder
    /// The current epoch's example order (micro-batches are consecutive slices of it).
    private var epochOrder: (epoch: Int, indices: [Int])?

    public init(model: TrainableModel, dataset: TrainingDataset, settings: FineTuneSettings) throws {
        guard settings.batchSize > 0, settings.gradientAccumulation > 0 else { throw TrainingError("--batch-size and --grad-accum must be positive") }
        guard !model.parameters.isEmpty else { throw TrainingError("nothing to train") }
        self.model = model
        self.dataset = dataset
        self.settings = settings
        padID = TrainingBatch.padID(for: model.chat.tokenizer)
        order = settings.groupByModalityLength
            ? .modalityLengthGrouped(batchSize: settings.batchSize, gradientAccumulation: settings.gradientAccumulation)
            : .shuffled
        let batchesPerEpoch = (dataset.count + settings.batchSize - 1) / settings.batchSize
        let stepsPerEpoch = max(1, batchesPerEpoch / settings.gradientAccumulation)
        let total = settings.steps ?? Int((Double(stepsPerEpoch) * (settings.epochs ?? 1)).rounded(.up))
        guard total > 0 else { throw TrainingError("--steps must be positive") }
        schedule = LearningRateSchedule(kind: settings.scheduler,
                                        warmupSteps: LearningRateSchedule.warmupSteps(steps: settings.warmupSteps, ratio: settings.warmupRatio, totalSteps: total),
                                        totalSteps: total)
        optimizer = AdamW(parameters: model.parameters, settings: OptimizerSettings(
            kind: settings.optimizer ?? .adamw, learningRate: settings.learningRate, projectorLearningRate: settings.projectorLearningRate,
            visionTowerLearningRate: settings.visionTowerLearningRate, weightDecay: settings.weightDecay))
        state = TrainerState(dropoutRandom: SeededRandom(seed: settings.seed &+ 1))
    }

    public var totalSteps: Int { schedule.totalSteps }
    /// Optimizer steps in one epoch (at least one).
    public var stepsPerEpoch: Int { max(1, batchesPerEpoch / settings.gradientAccumulation) }
    /// Epochs done, fractional (the HF Trainer's `state.epoch`).
    public var epochProgress: Double { Double(state.epoch) + Double(state.batchCursor) / Double(max(batchesPerEpoch, 1)) }
    /// Micro-batches in one epoch (the last may be short, as the Trainer's DataLoader's).
    public var batchesPerEpoch: Int { (dataset.count + settings.batchSize - 1) / settings.batchSize }
    public var isFinished: Bool { state.step >= totalSteps }

    /// The next micro-batch's example indices, moving to the next epoch's order at the end of one.
    private func nextMicroBatch() -> [Int] {
        if epochOrder?.epoch != state.epoch {
            epochOrder = (state.epoch, order.indices(for: dataset, seed: settings.seed, epoch: state.epoch))
        }
        let indices = epochOrder!.indices
        let start = state.batchCursor * settings.batchSize
        let batch = Array(indices[start..<min(start + settings.batchSize, indices.count)])
        state.batchCursor += 1
        if state.batchCursor == batchesPerEpoch { state.epoch += 1; state.batchCursor = 0 }
        return batch
    }

    /// The next micro-batch with a row in it: bad rows of a lazily read file are left out of
    /// their batch, and a batch of nothing but bad rows is passed over.
    private func nextNonEmptyBatch() throws -> TrainingBatch {
        for _ in 0..<batchesPerEpoch {
            let batch = dataset.batch(nextMicroBatch(), padID: padID)
            if batch.layout.batch > 0 { return batch }
        }
        throw TrainingError("\(dataset.path): a whole epoch of micro-batches held only bad rows")
    }

    /// The micro-batches (example indices) of every step still to run, in the order `step()`
    /// takes them, and the epochs done after each step; the state is left as it is. (A lazily
    /// read file's bad rows, which `step()` drops as it meets them, are still in.)
    public func plannedSteps() -> [(microBatches: [[Int]], epoch: Double)] {
        let saved = (state, epochOrder)
        defer { (state, epochOrder) = saved }
        var steps: [(microBatches: [[Int]], epoch: Double)] = []
        for _ in state.step..<totalSteps {
            let batches = (0..<settings.gradientAccumulation).map { _ in nextMicroBatch() }
            steps.append((batches, epochProgress))
        }
        return steps
    }

    /// One optimizer step over `gradientAccumulation` micro-batches.
    @discardableResult
    public func step() throws -> StepMetrics {
        let start = Date()
        let batches = try (0..<settings.gradientAccumulation).map { _ in try nextNonEmptyBatch() }
        let units = batches.reduce(0) { $0 + model.lossUnits($1) }
        guard units > 0 else { throw TrainingError("step \(state.step + 1): nothing in the batch for the loss (no label tokens or image-token texts)") }
        var loss = 0.0, tokens = 0
        for batch in batches {
            let tape = Tape()
            tape.gradientCheckpointing = settings.checkpointsLayers
            let (l, stats) = try model.loss(batch, normalizer: Float(units), tape: tape, random: &state.dropoutRandom)
            tape.backward(l)
            loss += Double(l.data[0])
            // Positions through the language model, or image tokens when it does not run.
            tokens += model.objective == .nextToken ? batch.lengths.reduce(0, +) : stats.tokens
        }
        let norm = optimizer.clipGradients(maxNorm: settings.maxGradNorm)
        let factor = schedule.factor(at: state.step)
        optimizer.update(learningRateFactor: factor)
        optimizer.zeroGradients()
        state.step += 1
        let seconds = Date().timeIntervalSince(start)
        let metrics = StepMetrics(step: state.step, loss: loss, learningRate: Double(settings.learningRate * factor),
                                  gradNorm: Double(norm), tokensPerSecond: Double(tokens) / max(seconds, 1e-9),
                                  labelTokens: units, seconds: seconds, epoch: epochProgress)
        state.history.append(metrics)
        return metrics
    }

    /// Teacher-forced loss and token accuracy over `data` (no dropout, no gradients kept).
    public func evaluate(_ data: TrainingDataset) throws -> TokenStatistics {
        var total = TokenStatistics()
        var random = SeededRandom(seed: 0)
        for start in stride(from: 0, to: data.count, by: settings.batchSize) {
            let batch = data.batch(Array(start..<min(start + settings.batchSize, data.count)), padID: padID)
            guard batch.layout.batch > 0 else { continue }
            let units = model.lossUnits(batch)
            guard units > 0 else { continue }
            let tape = Tape()
            tape.gradientCheckpointing = settings.checkpointsLayers   // keeps one layer's activations, as training does
            let (_, stats) = try model.loss(batch, normalizer: Float(units), tape: tape, random: &random, training: false)
            tape.reset()
            total += stats
        }
        return total
    }

    /// Records an evaluation of held-out data at the current step (it goes into `trainer_state.json`).
    public func recordEvaluation(loss: Double) {
        state.evaluations.append(EvaluationMetrics(step: state.step, loss: loss, epoch: epochProgress))
    }

    // MARK: - Checkpoints

    /// Writes a checkpoint folder: the adapter (PEFT files), the projector (HF and LLaVA names),
    /// optimizer moments and the trainer state. Built under a temporary name and renamed, so a
    /// crash never leaves a half-written checkpoint; a failed write (a full disk) removes it.
    public func save(to directory: String, baseModel: String?) throws {
        let fm = FileManager.default
        let parent = URL(fileURLWithPath: directory).deletingLastPathComponent().path
        try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let temp = directory + Self.temporarySuffix + "\(getpid())"
        try? fm.removeItem(atPath: temp)
        do {
            try writeCheckpoint(to: temp, baseModel: baseModel)
            if fm.fileExists(atPath: directory) { try fm.removeItem(atPath: directory) }
            guard rename(temp, directory) == 0 else { throw FormatError(directory, "cannot rename checkpoint into place (errno \(errno))") }
        } catch {
            try? fm.removeItem(atPath: temp)
            throw error
        }
    }

    /// What a checkpoint folder holds, written into `temp`.
    private func writeCheckpoint(to temp: String, baseModel: String?) throws {
        try FileManager.default.createDirectory(atPath: temp, withIntermediateDirectories: true)
        try writeWeights(to: temp, baseModel: baseModel)
        try SafetensorsWriter.write(optimizer.stateTensors.map { ($0.name, $0.tensor, .f32) },
                                    metadata: ["step": "\(optimizer.step)"], to: temp + "/optimizer.safetensors")
        try writeTrainerState(to: temp, baseModel: baseModel, resumable: true)
    }

    /// `directory/trainer_state.json` as the Hugging Face Trainer writes it (global_step,
    /// max_steps, num_train_epochs, log_history, …), written atomically. A checkpoint's
    /// (`resumable`) also holds what `restore` continues from, under "vlmsh".
    public func writeTrainerState(to directory: String, baseModel: String?, resumable: Bool) throws {
        let record = CheckpointRecord(settings: settings, state: state, baseModel: baseModel, optimizerStep: optimizer.step,
                                      maxSteps: totalSteps, stepsPerEpoch: stepsPerEpoch, epoch: epochProgress)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(resumable ? record : record.withoutResumeState)
        try writeAtomically(data, to: directory + "/" + CheckpointRecord.fileName)
    }

    /// A checkpoint being written is `checkpoint-N.tmp-PID`.
    static let temporarySuffix = ".tmp-"

    /// Removes half-written checkpoint folders in `directory` left by runs that died before they
    /// could (killed, or the machine went down); a folder of a process still running stays.
    /// Returns the names removed.
    @discardableResult
    public static func removeStaleCheckpoints(in directory: String) -> [String] {
        let fm = FileManager.default
        var removed: [String] = []
        for name in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] {
            guard let range = name.range(of: temporarySuffix, options: .backwards), name.hasPrefix("checkpoint-"),
                  let pid = pid_t(name[range.upperBound...]) else { continue }
            // kill(pid, 0) fails with ESRCH once no such process exists (EPERM: it exists).
            if pid != getpid() && (kill(pid, 0) == 0 || errno == EPERM) { continue }
            if (try? fm.removeItem(atPath: directory + "/" + name)) != nil { removed.append(name) }
        }
        return removed.sorted()
    }

    /// The trained tensors, and those the init folder carried (what `--adapter` and `/adapter
    /// load` read).
    public func writeWeights(to directory: String, baseModel: String?) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if let lora = model.lora { try lora.save(directory: directory, layout: model.layout, baseModel: baseModel) }
        if model.mode.trainsProjector || model.carriesProjector, let projector = model.llava?.projector {
            try ProjectorFiles.save(projector, directory: directory)
        }
        if model.mode.trainsVisionTower || model.carriesVisionTower, let tower = model.llava?.visionTransformer {
            try VisionTowerFiles.save(tower, directory: directory)
        }
    }

    /// Continues from a checkpoint written by `save`: optimizer moments and loop state. The
    /// weights are loaded by the caller (they decide the model), the settings must agree.
    public func restore(from directory: String) throws {
        let record = try CheckpointRecord.read(directory: directory)
        guard record.settings.mode == settings.mode else {
            throw TrainingError("\(directory): the checkpoint was trained with --mode \(record.settings.mode.rawValue)")
        }
        guard record.settings.trainingObjective == settings.trainingObjective else {
            throw TrainingError("\(directory): the checkpoint was trained with --objective \(record.settings.trainingObjective.rawValue)")
        }
        guard (record.settings.optimizer ?? .adamw) == (settings.optimizer ?? .adamw) else {
            throw TrainingError("\(directory): the checkpoint was trained with --optim \((record.settings.optimizer ?? .adamw).rawValue)")
        }
        let file = try SafetensorsFile(path: directory + "/optimizer.safetensors")
        var tensors: [String: Tensor] = [:]
        for name in file.weightNames { tensors[name] = try file.floats(name) }
        try optimizer.restore(step: record.optimizerStep, tensors: tensors)
        state = record.state
        epochOrder = nil
    }
}

/// What a checkpoint folder says about its run.
public enum TrainingCheckpoint {
    /// The settings the checkpoint's run was started with.
    public static func settings(directory: String) throws -> FineTuneSettings {
        try CheckpointRecord.read(directory: directory).settings
    }
}

/// `trainer_state.json`: the Hugging Face Trainer's `TrainerState` (what tools that read LLaVA
/// runs look for), with vlmsh's own record of the run (settings, loop state, optimizer step)
/// under "vlmsh" in a checkpoint. Files written before the HF fields had vlmsh's at the top.
struct CheckpointRecord: Codable {
    static let fileName = "trainer_state.json"

    var settings: FineTuneSettings
    var state: TrainerState
    var baseModel: String?
    var optimizerStep: Int
    /// The HF fields' figures (not read back: they follow from the rest).
    var maxSteps = 0
    var stepsPerEpoch = 1
    var epoch = 0.0
    /// Whether "vlmsh" is written (a checkpoint) or only the HF fields (a run's output folder).
    var includesResumeState = true

    init(settings: FineTuneSettings, state: TrainerState, baseModel: String?, optimizerStep: Int,
         maxSteps: Int, stepsPerEpoch: Int, epoch: Double) {
        self.settings = settings; self.state = state; self.baseModel = baseModel; self.optimizerStep = optimizerStep
        self.maxSteps = maxSteps; self.stepsPerEpoch = stepsPerEpoch; self.epoch = epoch
    }

    var withoutResumeState: CheckpointRecord {
        var copy = self
        copy.includesResumeState = false
        return copy
    }

    /// vlmsh's part.
    private struct ResumeState: Codable {
        var settings: FineTuneSettings
        var state: TrainerState
        var baseModel: String?
        var optimizerStep: Int
        enum CodingKeys: String, CodingKey {
            case settings, state, baseModel = "base_model", optimizerStep = "optimizer_step"
        }
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let resume = try c.decodeIfPresent(ResumeState.self, forKey: Key("vlmsh")) ?? ResumeState(from: decoder)
        settings = resume.settings; state = resume.state; baseModel = resume.baseModel; optimizerStep = resume.optimizerStep
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        // Fields of transformers' TrainerState; no best checkpoint is tracked.
        for key in ["best_global_step", "best_metric", "best_model_checkpoint", "trial_name", "trial_params"] { try c.encodeNil(forKey: Key(key)) }
        try c.encode(epoch, forKey: Key("epoch"))
        try c.encode(state.step, forKey: Key("global_step"))
        try c.encode(maxSteps, forKey: Key("max_steps"))
        // As the Trainer sets it for a run of max_steps: the epochs those steps touch.
        try c.encode((maxSteps + stepsPerEpoch - 1) / stepsPerEpoch, forKey: Key("num_train_epochs"))
        try c.encode(1, forKey: Key("logging_steps"))
        // No --save-steps: the one checkpoint comes at the end.
        try c.encode(settings.saveSteps ?? maxSteps, forKey: Key("save_steps"))
        try c.encode(settings.batchSize, forKey: Key("train_batch_size"))
        try c.encode(false, forKey: Key("is_hyper_param_search"))
        try c.encode(true, forKey: Key("is_local_process_zero"))
        try c.encode(true, forKey: Key("is_world_process_zero"))
        try c.encode(0, forKey: Key("num_input_tokens_seen"))
        try c.encode(0, forKey: Key("total_flos"))
        try c.encode(logHistory, forKey: Key("log_history"))
        if includesResumeState {
            try c.encode(ResumeState(settings: settings, state: state, baseModel: baseModel, optimizerStep: optimizerStep), forKey: Key("vlmsh"))
        }
    }

    /// The Trainer's log: a training entry per step, an evaluation entry after the step it
    /// followed.
    private var logHistory: [LogEntry] {
        let steps = state.history.map { LogEntry.training($0, fallbackEpoch: Double($0.step) / Double(stepsPerEpoch)) }
        let evaluations = state.evaluations.map(LogEntry.evaluation)
        return (steps + evaluations).enumerated().sorted { ($0.element.step, $0.offset) < ($1.element.step, $1.offset) }.map(\.element)
    }

    private enum LogEntry: Encodable {
        case training(StepMetrics, fallbackEpoch: Double)
        case evaluation(EvaluationMetrics)

        var step: Int {
            switch self {
            case .training(let m, _): return m.step
            case .evaluation(let e): return e.step
            }
        }

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            switch self {
            case .training(let m, let fallbackEpoch):
                try c.encode(m.epoch ?? fallbackEpoch, forKey: Key("epoch"))
                try c.encode(m.gradNorm, forKey: Key("grad_norm"))
                try c.encode(m.learningRate, forKey: Key("learning_rate"))
                try c.encode(m.loss, forKey: Key("loss"))
                try c.encode(m.step, forKey: Key("step"))
            case .evaluation(let e):
                try c.encode(e.epoch, forKey: Key("epoch"))
                try c.encode(e.loss, forKey: Key("eval_loss"))
                try c.encode(e.step, forKey: Key("step"))
            }
        }
    }

    static func read(directory: String) throws -> CheckpointRecord {
        let statePath = directory + "/" + fileName
        guard let data = try SmallFile.readIfPresent(statePath) else { throw FormatError(statePath, "missing: not a vlmsh checkpoint") }
        // A run's output folder holds the HF fields alone.
        if let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any], object["vlmsh"] == nil, object["settings"] == nil {
            throw FormatError(statePath, "no resume state (a run's output folder or another trainer's): resume from a vlmsh checkpoint-N folder")
        }
        do { return try JSONDecoder().decode(CheckpointRecord.self, from: data) } catch { throw FormatError(statePath, "unreadable (\(error))") }
    }
}

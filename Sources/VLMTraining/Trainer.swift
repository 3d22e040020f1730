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
    public init() {}

    enum CodingKeys: String, CodingKey {
        case mode, objective, loraRank = "lora_r", loraAlpha = "lora_alpha", loraDropout = "lora_dropout", loraTargets = "lora_targets"
        case adapterInit = "adapter_init", steps, epochs, batchSize = "batch_size", gradientAccumulation = "grad_accum"
        case learningRate = "lr", projectorLearningRate = "mm_projector_lr", visionTowerLearningRate = "mm_vision_tower_lr", weightDecay = "weight_decay", scheduler
        case warmupSteps = "warmup_steps", warmupRatio = "warmup_ratio", maxGradNorm = "max_grad_norm"
        case maxLength = "max_length", seed, saveSteps = "save_steps", groupByModalityLength = "group_by_modality_length"
    }

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

    enum CodingKeys: String, CodingKey {
        case step, loss, learningRate = "lr", gradNorm = "grad_norm", tokensPerSecond = "tokens_per_second"
        case labelTokens = "label_tokens", seconds
    }
}

/// Where the loop is: enough to continue exactly (data position, dropout stream, log).
public struct TrainerState: Codable, Sendable, Equatable {
    public var step = 0
    public var epoch = 0
    /// Next micro-batch within the epoch's batches.
    public var batchCursor = 0
    public var dropoutRandom: SeededRandom
    public var history: [StepMetrics] = []

    enum CodingKeys: String, CodingKey {
        case step = "global_step", epoch, batchCursor = "batch_cursor", dropoutRandom = "dropout_random", history = "log_history"
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
            learningRate: settings.learningRate, projectorLearningRate: settings.projectorLearningRate,
            visionTowerLearningRate: settings.visionTowerLearningRate, weightDecay: settings.weightDecay))
        state = TrainerState(dropoutRandom: SeededRandom(seed: settings.seed &+ 1))
    }

    public var totalSteps: Int { schedule.totalSteps }
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
                                  labelTokens: units, seconds: seconds)
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
            let (_, stats) = try model.loss(batch, normalizer: Float(units), tape: tape, random: &random, training: false)
            tape.reset()
            total += stats
        }
        return total
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
        let record = CheckpointRecord(settings: settings, state: state, baseModel: baseModel, optimizerStep: optimizer.step)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(record), to: temp + "/trainer_state.json")
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

/// `trainer_state.json`.
struct CheckpointRecord: Codable {
    var settings: FineTuneSettings
    var state: TrainerState
    var baseModel: String?
    var optimizerStep: Int
    enum CodingKeys: String, CodingKey {
        case settings, state, baseModel = "base_model", optimizerStep = "optimizer_step"
    }

    static func read(directory: String) throws -> CheckpointRecord {
        let statePath = directory + "/trainer_state.json"
        guard let data = try SmallFile.readIfPresent(statePath) else { throw FormatError(statePath, "missing: not a vlmsh checkpoint") }
        do { return try JSONDecoder().decode(CheckpointRecord.self, from: data) } catch { throw FormatError(statePath, "unreadable (\(error))") }
    }
}

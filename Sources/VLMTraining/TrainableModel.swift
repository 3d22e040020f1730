import Foundation
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor

// The model a fine-tune trains: the loaded model's own forward (VLMModels) on a recording tape —
// the Llama-family decoder with its frozen weights read in their stored encoding and LoRA
// adapters as trainable leaves, and, for LLaVA, image features from the vision tower (frozen and
// cached, or trained on the tape) through the projector, spliced over the image token rows. What
// trains is the loaded model's leaves, so generation after (or during) a fine-tune uses them.

public enum FineTuneMode: String, Sendable, Codable, CaseIterable {
    /// LoRA on the language model's linear layers.
    case lora
    /// Only the multimodal projector (LLaVA's `tune_mm_mlp_adapter`).
    case projector
    /// LLaVA's LoRA recipe: LoRA on the language model, the projector trained in full.
    case loraProjector = "lora+projector"
    /// The vision tower and the projector (LLaVA-NeXT's `mm_tunable_parts=mm_vision_tower,mm_mlp_adapter`):
    /// how a tower trained from scratch learns to see.
    case visionProjector = "vision+projector"
    /// All three: the tower, the projector, and LoRA on the language model.
    case visionLoRAProjector = "vision+lora+projector"

    public var trainsLoRA: Bool { self == .lora || self == .loraProjector || self == .visionLoRAProjector }
    public var trainsProjector: Bool { self != .lora }
    public var trainsVisionTower: Bool { self == .visionProjector || self == .visionLoRAProjector }
}

/// What the loss compares.
public enum TrainingObjective: String, Sendable, Codable, CaseIterable {
    /// Cross-entropy of the assistant's reply tokens (LLaVA's, and the default).
    case nextToken = "next-token"
    /// Every projected image token against the sum of the language model's input embeddings of
    /// the text the data names for it (`image_token_texts`), as `Tape.embeddingMatch`: image
    /// tokens are placed among the words the language model already reads. Only the tower and
    /// the projector take part; the language model does not run.
    case imageTokenEmbeddings = "image-token-embeddings"
}

public final class TrainableModel: @unchecked Sendable {
    public let chat: ChatModel
    public let llava: LlavaModel?
    public let mode: FineTuneMode
    public let objective: TrainingObjective
    public let lora: LoRA?
    public let layout: ModuleLayout
    public let parameters: [Parameter]
    let decoder: LlamaModel
    /// The head's weight for the chunked loss: in its stored encoding, which the loss reads a
    /// block of vocabulary rows at a time (a Float32 copy of a 7B model's head is 800 MB).
    private var lmHead: LinearWeight { decoder.lmHead.weightLeaf.map { .value($0) } ?? .stored(decoder.lmHead.weight) }
    /// The tower, when it trains.
    let trainedTower: VisionTransformer?
    /// A projector or tower an `--adapter-init` folder put in place that this run keeps frozen:
    /// saved with the trained parts, so the output folder holds everything that differs from
    /// the model (stage 2 with a frozen tower after a stage 1 that trained it).
    public let carriesProjector: Bool, carriesVisionTower: Bool
    /// Vision-tower outputs by image path when the tower is frozen: each image is encoded once.
    private var visionCache: [String: Tensor] = [:]
    /// Each image's size before preprocessing (LLaVA-NeXT packs its features by it).
    private var imageSizes: [String: (height: Int, width: Int)] = [:]

    /// Prepares `chat` for training in `mode`. `lora` is a fresh or loaded adapter set (required
    /// for the LoRA modes); it is installed on the decoder. `initKind` is what an `--adapter-init`
    /// folder applied to `chat` held. The model's leaves that `mode` trains are marked trainable,
    /// every other leaf frozen.
    public init(chat: ChatModel, mode: FineTuneMode, lora: LoRA?, objective: TrainingObjective = .nextToken,
                initKind: AdapterKind? = nil) throws {
        self.chat = chat
        self.mode = mode
        self.objective = objective
        carriesProjector = initKind?.trainsProjector ?? false
        carriesVisionTower = initKind?.trainsVisionTower ?? false
        decoder = chat.decoder
        llava = (chat as? VisionLanguageModel)?.llava
        layout = llava == nil ? .text : .llava
        if mode.trainsProjector && llava == nil {
            throw TrainingError("--mode \(mode.rawValue) needs a LLaVA model (this one has no projector)")
        }
        if objective == .imageTokenEmbeddings && (mode.trainsLoRA || llava == nil) {
            throw TrainingError("--objective \(objective.rawValue) trains the vision side only: use --mode projector or vision+projector with a LLaVA model")
        }
        if mode.trainsLoRA && lora == nil { throw TrainingError("--mode \(mode.rawValue) needs LoRA settings") }
        self.lora = mode.trainsLoRA ? lora : nil
        try decoder.setAdapters(self.lora?.adapters ?? [:])
        var parameters = self.lora?.parameters(layout: layout) ?? []
        if mode.trainsProjector, let llava {
            parameters += llava.projector.namedLeaves.map { Parameter(name: $0.0, variable: $0.1, group: .projector) }
        }
        if mode.trainsVisionTower, let llava {
            guard let tower = llava.visionTransformer else { throw TrainingError("--mode \(mode.rawValue): this vision tower cannot be trained") }
            guard llava.config.visionFeatureLayers.count == 1 else {
                throw TrainingError("--mode \(mode.rawValue) needs a single vision_feature_layer (this model concatenates \(llava.config.visionFeatureLayers.count))")
            }
            let leaves: [(String, Variable)]
            do { leaves = try tower.leaves(featureLayer: llava.config.visionFeatureLayers[0]) } catch { throw TrainingError("\(error)") }
            parameters += leaves.map { Parameter(name: "vision_tower.vision_model." + $0.0, variable: $0.1, group: .visionTower) }
            trainedTower = tower
        } else {
            trainedTower = nil
        }
        self.parameters = parameters
        Self.freezeAll(chat)
        for p in parameters { p.variable.requiresGrad = true }
    }

    /// Marks every leaf of `chat` a fine-tune could train as frozen (an earlier fine-tune of the
    /// same loaded model may have trained others).
    private static func freezeAll(_ chat: ChatModel) {
        for adapter in chat.decoder.layers.flatMap({ [$0.q, $0.k, $0.v, $0.o, $0.gate, $0.up, $0.down] }).compactMap(\.adapter) {
            adapter.a.requiresGrad = false
            adapter.b.requiresGrad = false
        }
        guard let llava = (chat as? VisionLanguageModel)?.llava else { return }
        for (_, leaf) in llava.projector.namedLeaves { leaf.requiresGrad = false }
        for (_, leaf) in llava.visionTransformer?.namedLeaves ?? [] { leaf.requiresGrad = false }
    }

    /// What the objective divides a step's summed loss by, for `batch`'s share: its label tokens
    /// (next-token), or the elements of its image tokens that have a text (image-token-embeddings:
    /// a mean per element, as the next-token loss is a mean per token, keeps the step's gradient
    /// at the scale clipping and the learning rates expect).
    public func lossUnits(_ batch: TrainingBatch) -> Int {
        switch objective {
        case .nextToken: return batch.labelTokenCount
        case .imageTokenEmbeddings: return batch.imageTokenTexts.reduce(0) { $0 + ($1?.count ?? 0) } * decoder.config.hiddenSize
        }
    }

    /// The objective's loss over `batch`, divided by `normalizer` (the accumulated batch's
    /// `lossUnits`), built on `tape`. LoRA dropout draws from `random` when `training`
    /// (evaluation runs without it).
    public func loss(_ batch: TrainingBatch, normalizer: Float, tape: Tape, random: inout SeededRandom,
                     training: Bool = true) throws -> (loss: Variable, stats: TokenStatistics) {
        let rows = batch.layout.batch, length = batch.layout.length
        try MemoryBudget.require(decoder.config.activationBytes(rows: rows, length: length, recording: true,
                                                                checkpointing: tape.gradientCheckpointing),
                                 for: "a training batch of \(rows)×\(length) positions (\(batch.sources.first ?? "?"))")
        switch objective {
        case .nextToken: return try nextTokenLoss(batch, normalizer: normalizer, tape: tape, random: &random, training: training)
        case .imageTokenEmbeddings: return try imageTokenEmbeddingLoss(batch, normalizer: normalizer, tape: tape)
        }
    }

    /// Σ CE over the batch's targets / `normalizer`.
    private func nextTokenLoss(_ batch: TrainingBatch, normalizer: Float, tape: Tape, random: inout SeededRandom,
                               training: Bool) throws -> (loss: Variable, stats: TokenStatistics) {
        let d = decoder.config.hiddenSize
        let embeddings = Tensor(shape: [batch.layout.rows, d], zeroed: true)
        let imageRows = Set(batch.imageRows)
        for (i, id) in batch.inputIDs.enumerated() where !imageRows.contains(i) {
            try decoder.embed([id], into: embeddings.data + i * d)
        }
        var x = Variable(embeddings)
        if !imageRows.isEmpty {
            x = tape.scatterRows(x, positions: batch.imageRows, source: try imageTokens(batch.imagePaths.flatMap { $0 }, of: batch, tape: tape))
        }
        // LoRA dropout draws from the run's stream while training.
        tape.random = training ? random : nil
        let hidden = decoder.hiddenStates(x, pass: .batch(batch.layout), tape: tape)
        if training, let advanced = tape.random { random = advanced }
        tape.random = nil
        // Logits only where a target is: the other rows cannot change the loss.
        let rows = batch.targets.indices.filter { batch.targets[$0] != ignoreIndex }
        let picked = tape.gather(hidden, indices: rows)
        // The head and the loss together, in chunks of rows (the logits are never all in memory).
        return tape.linearCrossEntropy(tape.rmsNorm(picked, weight: decoder.norm, eps: decoder.config.rmsNormEps), lmHead,
                                       targets: rows.map { batch.targets[$0] }, normalizer: normalizer, gradientInForward: training)
    }

    /// `Tape.embeddingMatch` of the projected image tokens against the sums of the language
    /// model's input embeddings of their texts (the batch's distinct sums are the candidates),
    /// for the rows that carry `image_token_texts`, / `normalizer` (the accumulated batch's
    /// image-token elements).
    private func imageTokenEmbeddingLoss(_ batch: TrainingBatch, normalizer: Float, tape: Tape) throws -> (loss: Variable, stats: TokenStatistics) {
        let rows = batch.imageTokenTexts.indices.filter { batch.imageTokenTexts[$0] != nil }
        guard !rows.isEmpty else {
            throw TrainingError("\(batch.sources.joined(separator: ", ")): --objective \(objective.rawValue) needs rows with \"image_token_texts\"")
        }
        let paths = try rows.flatMap { r in
            guard !batch.imagePaths[r].isEmpty else { throw TrainingError("\(batch.sources[r]): image_token_texts without an image") }
            return batch.imagePaths[r]
        }
        let tokens = try imageTokens(paths, of: batch, tape: tape)           // [rows·featureCount, hidden]
        let texts = rows.flatMap { batch.imageTokenTexts[$0]! }
        checkShape(tokens.rows == texts.count, "image-token-embeddings: \(tokens.shape) tokens for \(texts.count) texts")
        var index: [[Int]: Int] = [:], distinct: [[Int]] = []
        let labels = texts.map { ids in
            if let i = index[ids] { return i }
            index[ids] = distinct.count
            distinct.append(ids)
            return distinct.count - 1
        }
        let d = decoder.config.hiddenSize
        let candidates = Tensor(shape: [distinct.count, d], zeroed: true)    // Σ of each text's input embeddings
        let word = Tensor(shape: [d], zeroed: false)
        for (i, ids) in distinct.enumerated() {
            for id in ids {
                try decoder.embed([id], into: word.data)
                Kernels.add(word.data, into: candidates.data + i * d, d)
            }
        }
        var (loss, stats) = tape.embeddingMatch(tokens, candidates: candidates, labels: labels, normalizer: normalizer)
        stats.lossSum /= Double(d)   // lossSum / tokens is then the per-element loss that training reports
        return (loss, stats)
    }

    /// The projected image tokens of the images at `paths` (of `batch`), `[images·featureCount,
    /// hidden]`: through the tower on the tape when it trains, else from cached features.
    private func imageTokens(_ paths: [String], of batch: TrainingBatch, tape: Tape) throws -> Variable {
        guard let llava else {
            throw TrainingError("\(batch.sources.joined(separator: ", ")): an image row, but the model has no vision tower")
        }
        let features: Variable
        if let trainedTower {
            // LLaVA-NeXT: every tile of every image, in order.
            let tiles = try paths.flatMap { try llava.tiles(try pixels($0, llava: llava)) }
            features = try trainedTower.features(tiles, featureLayer: llava.config.visionFeatureLayers[0],
                                                 dropClassToken: llava.dropsClassToken, tape: tape)
        } else {
            features = Variable(try visionFeatures(paths, llava: llava))
        }
        let projected = llava.projector.forward(features, tape: tape)
        guard llava.anyResolution != nil else { return projected }
        do {
            return try llava.packImageFeatures(projected, sizes: paths.map { imageSizes[$0]! }, tape: tape)
        } catch {
            throw TrainingError("\(batch.sources.joined(separator: ", ")): \(error)")
        }
    }

    /// The model input of the image at `path` (its size recorded).
    private func pixels(_ path: String, llava: LlavaModel) throws -> Tensor {
        do {
            let image = try ImageLoader.load(path: path)
            imageSizes[path] = (image.height, image.width)
            return try llava.modelInput(image)
        } catch { throw TrainingError("\(error)") }
    }

    /// Frozen-tower features `[images·featureCount, visionHidden]` stacked in order.
    private func visionFeatures(_ paths: [String], llava: LlavaModel) throws -> Tensor {
        let blocks = try paths.map { path -> Tensor in
            if let cached = visionCache[path] { return cached }
            let features = try llava.tileFeatures(pixels: pixels(path, llava: llava))
            visionCache[path] = features
            return features
        }
        let width = blocks[0].shape[1]
        let rows = blocks.reduce(0) { $0 + $1.shape[0] }
        let out = Tensor(shape: [rows, width], zeroed: false)
        var offset = 0
        for b in blocks { (out.data + offset).update(from: b.data, count: b.count); offset += b.count }
        return out
    }
}

extension TrainingDataset {
    /// Positions of the image at a path when they depend on its size (LLaVA-NeXT); nil otherwise.
    public static func imageFeatureCount(for chat: ChatModel) -> (@Sendable (String) throws -> Int)? {
        guard let llava = (chat as? VisionLanguageModel)?.llava, llava.anyResolution != nil else { return nil }
        return { path in
            let image = try ImageLoader.load(path: path)
            return llava.imageTokenCount(height: image.height, width: image.width)
        }
    }
}

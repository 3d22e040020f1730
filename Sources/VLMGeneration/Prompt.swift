import Foundation
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers

// The one path from a prompt to a reply, shared by the chat session, `generate`, `logits` and
// evaluation: prompt ids with image placeholders → slots (each image's feature rows in order) →
// input embeddings (image rows from features encoded once per image) → the decoder on a KV cache
// → the generator.

/// One position of the model's input: a text token or row `row` of an image's features.
public enum InputSlot: Equatable, Sendable {
    case token(Int)
    case image(hash: String, row: Int)
}

/// A prompt ready to run: its ids with each image placeholder expanded into the rows of one image.
public struct Prompt: Sendable {
    public let slots: [InputSlot]

    /// Replaces each run of image tokens in `ids` with the rows of the next of `images` (their
    /// feature keys), in order. A run of one token expands; a run already of the feature count is
    /// used as is; anything else is an error, as are placeholders and images that do not pair up.
    /// `featureCounts` gives each image's count when they differ (any-resolution models).
    public init(ids: [Int], images: [String], support: ImageSupport?, featureCounts: [Int]? = nil) throws {
        guard let support else {
            guard images.isEmpty else { throw ModelError("this model takes no images") }
            slots = ids.map { .token($0) }
            return
        }
        var slots: [InputSlot] = []
        var i = 0
        let counts = featureCounts ?? Array(repeating: support.featureCount, count: images.count)
        guard counts.count == images.count else { throw ModelError("\(counts.count) feature counts for \(images.count) images") }
        let runs = try Self.imagePlacements(ids, images: images.count, tokenID: support.tokenID, featureCounts: counts)
        for ((run, image), count) in zip(zip(runs, images), counts) {
            slots += ids[i..<run.start].map { .token($0) }
            slots += (0..<count).map { .image(hash: image, row: $0) }
            i = run.start + run.count
        }
        slots += ids[i...].map { .token($0) }
        self.slots = slots
    }

    /// The image-token runs of `ids`, the k-th standing for the k-th of `images` images: each run
    /// one token (to expand) or already `featureCount` long. Placeholders and images that do not
    /// pair up one to one, in order, are an error. Chat prompts and training rows with several
    /// images are spliced by this one rule.
    public static func imagePlacements(_ ids: [Int], images: Int, tokenID: Int, featureCount: Int) throws -> [(start: Int, count: Int)] {
        try imagePlacements(ids, images: images, tokenID: tokenID, featureCounts: Array(repeating: featureCount, count: images))
    }

    /// `imagePlacements` with each image's own count (`featureCounts[k]` for the k-th image).
    public static func imagePlacements(_ ids: [Int], images: Int, tokenID: Int, featureCounts: [Int]) throws -> [(start: Int, count: Int)] {
        let runs = imageRuns(ids, tokenID: tokenID)
        for (k, run) in runs.enumerated() {
            guard k < images else { throw ModelError("the prompt has more image tokens than images (\(images))") }
            let expected = k < featureCounts.count ? featureCounts[k] : 1
            guard run.count == 1 || run.count == expected else {
                throw ModelError("a run of \(run.count) image tokens: expected 1 or \(expected) per image")
            }
        }
        guard runs.count == images else {
            throw ModelError("\(images) images but \(runs.count) image placeholders in the prompt")
        }
        return runs
    }

    public init(slots: [InputSlot]) { self.slots = slots }

    /// The runs of `tokenID` in `ids` as (start, length): each run is one image's placeholder,
    /// one token or already expanded to the image's feature count. Prompts and training rows
    /// read placeholders by this one rule.
    public static func imageRuns(_ ids: [Int], tokenID: Int) -> [(start: Int, count: Int)] {
        var runs: [(start: Int, count: Int)] = []
        var i = 0
        while i < ids.count {
            guard ids[i] == tokenID else { i += 1; continue }
            var run = 0
            while i + run < ids.count && ids[i + run] == tokenID { run += 1 }
            runs.append((i, run))
            i += run
        }
        return runs
    }

    public var count: Int { slots.count }

    /// Refuses a prompt the model's context cannot hold, before anything is computed or
    /// allocated for it (past the context the model degenerates, and memory grows with length).
    public func checkFits(_ model: ChatModel) throws {
        let context = model.decoder.config.contextLength
        guard count <= context else {
            throw ModelError("the prompt is \(count) tokens, more than the model's context of \(context)")
        }
    }

    /// The text tokens (what the repetition penalty sees).
    public var tokenIDs: [Int] { slots.compactMap { if case .token(let id) = $0 { return id } else { return nil } } }

    /// Input embeddings `[slots, hidden]` of `slots[range]`: token rows from the embedding table,
    /// image rows from `features`.
    public func embeddings(_ range: Range<Int>? = nil, model: ChatModel, features: ImageFeatures) throws -> Tensor {
        let part = slots[range ?? slots.indices]
        let hidden = model.decoder.config.hiddenSize
        let out = Tensor(shape: [part.count, hidden], zeroed: false)
        for (i, slot) in part.enumerated() {
            switch slot {
            case .token(let id):
                try model.decoder.embed([id], into: out.data + i * hidden)
            case .image(let hash, let row):
                let f = try features.features(hash: hash)
                (out.data + i * hidden).update(from: f.data + row * hidden, count: hidden)
            }
        }
        return out
    }

    /// Runs `slots[range]` after what `cache` holds and returns the last position's logits.
    public func run(_ range: Range<Int>? = nil, model: ChatModel, features: ImageFeatures, cache: KVCache) throws -> UnsafeBufferPointer<Float> {
        try checkFits(model)
        let x = try embeddings(range, model: model, features: features)
        return try withExtendedLifetime(x) { try model.decoder.forward(embeddings: x.data, count: x.shape[0], cache: cache) }
    }

    /// The reply to this prompt as a generator: `slots[start...]` run after the `start` positions
    /// already in `cache`, then one token at a time until the context is full. `onPrefill` sees the
    /// prompt's last logits.
    public func generator(model: ChatModel, features: ImageFeatures, cache: KVCache, from start: Int = 0,
                          parameters: GenerationParameters, onPrefill: ((UnsafeBufferPointer<Float>) -> Void)? = nil,
                          onToken: ((Int) -> Void)? = nil) throws -> Generator {
        guard !slots.isEmpty else { throw ModelError("empty prompt") }
        try checkFits(model)
        // The image rows are encoded before the generator starts (progress is reported then).
        let x = try embeddings(start..<slots.count, model: model, features: features)
        let decoder = model.decoder
        return Generator(
            tokenizer: model.tokenizer, parameters: parameters, promptIDs: tokenIDs, stopTokens: model.tokenizer.eosTokenIDs,
            decodeSteps: decoder.config.contextLength - slots.count,
            prefill: {
                let logits = try withExtendedLifetime(x) { try decoder.forward(embeddings: x.data, count: x.shape[0], cache: cache) }
                onPrefill?(logits)
                return logits
            },
            step: { id in
                let logits = try decoder.forward(tokens: [id], cache: cache)
                onToken?(id)
                return logits
            })
    }
}

/// An image attached to a message: its content hash (the feature-cache key) and its encoder input.
public struct ImageInput: @unchecked Sendable {
    public let hash: String
    public let pixels: Tensor
    /// The image's size before preprocessing (what any-resolution models count and unpad by).
    public let size: (height: Int, width: Int)?
    public init(hash: String, pixels: Tensor, size: (height: Int, width: Int)? = nil) {
        self.hash = hash; self.pixels = pixels; self.size = size
    }
}

/// Image features by key, each image encoded once (vision tower and projector as applied now).
/// Images are attached before they are needed; features can also be given directly.
public final class ImageFeatures {
    public let model: ChatModel
    private var pending: [String: ImageInput] = [:]
    private var cache: [String: Tensor] = [:]
    /// Images the vision tower actually ran on.
    public private(set) var encoderRuns = 0
    /// Called with (encoded, to encode) as `encode(_:)` works through the images it was given.
    public var progress: ((_ done: Int, _ total: Int) -> Void)?

    public init(model: ChatModel) { self.model = model }

    /// Makes `inputs` available under their hashes (encoded on first use).
    public func attach(_ inputs: [ImageInput]) {
        for input in inputs where cache[input.hash] == nil { pending[input.hash] = input }
    }

    /// Features computed elsewhere, `[featureCount, hidden]`, under `hash`.
    public func insert(_ features: Tensor, hash: String) { cache[hash] = features }

    public func contains(_ hash: String) -> Bool { cache[hash] != nil }

    /// Encodes every image of `prompt` not encoded yet, reporting progress.
    public func encode(_ prompt: Prompt) throws {
        var seen = Set<String>(), hashes: [String] = []
        for case .image(let hash, _) in prompt.slots where cache[hash] == nil && seen.insert(hash).inserted { hashes.append(hash) }
        guard !hashes.isEmpty else { return }
        progress?(0, hashes.count)
        for (i, hash) in hashes.enumerated() {
            _ = try features(hash: hash)
            progress?(i + 1, hashes.count)
        }
    }

    /// The features of the image under `hash`, encoding it now if needed.
    public func features(hash: String) throws -> Tensor {
        if let f = cache[hash] { return f }
        guard let input = pending[hash], let support = model.images else { throw ModelError("image \(hash.prefix(12)) is not attached") }
        let f = try support.encode(input)
        encoderRuns += 1
        cache[hash] = f
        pending[hash] = nil
        return f
    }
}

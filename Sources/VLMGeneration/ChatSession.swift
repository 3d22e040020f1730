import Foundation
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers

/// An image attached to a message: its content hash (the feature-cache key) and its encoder input.
public struct ImageInput: @unchecked Sendable {
    public let hash: String
    public let pixels: Tensor
    public init(hash: String, pixels: Tensor) { self.hash = hash; self.pixels = pixels }
}

/// What a chat needs from a model. Text-only models have no `images`.
public protocol ChatModel: AnyObject {
    var decoder: LlamaModel { get }
    var tokenizer: Tokenizer { get }
    var template: ChatTemplate { get }
    var images: ImageSupport? { get }
    /// Prompt text → ids; models whose image placeholder is no vocabulary token override this.
    func encodePrompt(_ text: String, addSpecialTokens: Bool) -> [Int]
}

extension ChatModel {
    public func encodePrompt(_ text: String, addSpecialTokens: Bool) -> [Int] {
        tokenizer.encode(text, addSpecialTokens: addSpecialTokens)
    }
}

/// How a model sees images: the placeholder token, how many positions one image takes, its
/// preprocessing, and the encoder (vision tower + projector) giving `[featureCount, hidden]`.
public struct ImageSupport {
    public let tokenID: Int
    public let tokenText: String
    public let featureCount: Int
    public let preprocess: (RGBImage) -> Tensor
    public let encode: (Tensor) throws -> Tensor
    public init(tokenID: Int, tokenText: String, featureCount: Int,
                preprocess: @escaping (RGBImage) -> Tensor, encode: @escaping (Tensor) throws -> Tensor) {
        self.tokenID = tokenID; self.tokenText = tokenText; self.featureCount = featureCount
        self.preprocess = preprocess; self.encode = encode
    }
}

extension TextModel: ChatModel {
    public var images: ImageSupport? { nil }
}

/// One position of the model's input: a text token or row `row` of an image's features.
public enum InputSlot: Equatable, Sendable {
    case token(Int)
    case image(hash: String, row: Int)
}

/// A conversation with one model, with the KV cache kept between turns: a follow-up turn
/// re-renders the whole chat, reuses the longest cached prefix and runs only what is new.
/// Images are encoded once per distinct content (`encoderRuns` counts real encodes).
public final class ChatSession {
    public let model: ChatModel
    public private(set) var messages: [ChatMessage] = []
    public var system: String?
    public private(set) var encoderRuns = 0

    private var cache: KVCache
    private var cachedSlots: [InputSlot] = []
    private var features: [String: Tensor] = [:]
    private var messageImages: [[ImageInput]] = []

    /// `history` resumes an earlier conversation; `historyImages` holds each message's images.
    public init(model: ChatModel, system: String? = nil, history: [ChatMessage] = [], historyImages: [[ImageInput]]? = nil) {
        self.model = model
        self.system = system
        messages = history
        messageImages = historyImages ?? history.map { _ in [] }
        cache = model.decoder.makeCache(capacity: 512)
    }

    /// Runs the history through the model now, so the next message starts from a warm cache.
    public func warm() throws {
        guard !messages.isEmpty else { return }
        let slots = try inputSlots(addGenerationPrompt: false)
        let embeddings = try embed(slots)
        // The pointer is only valid while the tensor is alive.
        withExtendedLifetime(embeddings) { _ = model.decoder.forward(embeddings: embeddings.data, count: slots.count, cache: cache) }
        cachedSlots = slots
    }

    /// Forgets the conversation (keeps encoded image features).
    public func clear() {
        messages = []
        messageImages = []
        cachedSlots = []
        cache.truncate(to: 0)
    }

    /// Positions the next reply reuses from the cache (for tests and stats).
    public private(set) var reusedPositions = 0

    /// Adds a user message and returns the generator of the assistant's reply; call `commit`
    /// with the final text once the reply is done (or cancelled). `encodeProgress` is called with
    /// (images encoded, images to encode) before the first and after each image the vision tower
    /// runs on; images already encoded in this chat are not counted, and without any it is not called.
    public func send(_ text: String, images: [ImageInput] = [], parameters: GenerationParameters,
                     encodeProgress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Generator {
        var text = text
        if !images.isEmpty {
            guard let support = model.images else { throw ModelError("this model takes no images") }
            // LLaVA convention: without a placeholder, the image goes first in the user's turn.
            if !text.contains(support.tokenText) {
                text = String(repeating: support.tokenText + "\n", count: images.count) + text
            }
        }
        messages.append(ChatMessage(role: .user, text: text))
        messageImages.append(images)
        do {
            let slots = try inputSlots(addGenerationPrompt: true)
            return try generator(for: slots, parameters: parameters, encodeProgress: encodeProgress)
        } catch {
            messages.removeLast()
            messageImages.removeLast()
            throw error
        }
    }

    /// Records the assistant's reply so the next turn renders it.
    public func commit(reply: String) {
        messages.append(ChatMessage(role: .assistant, text: reply))
        messageImages.append([])
    }

    /// Renders the conversation and expands each image placeholder into its feature rows.
    func inputSlots(addGenerationPrompt: Bool) throws -> [InputSlot] {
        var all = messages
        if let system, all.first?.role != .system { all.insert(ChatMessage(role: .system, text: system), at: 0) }
        let ids = model.encodePrompt(model.template.render(all, addGenerationPrompt: addGenerationPrompt), addSpecialTokens: false)
        return try Self.expand(ids: ids, images: messageImages.flatMap { $0 }, support: model.images)
    }

    /// Replaces each run of image tokens with one image's feature rows, in order. A run of one
    /// token expands; a run already of the feature count is used as is; anything else is an error.
    public static func expand(ids: [Int], images: [ImageInput], support: ImageSupport?) throws -> [InputSlot] {
        guard let support else { return ids.map { .token($0) } }
        var slots: [InputSlot] = []
        var next = 0, i = 0
        while i < ids.count {
            guard ids[i] == support.tokenID else { slots.append(.token(ids[i])); i += 1; continue }
            var run = 0
            while i + run < ids.count && ids[i + run] == support.tokenID { run += 1 }
            guard run == 1 || run == support.featureCount else {
                throw ModelError("a run of \(run) image tokens: expected 1 or \(support.featureCount) per image")
            }
            guard next < images.count else { throw ModelError("the prompt has more image tokens than images (\(images.count))") }
            slots += (0..<support.featureCount).map { .image(hash: images[next].hash, row: $0) }
            next += 1
            i += run
        }
        guard next == images.count else {
            throw ModelError("\(images.count) images but \(next) image placeholders in the prompt")
        }
        return slots
    }

    /// Runs `slots` after the longest prefix already in the cache and starts generating.
    public func generator(for slots: [InputSlot], parameters: GenerationParameters,
                          encodeProgress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Generator {
        guard !slots.isEmpty else { throw ModelError("empty prompt") }
        var common = 0
        while common < min(slots.count, cachedSlots.count) && slots[common] == cachedSlots[common] { common += 1 }
        // Re-run at least the last position: its logits start the reply.
        common = min(common, slots.count - 1)
        cache.truncate(to: common)
        cachedSlots = Array(slots.prefix(common))
        reusedPositions = common

        let newSlots = Array(slots[common...])
        let embeddings = try embed(newSlots, encodeProgress: encodeProgress)
        let decoder = model.decoder, cache = self.cache
        let promptIDs = slots.compactMap { if case .token(let id) = $0 { return id } else { return nil } }
        return Generator(
            tokenizer: model.tokenizer, parameters: parameters, promptIDs: promptIDs, stopTokens: model.tokenizer.eosTokenIDs,
            prefill: { [unowned self] in
                let logits = withExtendedLifetime(embeddings) {
                    decoder.forward(embeddings: embeddings.data, count: newSlots.count, cache: cache)
                }
                self.cachedSlots += newSlots
                return logits
            },
            step: { [unowned self] id in
                let logits = try decoder.forward(tokens: [id], cache: cache)
                self.cachedSlots.append(.token(id))
                return logits
            })
    }

    /// Input embeddings `[slots, hidden]`: token rows from the embedding table, image rows from
    /// the (cached) encoder output.
    private func embed(_ slots: [InputSlot], encodeProgress: ((Int, Int) -> Void)? = nil) throws -> Tensor {
        let hidden = model.decoder.config.hiddenSize
        let out = Tensor(shape: [slots.count, hidden], zeroed: false)
        let pending = Dictionary(messageImages.flatMap { $0 }.map { ($0.hash, $0) }, uniquingKeysWith: { a, _ in a })
        let toEncode = Set(slots.compactMap { slot -> String? in
            if case .image(let hash, _) = slot, features[hash] == nil { return hash } else { return nil }
        }).count
        var encoded = 0
        if toEncode > 0 { encodeProgress?(0, toEncode) }
        for (i, slot) in slots.enumerated() {
            switch slot {
            case .token(let id):
                try model.decoder.embed([id], into: out.data + i * hidden)
            case .image(let hash, let row):
                let fresh = features[hash] == nil
                let f = try features(hash: hash, input: pending[hash])
                if fresh { encoded += 1; encodeProgress?(encoded, toEncode) }
                (out.data + i * hidden).update(from: f.data + row * hidden, count: hidden)
            }
        }
        return out
    }

    private func features(hash: String, input: ImageInput?) throws -> Tensor {
        if let f = features[hash] { return f }
        guard let input, let support = model.images else { throw ModelError("image \(hash.prefix(12)) is not attached") }
        let f = try support.encode(input.pixels)
        encoderRuns += 1
        features[hash] = f
        return f
    }
}

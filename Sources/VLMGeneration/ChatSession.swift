import Foundation
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers

/// What a chat needs from a model. Text-only models have no `images`.
public protocol ChatModel: AnyObject {
    var decoder: LlamaModel { get }
    var tokenizer: Tokenizer { get }
    var template: ChatTemplate { get }
    var images: ImageSupport? { get }
}

extension ChatModel {
    /// How this model's prompts become ids (its template, tokenizer and image token).
    public var promptEncoding: PromptEncoding {
        PromptEncoding(tokenizer: tokenizer, template: template,
                       imageToken: images.map { PromptEncoding.ImageToken(text: $0.tokenText, id: $0.tokenID) })
    }
}

/// How a model sees images: the placeholder token, how many positions one image takes, its
/// preprocessing, and the encoder (vision tower + projector) giving `[featureCount, hidden]`.
/// Any-resolution models (LLaVA-NeXT) give `sized`: the positions and the features then depend
/// on the image's size before preprocessing, which `input(hash:image:)` records.
public struct ImageSupport {
    public let tokenID: Int
    public let tokenText: String
    public let featureCount: Int
    public let preprocess: (RGBImage) throws -> Tensor
    public let encode: (Tensor) throws -> Tensor
    public let sized: Sized?

    /// Positions for an image of a size, and the encoder given the model input and that size.
    public struct Sized {
        public let featureCount: (_ height: Int, _ width: Int) -> Int
        public let encode: (Tensor, _ height: Int, _ width: Int) throws -> Tensor
        public init(featureCount: @escaping (Int, Int) -> Int, encode: @escaping (Tensor, Int, Int) throws -> Tensor) {
            self.featureCount = featureCount; self.encode = encode
        }
    }

    public init(tokenID: Int, tokenText: String, featureCount: Int,
                preprocess: @escaping (RGBImage) throws -> Tensor, encode: @escaping (Tensor) throws -> Tensor, sized: Sized? = nil) {
        self.tokenID = tokenID; self.tokenText = tokenText; self.featureCount = featureCount
        self.preprocess = preprocess; self.encode = encode; self.sized = sized
    }

    /// `image` preprocessed under `hash`, with its size.
    public func input(hash: String, image: RGBImage) throws -> ImageInput {
        ImageInput(hash: hash, pixels: try preprocess(image), size: (image.height, image.width))
    }

    /// Positions `input` takes in the prompt.
    public func featureCount(of input: ImageInput) throws -> Int {
        guard let sized else { return featureCount }
        guard let size = input.size else { throw ModelError("image \(input.hash.prefix(12)): its size is needed (any-resolution model)") }
        return sized.featureCount(size.height, size.width)
    }

    /// The features of `input`, `[featureCount(of: input), hidden]`.
    public func encode(_ input: ImageInput) throws -> Tensor {
        guard let sized else { return try encode(input.pixels) }
        guard let size = input.size else { throw ModelError("image \(input.hash.prefix(12)): its size is needed (any-resolution model)") }
        return try sized.encode(input.pixels, size.height, size.width)
    }
}

extension TextModel: ChatModel {
    public var images: ImageSupport? { nil }
}

/// A conversation with one model, with the KV cache kept between turns: a follow-up turn
/// re-renders the whole chat, reuses the longest cached prefix and runs only what is new.
/// Images are encoded once per distinct content (`encoderRuns` counts real encodes).
public final class ChatSession {
    public let model: ChatModel
    public private(set) var messages: [ChatMessage] = []
    public var system: String?
    public var encoderRuns: Int { features.encoderRuns }

    private var cache: KVCache
    private var cachedSlots: [InputSlot] = []
    private let features: ImageFeatures
    private var messageImages: [[ImageInput]] = []

    /// `history` resumes an earlier conversation; `historyImages` holds each message's images.
    public init(model: ChatModel, system: String? = nil, history: [ChatMessage] = [], historyImages: [[ImageInput]]? = nil) {
        self.model = model
        self.system = system
        messages = history
        messageImages = historyImages ?? history.map { _ in [] }
        cache = model.decoder.makeCache(capacity: 512)   // grows with the chat, up to the context
        features = ImageFeatures(model: model)
        features.attach(messageImages.flatMap { $0 })
    }

    /// Runs the history through the model now, so the next message starts from a warm cache.
    public func warm() throws {
        guard !messages.isEmpty else { return }
        let prompt = try inputSlots(addGenerationPrompt: false)
        _ = try prompt.run(model: model, features: features, cache: cache)
        cachedSlots = prompt.slots
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
            text = ChatMessage.placingImages(images.count, in: text, placeholder: support.tokenText)
        }
        messages.append(ChatMessage(role: .user, text: text))
        messageImages.append(images)
        features.attach(images)
        do {
            return try generator(for: try inputSlots(addGenerationPrompt: true), parameters: parameters, encodeProgress: encodeProgress)
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
    func inputSlots(addGenerationPrompt: Bool) throws -> Prompt {
        var all = messages
        if let system, all.first?.role != .system { all.insert(ChatMessage(role: .system, text: system), at: 0) }
        let ids = model.promptEncoding.ids(all, addGenerationPrompt: addGenerationPrompt)
        let images = messageImages.flatMap { $0 }
        return try Prompt(ids: ids, images: images.map(\.hash), support: model.images,
                          featureCounts: try model.images.map { s in try images.map { try s.featureCount(of: $0) } })
    }

    /// The slots of `ids` with `images` placed at their placeholders (`Prompt`'s rule).
    public static func expand(ids: [Int], images: [ImageInput], support: ImageSupport?) throws -> [InputSlot] {
        try Prompt(ids: ids, images: images.map(\.hash), support: support,
                   featureCounts: try support.map { s in try images.map { try s.featureCount(of: $0) } }).slots
    }

    /// `generator(for:)` of already expanded slots.
    public func generator(for slots: [InputSlot], parameters: GenerationParameters,
                          encodeProgress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Generator {
        try generator(for: Prompt(slots: slots), parameters: parameters, encodeProgress: encodeProgress)
    }

    /// Runs `prompt` after the longest prefix already in the cache and starts generating.
    public func generator(for prompt: Prompt, parameters: GenerationParameters,
                          encodeProgress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> Generator {
        guard !prompt.slots.isEmpty else { throw ModelError("empty prompt") }
        try prompt.checkFits(model)
        let slots = prompt.slots
        var common = 0
        while common < min(slots.count, cachedSlots.count) && slots[common] == cachedSlots[common] { common += 1 }
        // Re-run at least the last position: its logits start the reply.
        common = min(common, slots.count - 1)
        cache.truncate(to: common)
        cachedSlots = Array(slots.prefix(common))
        reusedPositions = common

        features.progress = encodeProgress
        defer { features.progress = nil }
        try features.encode(Prompt(slots: Array(slots[common...])))
        return try prompt.generator(
            model: model, features: features, cache: cache, from: common, parameters: parameters,
            onPrefill: { [unowned self] _ in self.cachedSlots = slots },
            onToken: { [unowned self] id in self.cachedSlots.append(.token(id)) })
    }
}

import Foundation

/// How one model turns a conversation into input ids: the one rule that chat, `generate`,
/// `logits`, evaluation and the training data encoder all follow. The chat template is rendered
/// and tokenized without added special tokens (templates write their own BOS); the image
/// placeholder becomes the image token, split out and joined with its id when the vocabulary has
/// no such token (LLaVA's `tokenizer_image_token` with its -200 sentinel).
public struct PromptEncoding: Sendable {
    /// An image placeholder's text and the id it stands for in prompt ids.
    public struct ImageToken: Sendable {
        public let text: String
        public let id: Int
        public init(text: String, id: Int) { self.text = text; self.id = id }
    }

    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    /// nil for a text-only model.
    public let imageToken: ImageToken?
    /// The vocabulary has no token spelled like the placeholder, so the text is split at it.
    private let splitsAtPlaceholder: Bool

    public init(tokenizer: Tokenizer, template: ChatTemplate, imageToken: ImageToken?) {
        self.tokenizer = tokenizer
        self.template = template
        self.imageToken = imageToken
        splitsAtPlaceholder = imageToken.map { tokenizer.tokenID($0.text) != $0.id } ?? false
    }

    /// Prompt text → ids.
    public func ids(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        guard splitsAtPlaceholder, let imageToken, text.contains(imageToken.text) else {
            return tokenizer.encode(text, addSpecialTokens: addSpecialTokens)
        }
        return tokenizer.encode(text, placeholder: imageToken.text, as: imageToken.id, addSpecialTokens: addSpecialTokens)
    }

    /// The rendered conversation → ids.
    public func ids(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> [Int] {
        ids(template.render(messages, addGenerationPrompt: addGenerationPrompt))
    }

    /// A conversation from a data row as LLaVA's `preprocess` arranges it: assistant turns before
    /// the first user turn are dropped; with `images`, a turn without a placeholder gets them at
    /// the start of the first user turn (`placingImages`), and the `plain` template (pretraining
    /// captions) reduces the turn holding the placeholder to the placeholder alone.
    public func arranging(_ input: [ChatMessage], images: Int, placeholder: String) -> [ChatMessage] {
        guard let firstUser = input.firstIndex(where: { $0.role == .user }) else { return input }
        var messages = input.enumerated().filter { !($0.element.role == .assistant && $0.offset < firstUser) }.map(\.element)
        guard images > 0 else { return messages }
        if !messages.contains(where: { $0.text.contains(placeholder) }), let user = messages.firstIndex(where: { $0.role == .user }) {
            messages[user].text = ChatMessage.placingImages(images, in: messages[user].text, placeholder: placeholder)
        }
        if template.name == "plain", let at = messages.firstIndex(where: { $0.text.contains(placeholder) }) {
            messages[at].text = placeholder
        }
        return messages
    }
}

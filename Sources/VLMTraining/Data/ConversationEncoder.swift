import Foundation
import VLMTokenizers

/// Turns a conversation into training ids and labels the way LLaVA's `preprocess` does, with the
/// model's own chat template: the whole conversation is rendered and tokenized once, exactly as
/// inference would tokenize it (`ChatSession`: the template's textual BOS, no added special
/// tokens; `<image>` split out when the vocabulary has no such token), and the tokens of each
/// assistant reply plus its end-of-turn marker become targets. The system message, user turns,
/// template scaffolding and the assistant prefix are -100 (`preprocess_v1` / `preprocess_plain`).
///
/// Reply boundaries are found by tokenizing the rendered text up to each boundary and taking the
/// longest common token prefix with the full tokenization, so a token that straddles the start of
/// a reply (SentencePiece's "▁answer" after "ASSISTANT: ") is a target, as in LLaVA.
public struct ConversationEncoder: Sendable {
    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    /// The image token and how many positions one image takes; nil for a text-only model.
    public let image: (tokenID: Int, featureCount: Int)?
    public static let imagePlaceholder = "<image>"

    /// The vocabulary spells the placeholder as the image token itself (HF LLaVA); otherwise the
    /// text is split at it and the pieces joined with the id (original LLaVA's -200 sentinel).
    private let splitsAtPlaceholder: Bool

    public init(tokenizer: Tokenizer, template: ChatTemplate, image: (tokenID: Int, featureCount: Int)?) {
        self.tokenizer = tokenizer
        self.template = template
        self.image = image
        if let image { splitsAtPlaceholder = tokenizer.tokenID(Self.imagePlaceholder) != image.tokenID } else { splitsAtPlaceholder = false }
    }

    /// Ids and labels of `messages` (roles system/user/assistant). With `hasImage`, the one
    /// `<image>` placeholder stays where it is, or "<image>\n" opens the first user turn when there
    /// is none; the image token is expanded to `featureCount` positions with -100 labels.
    /// A leading assistant turn is dropped, as LLaVA skips a first turn not from the human.
    public func encode(_ input: [ChatMessage], hasImage: Bool) throws -> (inputIDs: [Int], labels: [Int], imageRange: Range<Int>?) {
        let placeholder = Self.imagePlaceholder
        var messages = input
        guard let firstUser = messages.firstIndex(where: { $0.role == .user }) else {
            throw TrainingDataError(messages.contains { $0.role == .assistant } ? "no human turn" : "no human or assistant turn")
        }
        messages = messages.enumerated().filter { !($0.element.role == .assistant && $0.offset < firstUser) }.map(\.element)
        guard messages.contains(where: { $0.role == .assistant }) else { throw TrainingDataError("no assistant turn") }

        let counts = messages.map { $0.text.components(separatedBy: placeholder).count - 1 }
        let total = counts.reduce(0, +)
        if hasImage {
            guard image != nil else { throw TrainingDataError("the row has an image but the model takes no images") }
            if total > 1 { throw TrainingDataError("\(total) \(placeholder) placeholders for one image") }
            let userIndex = messages.firstIndex { $0.role == .user }!
            if total == 0 {
                messages[userIndex].text = ChatMessage.placingImages(1, in: messages[userIndex].text, placeholder: placeholder)
            } else if let at = counts.firstIndex(of: 1), messages[at].role == .assistant {
                throw TrainingDataError("the \(placeholder) placeholder is in an assistant turn")
            }
            if template.name == "plain", let at = messages.firstIndex(where: { $0.text.contains(placeholder) }) {
                // preprocess_plain: the human turn is the image alone, the caption follows it.
                messages[at].text = placeholder
            }
        } else if image != nil && total > 0 {
            throw TrainingDataError("\(placeholder) placeholder but the row has no image")
        }

        let full = template.render(messages, addGenerationPrompt: false)
        let ids = encodeText(full)
        var labels = [Int](repeating: ignoreIndex, count: ids.count)
        let keptSuffix = keptSuffixBytes()
        for k in messages.indices where messages[k].role == .assistant {
            let before = template.render(Array(messages[..<k]), addGenerationPrompt: false) + template.assistantPrefix
            let through = template.render(Array(messages[...k]), addGenerationPrompt: false)
            let dropped = template.assistantSuffix.utf8.count - keptSuffix
            let upTo = String(decoding: Array(through.utf8.dropLast(dropped)), as: UTF8.self)
            guard full.utf8.starts(with: before.utf8), full.utf8.starts(with: upTo.utf8) else {
                throw TrainingDataError("the \(template.name) template does not render this conversation turn by turn")
            }
            let start = Self.commonPrefix(ids, encodeText(before))
            let end = Self.commonPrefix(ids, encodeText(upTo))
            if start < end { for i in start..<end { labels[i] = ids[i] } }
        }

        guard let image else { return (ids, labels, nil) }
        let positions = ids.indices.filter { ids[$0] == image.tokenID }
        guard hasImage else {
            if !positions.isEmpty { throw TrainingDataError("the text tokenizes to the image token without an image") }
            return (ids, labels, nil)
        }
        guard positions.count == 1 else {
            throw TrainingDataError("expected one image token after tokenization, found \(positions.count)")
        }
        return Self.expandImage(ids: ids, labels: labels, at: positions[0], run: 1, image: image)
    }

    /// Replaces the image token run at `at` (1 token, or already `featureCount`) with
    /// `featureCount` image tokens labelled -100.
    static func expandImage(ids: [Int], labels: [Int], at p: Int, run: Int, image: (tokenID: Int, featureCount: Int))
        -> (inputIDs: [Int], labels: [Int], imageRange: Range<Int>?) {
        let n = image.featureCount
        let outIDs = Array(ids[..<p]) + [Int](repeating: image.tokenID, count: n) + Array(ids[(p + run)...])
        let outLabels = Array(labels[..<p]) + [Int](repeating: ignoreIndex, count: n) + Array(labels[(p + run)...])
        return (outIDs, outLabels, p..<(p + n))
    }

    /// Prompt text → ids as inference encodes it (`ChatModel.encodePrompt(_, addSpecialTokens: false)`).
    func encodeText(_ text: String) -> [Int] {
        guard splitsAtPlaceholder, let image, text.contains(Self.imagePlaceholder) else {
            return tokenizer.encode(text, addSpecialTokens: false)
        }
        return tokenizer.encode(text, placeholder: Self.imagePlaceholder, as: image.tokenID)
    }

    /// UTF-8 bytes of the assistant suffix that are targets: through the end of the first stop
    /// string in it (ChatML's "<|im_end|>" but not the "\n" after it, as LLaVA's `preprocess_mpt`),
    /// or the whole suffix when it holds none.
    func keptSuffixBytes() -> Int {
        let suffix = template.assistantSuffix
        var kept: Int?
        for stop in template.stopStrings where !stop.isEmpty {
            if let r = suffix.range(of: stop) {
                let end = suffix.utf8.distance(from: suffix.startIndex, to: r.upperBound)
                kept = min(kept ?? end, end)
            }
        }
        return kept ?? suffix.utf8.count
    }

    static func commonPrefix(_ a: [Int], _ b: [Int]) -> Int {
        var i = 0
        while i < a.count && i < b.count && a[i] == b[i] { i += 1 }
        return i
    }
}

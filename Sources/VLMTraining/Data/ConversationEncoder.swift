import Foundation
import VLMGeneration
import VLMTokenizers

/// Turns a conversation into training ids and labels the way LLaVA's `preprocess` does, with the
/// model's own chat template: the whole conversation is rendered and tokenized once by the
/// `PromptEncoding` inference uses, and the tokens of each
/// assistant reply plus its end-of-turn marker become targets. The system message, user turns,
/// template scaffolding and the assistant prefix are -100 (`preprocess_v1` / `preprocess_plain`).
///
/// Reply boundaries are found by tokenizing the rendered text up to each boundary and taking the
/// longest common token prefix with the full tokenization, so a token that straddles the start of
/// a reply (SentencePiece's "▁answer" after "ASSISTANT: ") is a target, as in LLaVA.
public struct ConversationEncoder: Sendable {
    /// The model's own prompt rule, shared with inference.
    public let encoding: PromptEncoding
    /// The image token and how many positions one image takes; nil for a text-only model.
    public let image: (tokenID: Int, featureCount: Int)?
    public static let imagePlaceholder = "<image>"

    public var tokenizer: Tokenizer { encoding.tokenizer }
    public var template: ChatTemplate { encoding.template }

    public init(tokenizer: Tokenizer, template: ChatTemplate, image: (tokenID: Int, featureCount: Int)?) {
        encoding = PromptEncoding(tokenizer: tokenizer, template: template,
                                  imageToken: image.map { PromptEncoding.ImageToken(text: Self.imagePlaceholder, id: $0.tokenID) })
        self.image = image
    }

    /// Ids and labels of `messages` (roles system/user/assistant), arranged as
    /// `PromptEncoding.arranging` does, for a row with `images` images: one `<image>` placeholder
    /// per image, in user turns, in the images' order (none: they all go before the first user
    /// turn's text). Each image token is expanded to `featureCount` positions with -100 labels
    /// (`featureCounts[k]` for the k-th image when given: any-resolution models).
    public func encode(_ input: [ChatMessage], images: Int, featureCounts: [Int]? = nil) throws
        -> (inputIDs: [Int], labels: [Int], imageRanges: [Range<Int>]) {
        let placeholder = Self.imagePlaceholder
        guard input.contains(where: { $0.role == .user }) else {
            throw TrainingDataError(input.contains { $0.role == .assistant } ? "no human turn" : "no human or assistant turn")
        }
        var messages = encoding.arranging(input, images: 0, placeholder: placeholder)
        guard messages.contains(where: { $0.role == .assistant }) else { throw TrainingDataError("no assistant turn") }

        let counts = messages.map { $0.text.components(separatedBy: placeholder).count - 1 }
        let total = counts.reduce(0, +)
        if images > 0 {
            guard image != nil else { throw TrainingDataError("the row has an image but the model takes no images") }
            if total > 0 && total != images {
                throw TrainingDataError("\(total) \(placeholder) placeholder\(total == 1 ? "" : "s") for \(Self.imageCount(images))")
            }
            if let at = counts.indices.first(where: { counts[$0] > 0 && messages[$0].role == .assistant }) {
                throw TrainingDataError("the \(placeholder) placeholder is in an assistant turn (conversations[\(at)])")
            }
            messages = encoding.arranging(messages, images: images, placeholder: placeholder)
        } else if image != nil && total > 0 {
            throw TrainingDataError("\(placeholder) placeholder but the row has no image")
        }

        let full = template.render(messages, addGenerationPrompt: false)
        let ids = encoding.ids(full)
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
            let start = Self.commonPrefix(ids, encoding.ids(before))
            let end = Self.commonPrefix(ids, encoding.ids(upTo))
            if start < end { for i in start..<end { labels[i] = ids[i] } }
        }

        guard let image else { return (ids, labels, []) }
        guard images > 0 else {
            if !Prompt.imageRuns(ids, tokenID: image.tokenID).isEmpty { throw TrainingDataError("the text tokenizes to the image token without an image") }
            return (ids, labels, [])
        }
        let runs = Prompt.imageRuns(ids, tokenID: image.tokenID)
        guard runs.count == images, runs.allSatisfy({ $0.count == 1 }) else {
            throw TrainingDataError("expected \(images) separate image token\(images == 1 ? "" : "s") after tokenization, found \(runs.map(\.count).reduce(0, +))")
        }
        return try Self.expandImages(ids: ids, labels: labels, images: images, image: image, featureCounts: featureCounts)
    }

    /// "one image", "3 images".
    static func imageCount(_ n: Int) -> String { n == 1 ? "one image" : "\(n) images" }

    /// Splices `images` images into `ids` at their placeholders as the chat does
    /// (`Prompt.imagePlacements`): each run of the image token (1 token, or already
    /// `featureCount`) becomes `featureCount` image tokens labelled -100.
    static func expandImages(ids: [Int], labels: [Int], images: Int, image: (tokenID: Int, featureCount: Int),
                             featureCounts: [Int]? = nil) throws -> (inputIDs: [Int], labels: [Int], imageRanges: [Range<Int>]) {
        let counts = featureCounts ?? Array(repeating: image.featureCount, count: images)
        let runs: [(start: Int, count: Int)]
        do {
            guard counts.count == images else { throw TrainingDataError("\(counts.count) feature counts for \(images) images") }
            runs = try Prompt.imagePlacements(ids, images: images, tokenID: image.tokenID, featureCounts: counts)
        } catch {
            throw TrainingDataError("\(error)")
        }
        var outIDs: [Int] = [], outLabels: [Int] = [], ranges: [Range<Int>] = []
        outIDs.reserveCapacity(ids.count + counts.reduce(0, +))
        outLabels.reserveCapacity(ids.count + counts.reduce(0, +))
        var i = 0
        for (run, n) in zip(runs, counts) {
            outIDs += ids[i..<run.start]
            outLabels += labels[i..<run.start]
            ranges.append(outIDs.count..<(outIDs.count + n))
            outIDs += repeatElement(image.tokenID, count: n)
            outLabels += repeatElement(ignoreIndex, count: n)
            i = run.start + run.count
        }
        outIDs += ids[i...]
        outLabels += labels[i...]
        return (outIDs, outLabels, ranges)
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

import Foundation
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers

// Evaluation of a model (with whatever adapter is applied to it) on fine-tuning data: the
// teacher-forced loss, perplexity and token accuracy on the assistant tokens, and exact match of
// greedy answers. Everything runs through the inference path — `LlamaModel.forward` with the
// adapters installed on its linear layers, image features from the model's own encoder, prompts
// rendered and expanded as `ChatSession` does them, replies from `Generator` — so an evaluated
// adapter behaves exactly as it does in chat.

/// One evaluated row.
public struct EvalRowResult: Sendable, Equatable, Codable {
    /// Where the row came from, "file:line".
    public var source: String
    /// The row's "id", if it has one.
    public var id: String?
    /// The row's "kind" tag, if it has one (the demo data's colour, shape, count, where, exists, caption).
    public var kind: String?
    /// The row's "group" tag, if it has one: a subset scored apart within its kind (the
    /// foreign-renderer set's "demo" and "other" question wordings).
    public var group: String?
    public var hasImage: Bool
    /// Teacher-forced statistics over the row's target tokens.
    public var tokens: Int
    public var lossSum: Double
    public var correct: Int
    /// The reference reply (the last assistant turn) and the greedy answer; nil when nothing was
    /// generated (max new tokens 0).
    public var reference: String?
    public var generated: String?
    /// Trimmed strings equal.
    public var exactMatch: Bool
    /// Equal after `Evaluator.normalizedAnswer` (case and trailing punctuation ignored).
    public var normalizedMatch: Bool

    public init(source: String, id: String? = nil, kind: String? = nil, group: String? = nil, hasImage: Bool, tokens: Int, lossSum: Double,
                correct: Int, reference: String? = nil, generated: String? = nil, exactMatch: Bool = false, normalizedMatch: Bool = false) {
        self.source = source; self.id = id; self.kind = kind; self.group = group; self.hasImage = hasImage
        self.tokens = tokens; self.lossSum = lossSum; self.correct = correct
        self.reference = reference; self.generated = generated; self.exactMatch = exactMatch; self.normalizedMatch = normalizedMatch
    }

    /// Mean cross-entropy over the row's target tokens.
    public var loss: Double { tokens > 0 ? lossSum / Double(tokens) : 0 }

    enum CodingKeys: String, CodingKey {
        case source, id, kind, group, hasImage = "has_image", tokens, lossSum = "loss_sum", correct, reference, generated
        case exactMatch = "exact_match", normalizedMatch = "normalized_match"
    }
}

/// Tallies of the rows sharing one "kind" tag.
public struct KindScore: Sendable, Equatable {
    public var rows = 0
    public var generated = 0
    public var exactMatches = 0
    public var normalizedMatches = 0
    public var tokens = 0
    public var lossSum: Double = 0
    public var correct = 0
    public init() {}

    public var exactMatch: Double { generated > 0 ? Double(exactMatches) / Double(generated) : 0 }
    public var normalizedMatch: Double { generated > 0 ? Double(normalizedMatches) / Double(generated) : 0 }
    public var meanLoss: Double { tokens > 0 ? lossSum / Double(tokens) : 0 }
    public var tokenAccuracy: Double { tokens > 0 ? Double(correct) / Double(tokens) : 0 }

    mutating func add(_ row: EvalRowResult) {
        rows += 1
        tokens += row.tokens; lossSum += row.lossSum; correct += row.correct
        if row.generated != nil {
            generated += 1
            if row.exactMatch { exactMatches += 1 }
            if row.normalizedMatch { normalizedMatches += 1 }
        }
    }
}

/// What `Evaluator.run` measured.
public struct EvalResult: Sendable {
    /// The data file, as given.
    public var dataset: String
    public var rows: [EvalRowResult]
    /// Bad rows skipped at load ("file:line: message"), when skipping was asked for.
    public var skippedRows: [String]
    /// Every image was replaced by a mid-grey one of the same size (the image ablation baseline).
    public var blankImages: Bool
    public var maxNewTokens: Int

    public init(dataset: String, rows: [EvalRowResult], skippedRows: [String] = [], blankImages: Bool, maxNewTokens: Int) {
        self.dataset = dataset; self.rows = rows; self.skippedRows = skippedRows
        self.blankImages = blankImages; self.maxNewTokens = maxNewTokens
    }

    /// Everything, pooled over rows.
    public var total: KindScore { rows.reduce(into: KindScore()) { $0.add($1) } }
    /// Target tokens scored.
    public var tokens: Int { total.tokens }
    /// Mean cross-entropy per target token (token-weighted over all rows).
    public var meanLoss: Double { total.meanLoss }
    /// exp(mean loss).
    public var perplexity: Double { exp(meanLoss) }
    /// Share of target tokens whose argmax (teacher-forced) is the target.
    public var tokenAccuracy: Double { total.tokenAccuracy }
    /// Rows with a greedy answer.
    public var generatedRows: Int { total.generated }
    /// Share of generated rows whose answer equals the reference (trimmed); nil without generation.
    public var exactMatch: Double? { generatedRows > 0 ? total.exactMatch : nil }
    /// The same, case- and trailing-punctuation-insensitive.
    public var normalizedMatch: Double? { generatedRows > 0 ? total.normalizedMatch : nil }

    /// Rows by their "kind" tag (rows without one are left out).
    public var byKind: [String: KindScore] {
        var out: [String: KindScore] = [:]
        for row in rows { if let kind = row.kind { out[kind, default: KindScore()].add(row) } }
        return out
    }

    /// Rows by "kind/group", for rows tagged with both.
    public var byKindAndGroup: [String: KindScore] {
        var out: [String: KindScore] = [:]
        for row in rows { if let kind = row.kind, let group = row.group { out[kind + "/" + group, default: KindScore()].add(row) } }
        return out
    }

    /// Metric name/value pairs, as stored one row each in the evals table: loss, perplexity,
    /// token_accuracy, then (when answers were generated) exact_match, exact_match_normalized and
    /// exact_match/<kind>, exact_match_normalized/<kind>, and the same per <kind>/<group>. With
    /// blank images every name is prefixed "blank_images/", so the ablation never mixes with the
    /// real scores.
    public var metrics: [(name: String, value: Double)] {
        var out: [(String, Double)] = [("loss", meanLoss), ("perplexity", perplexity), ("token_accuracy", tokenAccuracy)]
        if let exactMatch, let normalizedMatch {
            out += [("exact_match", exactMatch), ("exact_match_normalized", normalizedMatch)]
            for (kind, score) in byKind.merging(byKindAndGroup, uniquingKeysWith: { a, _ in a }).sorted(by: { $0.key < $1.key })
            where score.generated > 0 {
                out += [("exact_match/\(kind)", score.exactMatch), ("exact_match_normalized/\(kind)", score.normalizedMatch)]
            }
        }
        return blankImages ? out.map { ("blank_images/" + $0.0, $0.1) } : out
    }
}

public enum Evaluator {
    /// The grey every image becomes with `blankImages`.
    public static let blankColour: (UInt8, UInt8, UInt8) = (128, 128, 128)

    /// Evaluates `chat` (adapters as currently applied) on the training-format data file `path`
    /// (LLaVA JSON or JSON Lines, conversation or pre-tokenized rows, as `TrainingDataset.load`
    /// reads them; images against `imageFolder` or the file's folder).
    ///
    /// Per row: the teacher-forced cross-entropy and argmax accuracy of every target (assistant)
    /// token, and — unless `maxNewTokens` is 0 — a greedy answer to the conversation up to its
    /// last assistant turn (with the image), compared with that turn's text. Pre-tokenized rows
    /// use their ids before the last labelled span as the prompt and that span, decoded, as the
    /// reference. `limit` keeps the first rows; `blankImages` replaces each image with a mid-grey
    /// one of the same size. Each image is encoded once. `progress` gets (rows done, rows).
    public static func run(chat: ChatModel, dataset path: String, imageFolder: String? = nil, maxNewTokens: Int = 32,
                           limit: Int? = nil, kinds: Set<String>? = nil, blankImages: Bool = false, skipBadRows: Bool = false,
                           progress: ((_ done: Int, _ total: Int) -> Void)? = nil) throws -> EvalResult {
        let support = chat.images
        let dataset = try TrainingDataset.load(path: path, tokenizer: chat.tokenizer, template: chat.template,
                                               image: support.map { ($0.tokenID, $0.featureCount) },
                                               imageFolder: imageFolder, contextLength: chat.decoder.config.contextLength,
                                               skipBadRows: skipBadRows, imageFeatureCount: TrainingDataset.imageFeatureCount(for: chat))
        let images = ImageFeatureCache(chat: chat, blank: blankImages)
        var rows: [EvalRowResult] = []
        let selection = selectedExamples(dataset, kinds: kinds, limit: limit)
        // A lazily read file is walked once as it is evaluated; its row count is then an upper bound.
        let listed = dataset.isLazy ? nil : Array(selection)
        let total = listed?.count ?? min(limit.map { max($0, 0) } ?? dataset.count, dataset.count)
        progress?(0, total)
        for (n, (example, object)) in (listed.map { AnySequence($0) } ?? AnySequence(selection)).enumerated() {
            // Every image of the row, in order (a chat may attach a newer picture after an older one).
            let features = try example.imagePaths.map { try images.features(path: $0) }
            var row = EvalRowResult(source: example.source, id: object["id"].flatMap(Self.string), kind: object["kind"].flatMap(Self.string),
                                    group: object["group"].flatMap(Self.string), hasImage: example.hasImage, tokens: 0, lossSum: 0, correct: 0,
                                    reference: nil, generated: nil, exactMatch: false, normalizedMatch: false)
            var prefix: Prefix?
            if maxNewTokens > 0, let prompt = try answerPrompt(example, row: object, chat: chat) {
                let reply = try generateKeepingPrompt(promptIDs: prompt.ids, imageFeatures: Array(features.prefix(prompt.images)),
                                                      chat: chat, maxNewTokens: maxNewTokens)
                row.reference = prompt.reference
                row.generated = reply.text
                row.exactMatch = isExactMatch(reply.text, prompt.reference)
                row.normalizedMatch = normalizedAnswer(reply.text) == normalizedAnswer(prompt.reference)
                prefix = reply.prompt
            }
            let stats = try teacherForced(example, chat: chat, imageFeatures: features, prefix: prefix)
            row.tokens = stats.tokens; row.lossSum = stats.lossSum; row.correct = stats.correct
            rows.append(row)
            progress?(n + 1, total)
        }
        return EvalResult(dataset: path, rows: rows, skippedRows: dataset.problems + dataset.problemsMetWhileReading,
                          blankImages: blankImages, maxNewTokens: maxNewTokens)
    }

    /// The examples to evaluate, in file order, each with its raw row (for the fields the dataset
    /// does not keep: kind, id, the reply text): rows of `kinds`, the first `limit` of them.
    /// Lazy, so rows of a lazily read file are parsed and tokenized only when reached.
    private static func selectedExamples(_ dataset: TrainingDataset, kinds: Set<String>?, limit: Int?)
        -> some Sequence<(TrainingExample, [String: Any])> {
        let wanted = (0..<dataset.count).lazy.compactMap { index -> (TrainingExample, [String: Any])? in
            let object = dataset.rawRow(of: index) ?? [:]
            if let kinds, !(object["kind"].flatMap(Self.string).map(kinds.contains) ?? false) { return nil }
            return dataset.example(at: index).map { ($0, object) }
        }
        return wanted.prefix(limit.map { max($0, 0) } ?? Int.max)
    }

    // MARK: - Scoring

    /// Trimmed (whitespace and newlines) strings are equal.
    public static func isExactMatch(_ answer: String, _ reference: String) -> Bool {
        answer.trimmingCharacters(in: .whitespacesAndNewlines) == reference.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Lower-cased, trimmed, trailing punctuation dropped: "Red." and " red" compare equal.
    public static func normalizedAnswer(_ text: String) -> String {
        var t = text.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
        while let last = t.last, last.isPunctuation || last.isWhitespace { t.removeLast() }
        return t
    }

    // MARK: - Teacher forcing

    /// Cross-entropy and argmax accuracy of every target of `example` (position i predicts
    /// `labels[i + 1]`, as the trainer's loss), through `LlamaModel.forward`: the input embeddings
    /// (image rows from `imageFeatures`, `[featureCount, hidden]`) run in chunks that end at each
    /// position whose logits are needed, on one KV cache.
    /// With `prefix` (the greedy answer's prompt, when it is the example's ids up to its first
    /// target), that prompt's cache and last logits stand in for the first chunk, which is the
    /// same computation.
    public static func teacherForced(_ example: TrainingExample, chat: ChatModel, imageFeatures: [Tensor],
                                     prefix: Prefix? = nil) throws -> TokenStatistics {
        let decoder = chat.decoder
        let d = decoder.config.hiddenSize
        let embeddings = try promptEmbeddings(example.inputIDs, imageFeatures: Array(imageFeatures.prefix(example.imageRanges.count)),
                                              chat: chat, source: example.source)
        let wanted = (0..<max(example.length - 1, 0)).filter { example.labels[$0 + 1] != ignoreIndex }
        var stats = TokenStatistics()
        let reuse = prefix.flatMap { p in wanted.first == p.ids.count - 1 && example.inputIDs.starts(with: p.ids) ? p : nil }
        let cache = reuse?.cache ?? decoder.makeCache(capacity: example.length)
        var cursor = 0
        func score(_ logits: UnsafeBufferPointer<Float>, _ target: Int) {
            stats.lossSum += crossEntropy(logits, target: target)
            stats.tokens += 1
            if Sampler.argmax(logits) == target { stats.correct += 1 }
        }
        try withExtendedLifetime(embeddings) {
            for position in wanted {
                if let reuse, position == reuse.ids.count - 1 {
                    cache.truncate(to: reuse.ids.count)
                    reuse.logits.withUnsafeBufferPointer { score($0, example.labels[position + 1]) }
                    cursor = position + 1
                    continue
                }
                let logits = try decoder.forward(embeddings: embeddings.data + cursor * d, count: position - cursor + 1, cache: cache)
                cursor = position + 1
                score(logits, example.labels[position + 1])
            }
        }
        return stats
    }

    /// A prompt already run: its ids (image rows as the image token), the KV cache after it (and
    /// perhaps more), and the logits at its last position.
    public struct Prefix {
        let ids: [Int]
        let cache: KVCache
        let logits: [Float]
    }

    /// −log softmax(logits)[target], in Double.
    static func crossEntropy(_ logits: UnsafeBufferPointer<Float>, target: Int) -> Double {
        var top = -Float.infinity
        for x in logits where x > top { top = x }
        var sum = 0.0
        for x in logits { sum += Foundation.exp(Double(x - top)) }
        return Foundation.log(sum) + Double(top) - Double(logits[target])
    }

    /// Input embeddings of `ids` (its image-token runs, in order, replaced by `imageFeatures`) as
    /// every prompt gets them (`Prompt`).
    static func promptEmbeddings(_ ids: [Int], imageFeatures: [Tensor], chat: ChatModel, source: String) throws -> Tensor {
        do {
            let (prompt, features) = try evalPrompt(ids, imageFeatures: imageFeatures, chat: chat)
            return try prompt.embeddings(model: chat, features: features)
        } catch {
            throw TrainingError("\(source): \(error)")
        }
    }

    /// `ids` as a `Prompt` whose images are `imageFeatures`, under keys of their own.
    static func evalPrompt(_ ids: [Int], imageFeatures: [Tensor], chat: ChatModel) throws -> (Prompt, ImageFeatures) {
        let features = ImageFeatures(model: chat)
        let keys = imageFeatures.indices.map { "eval-image-\($0)" }
        for (key, tensor) in zip(keys, imageFeatures) { features.insert(tensor, hash: key) }
        let prompt = try Prompt(ids: ids, images: keys, support: imageFeatures.isEmpty ? nil : chat.images,
                                featureCounts: imageFeatures.isEmpty ? nil : imageFeatures.map { $0.shape[0] })
        return (prompt, features)
    }

    // MARK: - Greedy answers

    /// The prompt ids of a row's last assistant turn, how many of the row's images are in them
    /// (the first ones), and the reference reply; nil when the row has no prompt before that turn.
    static func answerPrompt(_ example: TrainingExample, row: [String: Any], chat: ChatModel) throws
        -> (ids: [Int], images: Int, reference: String)? {
        if let conversations = row["conversations"] as? [Any] {
            guard let (prompt, reference) = conversationPrompt(conversations, images: example.imagePaths.count, chat: chat) else { return nil }
            // ChatSession.inputSlots: the rendered chat with the generation prompt, no added specials.
            let ids = chat.promptEncoding.ids(prompt, addGenerationPrompt: true)
            let placeholder = ConversationEncoder.imagePlaceholder
            let placed = prompt.reduce(0) { $0 + $1.text.components(separatedBy: placeholder).count - 1 }
            return (ids, min(placed, example.imagePaths.count), reference)
        }
        // Pre-tokenized: the ids before the last labelled span, and that span as text.
        guard let end = example.labels.lastIndex(where: { $0 != ignoreIndex }) else { return nil }
        var start = end
        while start > 0 && example.labels[start - 1] != ignoreIndex { start -= 1 }
        guard start > 0 else { return nil }
        var reply = Array(example.inputIDs[start...end])
        while let last = reply.last, chat.tokenizer.eosTokenIDs.contains(last) { reply.removeLast() }
        var reference = chat.tokenizer.decode(reply)
        for stop in chat.template.stopStrings where !stop.isEmpty {
            if let r = reference.range(of: stop) { reference = String(reference[..<r.lowerBound]) }
        }
        return (Array(example.inputIDs[..<start]), example.imageRanges.filter { $0.lowerBound < start }.count, reference)
    }

    /// The messages before the last assistant turn and that turn's text, with the image
    /// placeholder where training puts it (`ConversationEncoder`): where the row has it, else at
    /// the start of the first user turn.
    static func conversationPrompt(_ turns: [Any], images: Int, chat: ChatModel) -> (prompt: [ChatMessage], reference: String)? {
        // The row already loaded as a training example, so it parses; nil only for safety.
        guard let parsed = try? RowBuilder.messages(turns) else { return nil }
        let messages = chat.promptEncoding.arranging(parsed, images: images, placeholder: ConversationEncoder.imagePlaceholder)
        guard let last = messages.lastIndex(where: { $0.role == .assistant }), messages[..<last].contains(where: { $0.role == .user }) else {
            return nil
        }
        return (Array(messages[..<last]), messages[last].text)
    }

    /// A greedy reply to `promptIDs` (image token runs expanded as `ChatSession.expand` does, with
    /// rows of `imageFeatures`), driven by `Generator` on a fresh KV cache as `ChatSession` drives
    /// it: temperature 0, at most `maxNewTokens`, the template's stop strings, stopping at EOS.
    public static func generate(promptIDs: [Int], imageFeatures: [Tensor], chat: ChatModel, maxNewTokens: Int) throws -> String {
        try generateKeepingPrompt(promptIDs: promptIDs, imageFeatures: imageFeatures, chat: chat, maxNewTokens: maxNewTokens).text
    }

    /// `generate`, also returning the prompt's run for `teacherForced` to continue from.
    static func generateKeepingPrompt(promptIDs: [Int], imageFeatures: [Tensor], chat: ChatModel, maxNewTokens: Int) throws
        -> (text: String, prompt: Prefix) {
        let (prompt, features) = try evalPrompt(promptIDs, imageFeatures: imageFeatures, chat: chat)
        var parameters = GenerationParameters()
        parameters.temperature = 0
        parameters.maxTokens = maxNewTokens
        parameters.stopStrings = chat.template.stopStrings
        let cache = chat.decoder.makeCache(capacity: prompt.count + min(maxNewTokens, chat.decoder.config.contextLength) + 1)
        var promptLogits: [Float] = []
        let generator = try prompt.generator(model: chat, features: features, cache: cache, parameters: parameters,
                                             onPrefill: { promptLogits = Array($0) })
        while try generator.next() != nil {}
        let ids = prompt.slots.map { slot -> Int in
            switch slot {
            case .token(let id): return id
            case .image: return chat.images?.tokenID ?? -1
            }
        }
        return (generator.text, Prefix(ids: ids, cache: cache, logits: promptLogits))
    }

    static func string(_ value: Any) -> String? {
        if let s = value as? String { return s }
        if let n = value as? NSNumber { return n.stringValue }
        return nil
    }
}

/// Image features by path, each image encoded once (`ImageFeatures`: vision tower and projector as
/// applied now). With `blank`, each image is replaced by a mid-grey image of its size.
final class ImageFeatureCache {
    let features: ImageFeatures
    let blank: Bool

    init(chat: ChatModel, blank: Bool) { features = ImageFeatures(model: chat); self.blank = blank }

    func features(path: String) throws -> Tensor {
        if !features.contains(path) {
            guard let support = features.model.images else { throw TrainingError("\(path): the model takes no images") }
            var image: RGBImage
            do { image = try ImageLoader.load(path: path) } catch { throw TrainingError("\(error)") }
            if blank { image = Evaluator.blankImage(like: image) }
            features.attach([try support.input(hash: path, image: image)])
        }
        return try features.features(hash: path)
    }
}

extension Evaluator {
    /// A mid-grey image of `image`'s size.
    public static func blankImage(like image: RGBImage) -> RGBImage {
        RGBImage(width: image.width, height: image.height, filledWith: blankColour)
    }
}

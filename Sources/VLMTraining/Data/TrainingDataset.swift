import Foundation
import VLMGeneration
import VLMTokenizers

/// Supervised fine-tuning data, tokenized up front (LLaVA's `LazySupervisedDataset` +
/// `preprocess`, done once at load so bad rows are reported before training starts).
///
/// Rows come from a LLaVA JSON file (an array of objects) or JSON Lines (one object per line):
/// - conversations: `{"id": …, "image": "file.jpg", "conversations": [{"from": "human", "value":
///   "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}, …]}` — speakers human/user,
///   gpt/assistant and an optional leading system; `image` optional.
/// - pre-tokenized: `{"input_ids": […], "labels": […], "image": "file.jpg"}` — labels unshifted
///   (Hugging Face style, -100 for positions not learned); the one image token in `input_ids` is
///   expanded to the image's feature rows as at inference (a run already of `featureCount` is kept).
/// - either kind may add `"image_token_texts": ["small red star", "nothing", …]`, one text per
///   image feature row (what `--objective image-token-embeddings` trains each row toward; read
///   only with `readsImageTokenTexts`, and then required). Each is tokenized as words inside a sentence
///   are, after a space; an empty text stands for the zero vector.
///
/// Image paths resolve against `imageFolder` when given, else against the data file's folder.
public struct TrainingDataset: Sendable {
    /// The data file, as given.
    public let path: String
    public var examples: [TrainingExample]
    /// Bad rows skipped at load ("file:line: message"), in file order.
    public var problems: [String]

    public init(path: String, examples: [TrainingExample], problems: [String] = []) {
        self.path = path
        self.examples = examples
        self.problems = problems
    }

    public var count: Int { examples.count }
    public subscript(index: Int) -> TrainingExample { examples[index] }
    /// Sequence length of every example (image rows included).
    public var lengths: [Int] { examples.map(\.length) }
    /// LLaVA's `modality_lengths`: positive for rows with an image, negative for text-only rows.
    public var modalityLengths: [Int] { examples.map(\.modalityLength) }

    /// Reads and tokenizes `path`. `image` is the model's image token and positions per image (nil
    /// for a text-only model: a row with an image is then bad). `maxLength` truncates each sequence
    /// like the tokenizer's `model_max_length`, but a row whose image would be cut, or that would
    /// keep no target token, is bad ("over-long sample"). `contextLength` (the model's) bounds every
    /// row: a longer one is bad too, reported before any memory is sized for it. Bad rows throw (the
    /// first one and the count) unless `skipBadRows`, which keeps the good ones and lists the rest in `problems`.
    public static func load(path: String, tokenizer: Tokenizer, template: ChatTemplate,
                            image: (tokenID: Int, featureCount: Int)?, imageFolder: String? = nil,
                            maxLength: Int? = nil, contextLength: Int? = nil, skipBadRows: Bool = false,
                            readsImageTokenTexts: Bool = false) throws -> TrainingDataset {
        let rows = try DataRows.read(path: path)
        let dataFolder = URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent().path
        let imageBase = imageFolder.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? dataFolder
        let encoder = ConversationEncoder(tokenizer: tokenizer, template: template, image: image)
        let builder = RowBuilder(encoder: encoder, imageBase: imageBase, maxLength: maxLength, contextLength: contextLength,
                                 readsImageTokenTexts: readsImageTokenTexts)

        var examples: [TrainingExample] = []
        var problems: [String] = []
        examples.reserveCapacity(rows.count)
        for row in rows {
            do {
                let value = try row.value.get()
                examples.append(try builder.example(from: value, source: row.location))
            } catch let problem as RowProblem {
                problems.append("\(row.location): \(problem.message)")
            } catch let error as TrainingDataError {
                problems.append("\(row.location): \(error.message)")
            }
        }
        if !problems.isEmpty && !skipBadRows {
            let total = problems.count == 1 ? "1 bad row" : "\(problems.count) bad rows"
            throw TrainingDataError("\(problems[0]) (\(total) in \(path))", problems: problems)
        }
        guard !examples.isEmpty else {
            if problems.isEmpty { throw TrainingDataError("\(path): no training rows") }
            throw TrainingDataError("\(path): no usable rows: all \(problems.count) are bad; the first: \(problems[0])", problems: problems)
        }
        return TrainingDataset(path: path, examples: examples, problems: problems)
    }

    /// The examples at `indices`, collated into one right-padded batch.
    public func batch(_ indices: [Int], padID: Int) -> TrainingBatch {
        TrainingBatch(examples: indices.map { examples[$0] }, padID: padID)
    }
}

/// Validates one parsed row and turns it into an example.
private struct RowBuilder {
    let encoder: ConversationEncoder
    let imageBase: String
    let maxLength: Int?
    let contextLength: Int?
    let readsImageTokenTexts: Bool

    func example(from value: Any, source: String) throws -> TrainingExample {
        guard let row = value as? [String: Any] else {
            throw RowProblem("malformed row: expected a JSON object, found \(Self.kind(of: value))")
        }
        let imagePath = try resolveImage(row["image"])
        if imagePath != nil && encoder.image == nil {
            throw RowProblem("the row has an image but the model takes no images")
        }
        var encoded: (inputIDs: [Int], labels: [Int], imageRange: Range<Int>?)
        if let conversations = row["conversations"] {
            encoded = try encoder.encode(try Self.messages(conversations), hasImage: imagePath != nil)
        } else if row["input_ids"] != nil {
            encoded = try pretokenized(row, hasImage: imagePath != nil)
        } else {
            throw RowProblem("malformed row: no \"conversations\" (or \"input_ids\" and \"labels\")")
        }
        if let maxLength, encoded.inputIDs.count > maxLength {
            let n = encoded.inputIDs.count
            if let range = encoded.imageRange, range.upperBound > maxLength {
                throw RowProblem("over-long sample: \(n) positions; max length \(maxLength) would cut the image at \(range.lowerBound)..<\(range.upperBound)")
            }
            encoded.inputIDs.removeLast(n - maxLength)
            encoded.labels.removeLast(n - maxLength)
            if encoded.labels.dropFirst().allSatisfy({ $0 == ignoreIndex }) {
                throw RowProblem("over-long sample: \(n) positions; no reply token is left within max length \(maxLength)")
            }
        }
        if let contextLength, encoded.inputIDs.count > contextLength {
            throw RowProblem("over-long sample: \(encoded.inputIDs.count) positions, more than the model's context of \(contextLength) (--max-length truncates)")
        }
        if encoded.labels.dropFirst().allSatisfy({ $0 == ignoreIndex }) {
            throw RowProblem("no target tokens (every label is -100)")
        }
        return TrainingExample(inputIDs: encoded.inputIDs, labels: encoded.labels, imagePath: imagePath,
                               imageRange: encoded.imageRange, source: source,
                               imageTokenTexts: readsImageTokenTexts ? try imageTokenTexts(row["image_token_texts"], imageRange: encoded.imageRange) : nil)
    }

    /// The token ids of each `image_token_texts` entry, one entry per image feature row.
    private func imageTokenTexts(_ value: Any?, imageRange: Range<Int>?) throws -> [[Int]] {
        guard let value, !(value is NSNull) else { throw RowProblem("no \"image_token_texts\" (the image-token-embeddings objective needs them)") }
        guard let texts = value as? [String] else {
            throw RowProblem("malformed row: \"image_token_texts\" must be an array of strings, found \(Self.kind(of: value))")
        }
        guard let imageRange else { throw RowProblem("\"image_token_texts\" but the row has no image") }
        guard texts.count == imageRange.count else {
            throw RowProblem("\(texts.count) image_token_texts for \(imageRange.count) image feature rows")
        }
        return texts.map { $0.isEmpty ? [] : encoder.tokenizer.encode(" " + $0) }
    }

    /// The absolute path of the row's image (nil when the row has none); it must exist.
    private func resolveImage(_ value: Any?) throws -> String? {
        guard let value, !(value is NSNull) else { return nil }
        guard let name = value as? String, !name.isEmpty else {
            throw RowProblem("malformed row: \"image\" must be a file name, found \(Self.kind(of: value))")
        }
        let url = name.hasPrefix("/") ? URL(fileURLWithPath: name) : URL(fileURLWithPath: imageBase).appendingPathComponent(name)
        let path = url.standardizedFileURL.path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else {
            throw RowProblem("image not found: \(path)")
        }
        return path
    }

    /// The chat messages of a LLaVA `conversations` array.
    static func messages(_ value: Any) throws -> [ChatMessage] {
        guard let turns = value as? [Any] else {
            throw RowProblem("malformed row: \"conversations\" must be an array, found \(kind(of: value))")
        }
        var messages: [ChatMessage] = []
        for (i, turn) in turns.enumerated() {
            guard let object = turn as? [String: Any], let from = object["from"] as? String, let text = object["value"] as? String else {
                throw RowProblem("malformed row: conversations[\(i)] must be an object with string \"from\" and \"value\"")
            }
            let role: ChatMessage.Role
            switch from.lowercased() {
            case "human", "user": role = .user
            case "gpt", "assistant": role = .assistant
            case "system":
                guard messages.isEmpty else { throw RowProblem("malformed row: conversations[\(i)]: a system turn may only come first") }
                role = .system
            default:
                throw RowProblem("malformed row: conversations[\(i)]: unknown speaker \"\(from)\" (expected human, gpt, user, assistant or system)")
            }
            messages.append(ChatMessage(role: role, text: text))
        }
        return messages
    }

    /// A pre-tokenized row: ids and labels checked against the vocabulary, the image expanded.
    private func pretokenized(_ row: [String: Any], hasImage: Bool) throws -> (inputIDs: [Int], labels: [Int], imageRange: Range<Int>?) {
        guard let ids = Self.integers(row["input_ids"]) else {
            throw RowProblem("malformed row: \"input_ids\" must be an array of integers")
        }
        guard row["labels"] != nil else { throw RowProblem("malformed row: a pre-tokenized row needs \"labels\"") }
        guard let labels = Self.integers(row["labels"]) else {
            throw RowProblem("malformed row: \"labels\" must be an array of integers")
        }
        guard labels.count == ids.count else {
            throw RowProblem("labels/input_ids length mismatch: \(labels.count) labels for \(ids.count) input_ids")
        }
        guard !ids.isEmpty else { throw RowProblem("malformed row: \"input_ids\" is empty") }
        let vocab = encoder.tokenizer.vocabSize
        let imageID = encoder.image?.tokenID
        if let bad = ids.first(where: { ($0 < 0 || $0 >= vocab) && $0 != imageID }) {
            throw RowProblem("input id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        if let bad = labels.first(where: { ($0 < 0 || $0 >= vocab) && $0 != ignoreIndex }) {
            throw RowProblem("label \(bad) is neither -100 nor a vocabulary id (0..<\(vocab))")
        }
        guard let image = encoder.image else { return (ids, labels, nil) }
        let runs = Prompt.imageRuns(ids, tokenID: image.tokenID)
        guard hasImage else {
            if !runs.isEmpty { throw RowProblem("image token \(image.tokenID) in input_ids but the row has no image") }
            return (ids, labels, nil)
        }
        guard let run = runs.first else { throw RowProblem("the row has an image but input_ids hold no image token \(image.tokenID)") }
        guard runs.count == 1 else { throw RowProblem("\(runs.count) image placeholders for one image") }
        guard run.count == 1 || run.count == image.featureCount else {
            throw RowProblem("a run of \(run.count) image tokens: expected 1 or \(image.featureCount)")
        }
        return ConversationEncoder.expandImage(ids: ids, labels: labels, at: run.start, run: run.count, image: image)
    }

    /// An array of JSON integers (booleans and fractions rejected).
    private static func integers(_ value: Any?) -> [Int]? {
        guard let array = value as? [Any] else { return nil }
        var out: [Int] = []
        out.reserveCapacity(array.count)
        for element in array {
            guard !isBoolean(element), let n = element as? Int else { return nil }
            out.append(n)
        }
        return out
    }

    /// JSON true/false (Foundation hands them over as NSNumbers that also cast to Int and Bool).
    private static func isBoolean(_ value: Any) -> Bool {
        guard let number = value as? NSNumber else { return false }
        let type = String(cString: number.objCType)
        return type == "c" || type == "B"
    }

    static func kind(of value: Any) -> String {
        if isBoolean(value) { return "a boolean" }
        switch value {
        case is NSNull: return "null"
        case is String: return "a string"
        case is [Any]: return "an array"
        case is [String: Any]: return "an object"
        case is NSNumber, is Int, is Double: return "a number"
        default: return "\(type(of: value))"
        }
    }
}

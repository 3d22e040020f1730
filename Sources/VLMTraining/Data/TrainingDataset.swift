import Foundation
import VLMGeneration
import VLMTokenizers

/// Supervised fine-tuning data (LLaVA's `LazySupervisedDataset` + `preprocess`).
///
/// A file of up to `eagerRowLimit` rows is tokenized whole at load, so every bad row is reported
/// before training starts. A larger one is read lazily, as LLaVA does: an index of row offsets
/// into the mapped file (`DataFile`), rows parsed and tokenized when a batch asks for them, so a
/// million-row file starts in seconds with memory that does not grow with it. Its first
/// `lazyProbeRows` rows are checked at load; a bad row met later is skipped with a warning
/// (`problemsMetWhileReading`) rather than stopping a run hours in (LLaVA's own loader raises
/// and ends the run; LLaVA-NeXT's retries and substitutes the next row).
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
    /// Above this many rows a file is read lazily. Tokenizing costs ~50 µs a row and a tokenized
    /// LLaVA row (576 image positions) ~20 KB, so 10k rows load eagerly in about half a second
    /// and 200 MB at most; beyond that, start-up time and memory would grow with the file.
    public static let eagerRowLimit = 10_000
    /// Rows of a lazily read file checked at load, so a file that is wrong throughout (image rows
    /// for a text-only model, another format) still fails before training.
    public static let lazyProbeRows = 64

    /// The data file, as given.
    public let path: String
    /// Bad rows found at load ("file:line: message"), in file order.
    public var problems: [String]
    private let tokenized: [TrainingExample]?
    private let lazyRows: LazyRows?
    /// The indexed file the examples came from (nil when they were given).
    private var file: DataFile?

    public init(path: String, examples: [TrainingExample], problems: [String] = []) {
        self.path = path
        self.tokenized = examples
        self.problems = problems
        self.lazyRows = nil
    }

    private init(lazy rows: LazyRows, problems: [String]) {
        path = rows.file.path
        tokenized = nil
        lazyRows = rows
        file = rows.file
        self.problems = problems
    }

    /// Whether rows are parsed and tokenized only when used.
    public var isLazy: Bool { lazyRows != nil }
    /// Examples (for a lazily read file: rows, bad ones included until they are met).
    public var count: Int { tokenized?.count ?? lazyRows!.file.count }
    /// Every example. For a lazily read file this parses and tokenizes every row, skipping bad
    /// ones: meant for small files.
    public var examples: [TrainingExample] { tokenized ?? (0..<count).compactMap { lazyRows!.example($0) } }
    /// The example at `index`; for a lazily read file, nil when its row is bad (then recorded).
    public func example(at index: Int) -> TrainingExample? { tokenized?[index] ?? lazyRows!.example(index) }
    public subscript(index: Int) -> TrainingExample {
        guard let example = example(at: index) else { preconditionFailure("\(path): row \(index) is bad: \(problemsMetWhileReading.last ?? "")") }
        return example
    }
    /// The JSON object of example `index`'s row, parsed again (for fields examples do not keep).
    public func rawRow(of index: Int) -> [String: Any]? {
        guard let file else { return nil }
        let row = isLazy ? index : file.row(at: tokenized![index].source)
        guard let row, case .success(let value) = file.parse(row) else { return nil }
        return value as? [String: Any]
    }

    /// Bad rows of a lazily read file met since load ("file:line: message"), in the order met
    /// (the first `LazyRows.keptProblems` of them; `badRowsMetWhileReading` counts them all).
    public var problemsMetWhileReading: [String] { lazyRows?.problems ?? [] }
    public var badRowsMetWhileReading: Int { lazyRows?.badRowCount ?? 0 }
    /// Rows parsed and tokenized so far (every usable row for a file loaded eagerly).
    public var tokenizedRowCount: Int { tokenized?.count ?? lazyRows!.tokenizedCount }

    /// Sequence length of every example (image rows included); for a lazily read file LLaVA's
    /// `lengths` estimate instead (words + 128 for an image), see `RowLengthScanner`.
    public var lengths: [Int] {
        tokenized?.map(\.length) ?? lazyRows!.modalityLengths().map { abs($0) + ($0 > 0 ? 128 : 0) }
    }
    /// LLaVA's `modality_lengths`: positive for rows with an image, negative for text-only rows
    /// (token counts, or for a lazily read file LLaVA's word-count estimate).
    public var modalityLengths: [Int] { tokenized?.map(\.modalityLength) ?? lazyRows!.modalityLengths() }

    /// Reads and tokenizes `path`. `image` is the model's image token and positions per image (nil
    /// for a text-only model: a row with an image is then bad). `maxLength` truncates each sequence
    /// like the tokenizer's `model_max_length`, but a row whose image would be cut, or that would
    /// keep no target token, is bad ("over-long sample"). `contextLength` (the model's) bounds every
    /// row: a longer one is bad too, reported before any memory is sized for it. Bad rows throw (the
    /// first one and the count) unless `skipBadRows`, which keeps the good ones and lists the rest in
    /// `problems`. Files of more than `eagerRowLimit` rows are read lazily (see the type).
    public static func load(path: String, tokenizer: Tokenizer, template: ChatTemplate,
                            image: (tokenID: Int, featureCount: Int)?, imageFolder: String? = nil,
                            maxLength: Int? = nil, contextLength: Int? = nil, skipBadRows: Bool = false,
                            readsImageTokenTexts: Bool = false, eagerRowLimit: Int = eagerRowLimit,
                            imageFeatureCount: (@Sendable (String) throws -> Int)? = nil) throws -> TrainingDataset {
        let file = try DataFile(path: path)
        let dataFolder = URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent().path
        let imageBase = imageFolder.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? dataFolder
        let encoder = ConversationEncoder(tokenizer: tokenizer, template: template, image: image)
        let builder = RowBuilder(encoder: encoder, imageBase: imageBase, maxLength: maxLength, contextLength: contextLength,
                                 readsImageTokenTexts: readsImageTokenTexts, imageFeatureCount: imageFeatureCount)
        if file.count > eagerRowLimit { return try loadLazily(file, builder: builder, skipBadRows: skipBadRows) }

        var examples: [TrainingExample] = []
        var problems: [String] = []
        let rows = try DataRows.read(file)
        examples.reserveCapacity(rows.count)
        for row in rows {
            switch builder.build(row) {
            case .success(let example): examples.append(example)
            case .failure(let problem): problems.append(problem.message)
            }
        }
        try checkProblems(problems, usable: examples.count, path: path, skipBadRows: skipBadRows)
        var dataset = TrainingDataset(path: path, examples: examples, problems: problems)
        dataset.file = file
        return dataset
    }

    /// The lazy path: the index is built, the first rows are checked, nothing is kept.
    private static func loadLazily(_ file: DataFile, builder: RowBuilder, skipBadRows: Bool) throws -> TrainingDataset {
        if let problem = file.structureProblem { throw TrainingDataError("\(file.path): invalid JSON (\(problem))") }
        let rows = LazyRows(file: file, builder: builder)
        var problems: [String] = [], usable = 0
        for row in 0..<min(lazyProbeRows, file.count) {
            switch builder.build(DataRow(location: file.location(row), value: file.parse(row))) {
            case .success: usable += 1
            case .failure(let problem): problems.append(problem.message); rows.markBad(row)
            }
        }
        rows.tokenizedCount = min(lazyProbeRows, file.count)
        try checkProblems(problems, usable: usable, path: file.path, skipBadRows: skipBadRows)
        return TrainingDataset(lazy: rows, problems: problems)
    }

    /// Bad rows stop the load unless skipped; a file left with no usable rows always does.
    private static func checkProblems(_ problems: [String], usable: Int, path: String, skipBadRows: Bool) throws {
        if !problems.isEmpty && !skipBadRows {
            let total = problems.count == 1 ? "1 bad row" : "\(problems.count) bad rows"
            throw TrainingDataError("\(problems[0]) (\(total) in \(path))", problems: problems)
        }
        guard usable == 0 else { return }
        if problems.isEmpty { throw TrainingDataError("\(path): no training rows") }
        throw TrainingDataError("\(path): no usable rows: all \(problems.count) are bad; the first: \(problems[0])", problems: problems)
    }

    /// The examples at `indices`, collated into one right-padded batch; bad rows of a lazily read
    /// file are left out (so the batch may be smaller, or empty).
    public func batch(_ indices: [Int], padID: Int) -> TrainingBatch {
        TrainingBatch(examples: indices.compactMap { example(at: $0) }, padID: padID)
    }
}

/// The rows of a large file, parsed and tokenized only when asked for. A bad row met here is
/// remembered, reported once and skipped from then on.
final class LazyRows: @unchecked Sendable {
    /// Problem messages kept (the count goes on): a file of mostly bad rows must not fill memory.
    static let keptProblems = 10_000

    let file: DataFile
    private let builder: RowBuilder
    private let lock = NSLock()
    private var badRows = Set<Int>()
    private var badRowsMet = 0
    private var keptProblemMessages: [String] = []
    private var tokenized = 0
    private var cachedModalityLengths: [Int]?

    init(file: DataFile, builder: RowBuilder) {
        self.file = file
        self.builder = builder
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// Rows built between two releases of the file's pages: training reads rows all over the
    /// file, and what it has read need not stay resident.
    private static let rowsBetweenReleases = 4096

    var problems: [String] { locked { keptProblemMessages } }
    /// Bad rows met since load (those of the probe were reported by the load).
    var badRowCount: Int { locked { badRowsMet } }
    var tokenizedCount: Int {
        get { locked { tokenized } }
        set { locked { tokenized = newValue } }
    }

    /// A row found bad at load (already reported there).
    func markBad(_ row: Int) { _ = locked { badRows.insert(row) } }

    /// The example of `row`, or nil when the row is bad.
    func example(_ row: Int) -> TrainingExample? {
        if locked({ badRows.contains(row) }) { return nil }
        let result = builder.build(DataRow(location: file.location(row), value: file.parse(row)))
        return locked {
            tokenized += 1
            if tokenized % Self.rowsBetweenReleases == 0 { file.releaseAllPages() }
            switch result {
            case .success(let example):
                return example
            case .failure(let problem):
                guard badRows.insert(row).inserted else { return nil }
                badRowsMet += 1
                if keptProblemMessages.count < Self.keptProblems { keptProblemMessages.append(problem.message) }
                return nil
            }
        }
    }

    /// LLaVA's `modality_lengths` of every row, scanned from the text once (not tokenized).
    func modalityLengths() -> [Int] {
        if let cached = locked({ cachedModalityLengths }) { return cached }
        var lengths: [Int] = []
        lengths.reserveCapacity(file.count)
        for row in 0..<file.count {
            lengths.append(file.withBytes(row) { RowLengthScanner.modalityLength($0) })
            if row % 65_536 == 65_535 { file.releaseAllPages() }
        }
        file.releaseAllPages()
        locked { cachedModalityLengths = lengths }
        return lengths
    }
}

/// Validates one parsed row and turns it into an example.
struct RowBuilder {
    let encoder: ConversationEncoder
    let imageBase: String
    let maxLength: Int?
    let contextLength: Int?
    let readsImageTokenTexts: Bool
    /// Positions of the image at a path, for models where they depend on its size (LLaVA-NeXT).
    var imageFeatureCount: (@Sendable (String) throws -> Int)? = nil

    /// The row's example, or its problem as "file:line: message".
    func build(_ row: DataRow) -> Result<TrainingExample, RowProblem> {
        do {
            return .success(try example(from: try row.value.get(), source: row.location))
        } catch let problem as RowProblem {
            return .failure(RowProblem("\(row.location): \(problem.message)"))
        } catch let error as TrainingDataError {
            return .failure(RowProblem("\(row.location): \(error.message)"))
        } catch {
            return .failure(RowProblem("\(row.location): \(error)"))
        }
    }

    func example(from value: Any, source: String) throws -> TrainingExample {
        guard let row = value as? [String: Any] else {
            throw RowProblem("malformed row: expected a JSON object, found \(Self.kind(of: value))")
        }
        let imagePaths = try resolveImages(row["image"])
        if !imagePaths.isEmpty && encoder.image == nil {
            throw RowProblem("the row has an image but the model takes no images")
        }
        var encoded: (inputIDs: [Int], labels: [Int], imageRanges: [Range<Int>])
        let counts = try imageFeatureCount.map { count in
            try imagePaths.map { path in do { return try count(path) } catch { throw RowProblem("\(error)") } }
        }
        if let conversations = row["conversations"] {
            encoded = try encoder.encode(try Self.messages(conversations), images: imagePaths.count, featureCounts: counts)
        } else if row["input_ids"] != nil {
            encoded = try pretokenized(row, images: imagePaths.count, featureCounts: counts)
        } else {
            throw RowProblem("malformed row: no \"conversations\" (or \"input_ids\" and \"labels\")")
        }
        if let maxLength, encoded.inputIDs.count > maxLength {
            let n = encoded.inputIDs.count
            if let range = encoded.imageRanges.first(where: { $0.upperBound > maxLength }) {
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
        return TrainingExample(inputIDs: encoded.inputIDs, labels: encoded.labels, imagePaths: imagePaths,
                               imageRanges: encoded.imageRanges, source: source,
                               imageTokenTexts: readsImageTokenTexts ? try imageTokenTexts(row["image_token_texts"], imageRanges: encoded.imageRanges) : nil)
    }

    /// The token ids of each `image_token_texts` entry, one entry per image feature row.
    private func imageTokenTexts(_ value: Any?, imageRanges: [Range<Int>]) throws -> [[Int]] {
        guard let value, !(value is NSNull) else { throw RowProblem("no \"image_token_texts\" (the image-token-embeddings objective needs them)") }
        guard let texts = value as? [String] else {
            throw RowProblem("malformed row: \"image_token_texts\" must be an array of strings, found \(Self.kind(of: value))")
        }
        guard !imageRanges.isEmpty else { throw RowProblem("\"image_token_texts\" but the row has no image") }
        let rows = imageRanges.reduce(0) { $0 + $1.count }
        guard texts.count == rows else {
            throw RowProblem("\(texts.count) image_token_texts for \(rows) image feature rows")
        }
        return texts.map { $0.isEmpty ? [] : encoder.tokenizer.encode(" " + $0) }
    }

    /// The absolute paths of the row's images: `"image"` is one file name or, as in LLaVA's
    /// multi-image data, a list of them (none when absent); each must exist.
    private func resolveImages(_ value: Any?) throws -> [String] {
        guard let value, !(value is NSNull) else { return [] }
        if let list = value as? [Any] {
            guard !list.isEmpty else { throw RowProblem("malformed row: \"image\" is an empty list") }
            return try list.enumerated().map { i, element in
                guard let name = element as? String, !name.isEmpty else {
                    throw RowProblem("malformed row: \"image\"[\(i)] must be a file name, found \(Self.kind(of: element))")
                }
                return try resolveImage(name)
            }
        }
        guard let name = value as? String, !name.isEmpty else {
            throw RowProblem("malformed row: \"image\" must be a file name or a list of them, found \(Self.kind(of: value))")
        }
        return [try resolveImage(name)]
    }

    /// The absolute path of the image file `name` (relative to the image folder); it must exist.
    private func resolveImage(_ name: String) throws -> String {
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
    private func pretokenized(_ row: [String: Any], images: Int, featureCounts: [Int]?) throws -> (inputIDs: [Int], labels: [Int], imageRanges: [Range<Int>]) {
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
        guard let image = encoder.image else { return (ids, labels, []) }
        let runs = Prompt.imageRuns(ids, tokenID: image.tokenID)
        guard images > 0 else {
            if !runs.isEmpty { throw RowProblem("image token \(image.tokenID) in input_ids but the row has no image") }
            return (ids, labels, [])
        }
        guard !runs.isEmpty else { throw RowProblem("the row has an image but input_ids hold no image token \(image.tokenID)") }
        guard runs.count == images else {
            throw RowProblem("\(runs.count) image placeholder\(runs.count == 1 ? "" : "s") for \(ConversationEncoder.imageCount(images))")
        }
        let counts = featureCounts ?? Array(repeating: image.featureCount, count: images)
        if let (run, count) = zip(runs, counts).first(where: { $0.0.count != 1 && $0.0.count != $0.1 }) {
            throw RowProblem("a run of \(run.count) image tokens: expected 1 or \(count)")
        }
        return try ConversationEncoder.expandImages(ids: ids, labels: labels, images: images, image: image, featureCounts: featureCounts)
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

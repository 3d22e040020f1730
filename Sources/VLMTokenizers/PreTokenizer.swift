import VLMFormats

/// Splits a normalized segment into words before the model sees them (HF `pre_tokenizer`).
indirect enum PreTokenizer: Sendable {
    /// Regex split with the matches isolated (HF `Split` with behavior Isolated, and `Digits`).
    case split(SplitPattern)
    /// GPT-2 byte level: optional prefix space and the GPT-2 regex; the model then sees bytes.
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    /// SentencePiece spaces: " " becomes `replacement`, optionally prepended, optionally split before it.
    case metaspace(replacement: UInt32, prepend: MetaspacePrepend, splitWords: Bool)
    case sequence([PreTokenizer])

    enum MetaspacePrepend: Sendable { case always, first, never }

    /// Whether the model works on UTF-8 bytes mapped through the GPT-2 byte alphabet.
    var isByteLevel: Bool {
        switch self {
        case .byteLevel: return true
        case .sequence(let steps): return steps.contains { $0.isByteLevel }
        default: return false
        }
    }

    /// Words of one segment. `isFirstSegment`: the segment starts the text (Metaspace "first").
    func words(of text: String, isFirstSegment: Bool) -> [String] {
        var state = PreTokenizedText(scalars: text.unicodeScalars.map(\.value))
        apply(to: &state, isFirstSegment: isFirstSegment)
        return state.words()
    }

    func apply(to state: inout PreTokenizedText, isFirstSegment: Bool) {
        switch self {
        case .split(let pattern):
            state.refine(with: pattern)
        case .byteLevel(let addPrefixSpace, let useRegex):
            if addPrefixSpace { state.prependToEachPiece(0x20) }
            if useRegex { state.refine(with: .gpt2) }
        case .metaspace(let replacement, let prepend, let splitWords):
            state.replace(0x20, with: replacement)
            if prepend == .always || (prepend == .first && isFirstSegment) {
                state.prependToFirstPiece(replacement)
            }
            if splitWords { state.splitBefore(replacement) }
        case .sequence(let steps):
            for step in steps { step.apply(to: &state, isFirstSegment: isFirstSegment) }
        }
    }

    /// Parses a tokenizer.json `pre_tokenizer` object (nil / JSON null means none).
    static func parse(_ json: Any?, file: String) throws -> PreTokenizer? {
        guard let object = json as? [String: Any] else { return nil }
        let type = object["type"] as? String ?? "?"
        switch type {
        case "ByteLevel":
            return .byteLevel(addPrefixSpace: object["add_prefix_space"] as? Bool ?? false,
                              useRegex: object["use_regex"] as? Bool ?? true)
        case "Digits":
            return .split(.digits(individual: object["individual_digits"] as? Bool ?? false))
        case "Split":
            let pattern = object["pattern"] as? [String: Any]
            let behavior = object["behavior"] as? String ?? "Isolated"
            guard let regex = pattern?["Regex"] as? String, let split = SplitPattern.forRegex(regex),
                  behavior == "Isolated", (object["invert"] as? Bool ?? false) == false else {
                throw FormatError(file, "unsupported Split pre-tokenizer \(pattern.map { "\($0)" } ?? "") (\(behavior))")
            }
            return .split(split)
        case "Metaspace":
            let replacement = (object["replacement"] as? String)?.unicodeScalars.first?.value ?? 0x2581
            var prepend: MetaspacePrepend = .always
            if let scheme = object["prepend_scheme"] as? String {
                prepend = scheme == "first" ? .first : scheme == "never" ? .never : .always
            } else if let add = object["add_prefix_space"] as? Bool {
                prepend = add ? .always : .never
            }
            return .metaspace(replacement: replacement, prepend: prepend, splitWords: object["split"] as? Bool ?? true)
        case "Sequence":
            let steps = try (object["pretokenizers"] as? [Any] ?? []).compactMap { try parse($0, file: file) }
            return .sequence(steps)
        default:
            throw FormatError(file, "unsupported pre-tokenizer type \(type)")
        }
    }
}

/// A segment as UTF-32 scalars and the pieces it has been split into so far.
struct PreTokenizedText {
    var scalars: [UInt32]
    var pieces: [Range<Int>]

    init(scalars: [UInt32]) {
        self.scalars = scalars
        pieces = scalars.isEmpty ? [] : [0..<scalars.count]
    }

    mutating func refine(with pattern: SplitPattern) {
        let classes = ScalarClass.classify(scalars)
        var refined: [Range<Int>] = []
        refined.reserveCapacity(scalars.count / 3 + 1)
        scalars.withUnsafeBufferPointer { text in
            classes.withUnsafeBufferPointer { cls in
                for piece in pieces { pattern.split(text, cls, piece, into: &refined) }
            }
        }
        pieces = refined
    }

    mutating func replace(_ old: UInt32, with new: UInt32) {
        for i in scalars.indices where scalars[i] == old { scalars[i] = new }
    }

    mutating func prependToFirstPiece(_ scalar: UInt32) {
        guard let first = pieces.first, scalars[first.lowerBound] != scalar else { return }
        insert(scalar, before: [0])
    }

    mutating func prependToEachPiece(_ scalar: UInt32) {
        let indices = pieces.indices.filter { scalars[pieces[$0].lowerBound] != scalar }
        insert(scalar, before: indices)
    }

    /// Inserts `scalar` at the start of the given pieces (indices ascending).
    private mutating func insert(_ scalar: UInt32, before pieceIndices: [Int]) {
        guard !pieceIndices.isEmpty else { return }
        var newScalars: [UInt32] = []
        newScalars.reserveCapacity(scalars.count + pieceIndices.count)
        var newPieces: [Range<Int>] = []
        var marked = Set(pieceIndices)
        var copied = 0
        for (index, piece) in pieces.enumerated() {
            newScalars.append(contentsOf: scalars[copied..<piece.lowerBound])
            let start = newScalars.count
            if marked.remove(index) != nil { newScalars.append(scalar) }
            newScalars.append(contentsOf: scalars[piece])
            copied = piece.upperBound
            newPieces.append(start..<newScalars.count)
        }
        newScalars.append(contentsOf: scalars[copied...])
        scalars = newScalars
        pieces = newPieces
    }

    /// Metaspace split: every piece starts at a replacement character (merged with the next word).
    mutating func splitBefore(_ scalar: UInt32) {
        var refined: [Range<Int>] = []
        for piece in pieces {
            var start = piece.lowerBound
            for i in piece where i > start && scalars[i] == scalar {
                refined.append(start..<i)
                start = i
            }
            refined.append(start..<piece.upperBound)
        }
        pieces = refined
    }

    func words() -> [String] {
        pieces.map { piece in
            var word = String.UnicodeScalarView()
            for i in piece { word.append(Unicode.Scalar(scalars[i]) ?? "\u{FFFD}") }
            return String(word)
        }
    }
}

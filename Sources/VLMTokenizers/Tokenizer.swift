import Foundation
import VLMFormats

/// A text tokenizer: added tokens, normalizer, pre-tokenizer, model and decoder, loaded from
/// GGUF metadata or a Hugging Face tokenizer folder.
public final class Tokenizer: Sendable {
    enum Model: Sendable {
        case bpe(BPEModel)
        /// llama.cpp SentencePiece (GGUF `llama`): spaces become "▁", optional "▁" prefix per segment.
        case sentencePieceScores(SentencePieceScoreModel, addSpacePrefix: Bool)
    }

    let model: Model
    let normalizer: Normalizer?
    let preTokenizer: PreTokenizer?
    let decoder: TokenDecoder
    let addedTokens: AddedTokenMatcher
    /// Spelling of each id (vocabulary and added tokens).
    let idToToken: [String?]
    let tokenToIDTable: [String: Int]
    let specialIDs: Set<Int>
    /// Raw bytes each id decodes to.
    let pieceBytes: [[UInt8]]

    public let bosTokenID: Int?
    public let eosTokenID: Int?
    /// End-of-sequence ids: eos plus the end-of-turn tokens the chat template uses.
    public let eosTokenIDs: Set<Int>
    public let unknownTokenID: Int?
    public let paddingTokenID: Int?
    /// `encode(addSpecialTokens: true)` prepends BOS / appends EOS.
    public let addsBOS: Bool
    public let addsEOS: Bool
    /// The model's chat template (Jinja source), if it ships one.
    public let chatTemplateSource: String?

    public var vocabSize: Int { idToToken.count }

    init(model: Model, normalizer: Normalizer?, preTokenizer: PreTokenizer?, decoder: TokenDecoder,
         vocab: [String: Int], addedTokens: [AddedToken], bos: Int?, eos: Int?, unknown: Int?, padding: Int?,
         addsBOS: Bool, addsEOS: Bool, chatTemplate: String?, extraEOS: [Int] = []) {
        self.model = model
        self.normalizer = normalizer
        self.preTokenizer = preTokenizer
        self.decoder = decoder
        self.addedTokens = AddedTokenMatcher(addedTokens)
        var table = vocab
        for token in addedTokens { table[token.content] = token.id }
        // Every id, not only the table's: two added tokens may share a spelling (the table keeps
        // the last) and still both need a slot. Loaders have bounded the ids already.
        let count = max(vocab.values.max() ?? -1, addedTokens.map(\.id).max() ?? -1) + 1
        var spellings = [String?](repeating: nil, count: count)
        for (token, id) in vocab where id >= 0 { spellings[id] = token }
        for token in addedTokens where token.id >= 0 { spellings[token.id] = token.content }
        idToToken = spellings
        tokenToIDTable = table
        specialIDs = Set(addedTokens.filter(\.special).map(\.id))
        pieceBytes = spellings.map { $0.map(decoder.bytes(of:)) ?? [] }
        bosTokenID = bos
        eosTokenID = eos
        unknownTokenID = unknown
        paddingTokenID = padding
        self.addsBOS = addsBOS && bos != nil
        self.addsEOS = addsEOS && eos != nil
        chatTemplateSource = chatTemplate
        var eosIDs = Set(extraEOS)
        if let eos { eosIDs.insert(eos) }
        // Chat models end a turn with their own token; generation must stop there too.
        for endOfTurn in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>"] {
            if let template = chatTemplate, template.contains(endOfTurn), let id = table[endOfTurn] { eosIDs.insert(id) }
        }
        eosTokenIDs = eosIDs
    }

    /// The id of a token spelled exactly `token` (vocabulary or added token).
    public func tokenID(_ token: String) -> Int? { tokenToIDTable[token] }

    /// The vocabulary spelling of an id.
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < idToToken.count ? idToToken[id] : nil }

    public func isSpecial(_ id: Int) -> Bool { specialIDs.contains(id) }

    /// Token ids of `text`. Added/special tokens written in the text are kept whole;
    /// `addSpecialTokens` adds BOS (and EOS) when the model asks for them.
    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int] {
        var ids: [Int] = []
        ids.reserveCapacity(text.utf8.count / 3 + 2)
        if addSpecialTokens && addsBOS, let bos = bosTokenID { ids.append(bos) }
        for segment in addedTokens.split(text) {
            switch segment {
            case .token(let id):
                ids.append(id)
            case .text(let segmentText, let startsText):
                encodeSegment(segmentText, startsText: startsText, into: &ids)
            }
        }
        if addSpecialTokens && addsEOS, let eos = eosTokenID { ids.append(eos) }
        return ids
    }

    /// Token ids of `text` with each `placeholder` as `id` (LLaVA's `tokenizer_image_token`, for
    /// vocabularies without an image token): the pieces between placeholders are tokenized apart,
    /// BOS (with `addSpecialTokens`) only before the first.
    public func encode(_ text: String, placeholder: String, as id: Int, addSpecialTokens: Bool = false) -> [Int] {
        var ids: [Int] = []
        for (i, chunk) in text.components(separatedBy: placeholder).enumerated() {
            if i > 0 { ids.append(id) }
            ids += encode(chunk, addSpecialTokens: addSpecialTokens && i == 0)
        }
        return ids
    }

    private func encodeSegment(_ text: String, startsText: Bool, into ids: inout [Int]) {
        switch model {
        case .sentencePieceScores(let spm, let addSpacePrefix):
            var escaped = text.replacingOccurrences(of: " ", with: "\u{2581}")
            if addSpacePrefix { escaped = "\u{2581}" + escaped }
            spm.tokenize(escaped, into: &ids)
        case .bpe(let bpe):
            let normalized = normalizer?.apply(text) ?? text
            guard !normalized.isEmpty else { return }
            if let preTokenizer {
                for word in preTokenizer.words(of: normalized, isFirstSegment: startsText) {
                    bpe.tokenize(word, into: &ids)
                }
            } else {
                bpe.tokenize(normalized, into: &ids)
            }
        }
    }

    /// Text of `ids` (invalid UTF-8 becomes U+FFFD).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < pieceBytes.count {
            if skipSpecialTokens && specialIDs.contains(id) { continue }
            bytes.append(contentsOf: pieceBytes[id])
        }
        var start = 0
        while start < min(decoder.stripLeadingSpaces, bytes.count) && bytes[start] == 0x20 { start += 1 }
        return String(decoding: bytes[start...], as: UTF8.self)
    }
}

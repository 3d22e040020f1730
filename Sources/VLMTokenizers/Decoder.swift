import Foundation
import VLMFormats

/// How token ids turn back into text (HF `decoder`), reduced to what the supported decoders do:
/// every token contributes raw bytes, and the joined text may lose one leading space.
struct TokenDecoder: Sendable {
    enum Pieces: Sendable {
        /// GPT-2 alphabet characters stand for bytes.
        case byteLevel
        /// SentencePiece: `replacement` stands for a space; `<0xNN>` pieces are raw bytes.
        case sentencePiece(replacement: String, byteFallback: Bool)
    }

    var pieces: Pieces
    /// Leading spaces removed from the decoded text (HF `Strip(start: 1)`, Metaspace prefix).
    var stripLeadingSpaces: Int

    /// Raw bytes of one token's spelling.
    func bytes(of token: String) -> [UInt8] {
        switch pieces {
        case .byteLevel:
            return ByteLevelAlphabet.decode(token) ?? Array(token.utf8)
        case .sentencePiece(let replacement, let byteFallback):
            if byteFallback, let byte = Self.fallbackByte(token) { return [byte] }
            return Array(token.replacingOccurrences(of: replacement, with: " ").utf8)
        }
    }

    /// The byte of a `<0xNN>` piece.
    static func fallbackByte(_ token: String) -> UInt8? {
        let u = Array(token.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        return UInt8(String(decoding: u[3...4], as: UTF8.self), radix: 16)
    }

    /// Parses a tokenizer.json `decoder`; nil decoders fall back to what the model implies.
    static func parse(_ json: Any?, byteLevelModel: Bool, byteFallback: Bool, file: String) throws -> TokenDecoder {
        guard let object = json as? [String: Any] else {
            return byteLevelModel ? TokenDecoder(pieces: .byteLevel, stripLeadingSpaces: 0)
                : TokenDecoder(pieces: .sentencePiece(replacement: "\u{2581}", byteFallback: byteFallback), stripLeadingSpaces: 0)
        }
        var decoder = TokenDecoder(pieces: .byteLevel, stripLeadingSpaces: 0)
        var sawSentencePiece = false
        func visit(_ step: [String: Any]) throws {
            let type = step["type"] as? String ?? "?"
            switch type {
            case "ByteLevel":
                decoder.pieces = .byteLevel
            case "Replace":
                let pattern = (step["pattern"] as? [String: Any])?["String"] as? String
                guard let pattern, (step["content"] as? String) == " " else {
                    throw FormatError(file, "unsupported Replace decoder")
                }
                decoder.pieces = .sentencePiece(replacement: pattern, byteFallback: byteFallback)
                sawSentencePiece = true
            case "ByteFallback", "Fuse":
                break
            case "Strip":
                guard (step["content"] as? String) == " ", (step["stop"] as? Int ?? 0) == 0 else {
                    throw FormatError(file, "unsupported Strip decoder")
                }
                decoder.stripLeadingSpaces = step["start"] as? Int ?? 0
            case "Metaspace":
                let replacement = step["replacement"] as? String ?? "\u{2581}"
                decoder.pieces = .sentencePiece(replacement: replacement, byteFallback: byteFallback)
                sawSentencePiece = true
                let scheme = step["prepend_scheme"] as? String
                let addPrefix = step["add_prefix_space"] as? Bool
                decoder.stripLeadingSpaces = (scheme == "never" || addPrefix == false) ? 0 : 1
            case "Sequence":
                for inner in step["decoders"] as? [[String: Any]] ?? [] { try visit(inner) }
            default:
                throw FormatError(file, "unsupported decoder type \(type)")
            }
        }
        try visit(object)
        if !sawSentencePiece && !byteLevelModel {
            decoder.pieces = .sentencePiece(replacement: "\u{2581}", byteFallback: byteFallback)
        }
        return decoder
    }
}

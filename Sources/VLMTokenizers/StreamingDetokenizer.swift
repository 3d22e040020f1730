/// Turns ids into text one at a time for streaming output. Text is released only when its UTF-8
/// is complete, so a character split over several byte-level or `<0xNN>` tokens never shows up
/// as U+FFFD halves; the pieces concatenate to `tokenizer.decode(ids)`.
public struct StreamingDetokenizer: Sendable {
    private let tokenizer: Tokenizer
    private let skipSpecialTokens: Bool
    private var pending: [UInt8] = []
    private var atStart = true

    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Text completed by `id` (possibly empty).
    public mutating func append(_ id: Int) -> String {
        guard id >= 0 && id < tokenizer.pieceBytes.count else { return "" }
        if skipSpecialTokens && tokenizer.isSpecial(id) { return "" }
        pending.append(contentsOf: tokenizer.pieceBytes[id])
        if atStart {
            // The decoder drops leading spaces of the whole text, not of every token.
            guard !pending.isEmpty else { return "" }
            var start = 0
            while start < min(tokenizer.decoder.stripLeadingSpaces, pending.count) && pending[start] == 0x20 { start += 1 }
            pending.removeFirst(start)
            atStart = false
        }
        let cut = Self.completePrefixLength(pending)
        guard cut > 0 else { return "" }
        let text = String(decoding: pending[..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Whatever is left (an unfinished character becomes U+FFFD, as in `decode`).
    public mutating func flush() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        return text
    }

    /// Length of `bytes` without a trailing, still-completable UTF-8 sequence.
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var lead = n - 1
        // The last non-continuation byte, within a character's reach of the end.
        while lead >= 0 && lead >= n - 4 && bytes[lead] & 0xC0 == 0x80 { lead -= 1 }
        guard lead >= 0 && lead >= n - 4 else { return n }
        let b = bytes[lead]
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch b {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondRange = 0x80...0x9F
        case 0xF0: length = 4; secondRange = 0x90...0xBF
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondRange = 0x80...0x8F
        default: return n  // ASCII or invalid lead: nothing to wait for
        }
        let have = n - lead
        guard have < length else { return n }
        if have >= 2 && !secondRange.contains(bytes[lead + 1]) { return n }
        return lead
    }
}

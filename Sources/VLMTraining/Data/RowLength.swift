/// LLaVA's length estimate of a row, read straight from its JSON text without building objects
/// or tokenizing (`LazySupervisedDataset.modality_lengths`): the whitespace-separated words of
/// every `conversations[].value`, positive when the row has an image, negative when not. A
/// pre-tokenized row counts its `input_ids`. Only `--group-by-modality-length` uses it, and
/// only for files read lazily; a row that does not scan counts 0 (it is reported when used).
struct RowLengthScanner {
    private let bytes: UnsafeBufferPointer<UInt8>
    private var i = 0
    private var words = 0, ids = 0, hasImage = false

    /// The row's signed length (see the type).
    static func modalityLength(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        var scanner = RowLengthScanner(bytes: bytes)
        guard scanner.scanRow() else { return 0 }
        let length = scanner.words + scanner.ids
        return scanner.hasImage ? length : -length
    }

    private init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    private static let quote = UInt8(ascii: "\"")

    private mutating func scanRow() -> Bool {
        guard enter(UInt8(ascii: "{")) else { return false }
        while nextItem(closing: UInt8(ascii: "}")) {
            guard let key = memberKey() else { return false }
            if isKey(key, "image"), peek == Self.quote {
                guard let name = string() else { return false }
                hasImage = !name.isEmpty
            } else if isKey(key, "image"), peek == UInt8(ascii: "[") {
                // A multi-image row's list of file names.
                _ = enter(UInt8(ascii: "["))
                while nextItem(closing: UInt8(ascii: "]")) { guard skipValue() else { return false }; hasImage = true }
            } else if isKey(key, "conversations"), peek == UInt8(ascii: "[") {
                guard scanConversations() else { return false }
            } else if isKey(key, "input_ids"), peek == UInt8(ascii: "[") {
                _ = enter(UInt8(ascii: "["))
                while nextItem(closing: UInt8(ascii: "]")) { guard skipValue() else { return false }; ids += 1 }
            } else {
                guard skipValue() else { return false }
            }
        }
        return true
    }

    /// Adds the words of each turn's `value`.
    private mutating func scanConversations() -> Bool {
        _ = enter(UInt8(ascii: "["))
        while nextItem(closing: UInt8(ascii: "]")) {
            guard enter(UInt8(ascii: "{")) else { if !skipValue() { return false }; continue }
            while nextItem(closing: UInt8(ascii: "}")) {
                guard let key = memberKey() else { return false }
                if isKey(key, "value"), peek == Self.quote {
                    guard let text = string() else { return false }
                    words += Self.wordCount(bytes[text])
                } else if !skipValue() {
                    return false
                }
            }
        }
        return true
    }

    private var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipSpace() { while i < bytes.count, DataFile.isWhitespace(bytes[i]) { i += 1 } }

    private mutating func enter(_ open: UInt8) -> Bool {
        skipSpace()
        guard peek == open else { return false }
        i += 1
        return true
    }

    /// Moves to the next member or element; false at the closing bracket (consumed) or the end.
    private mutating func nextItem(closing: UInt8) -> Bool {
        skipSpace()
        if peek == UInt8(ascii: ",") { i += 1; skipSpace() }
        guard let b = peek else { return false }
        if b == closing { i += 1; return false }
        return true
    }

    /// A member's key (its raw text) with the colon after it consumed.
    private mutating func memberKey() -> Range<Int>? {
        guard peek == Self.quote, let key = string() else { return nil }
        skipSpace()
        guard peek == UInt8(ascii: ":") else { return nil }
        i += 1
        skipSpace()
        return key
    }

    private func isKey(_ key: Range<Int>, _ name: StaticString) -> Bool {
        key.count == name.utf8CodeUnitCount && zip(bytes[key], UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)).allSatisfy { $0 == $1 }
    }

    /// The raw text between the quotes of the string at `i` (escapes kept).
    private mutating func string() -> Range<Int>? {
        let start = i + 1
        var j = start
        while j < bytes.count && bytes[j] != Self.quote { j += bytes[j] == UInt8(ascii: "\\") ? 2 : 1 }
        guard j < bytes.count else { return nil }
        i = j + 1
        return start..<j
    }

    /// Skips one value of any kind.
    private mutating func skipValue() -> Bool {
        skipSpace()
        guard let b = peek else { return false }
        if b == Self.quote { return string() != nil }
        if b == UInt8(ascii: "[") || b == UInt8(ascii: "{") {
            var depth = 0
            while let c = peek {
                if c == Self.quote { guard string() != nil else { return false }; continue }
                i += 1
                if c == UInt8(ascii: "[") || c == UInt8(ascii: "{") { depth += 1 }
                if c == UInt8(ascii: "]") || c == UInt8(ascii: "}") { depth -= 1; if depth == 0 { return true } }
            }
            return false
        }
        while let c = peek, c != UInt8(ascii: ","), c != UInt8(ascii: "}"), c != UInt8(ascii: "]"), !DataFile.isWhitespace(c) { i += 1 }
        return true
    }

    /// Python's `len(text.split())` over JSON string text: ASCII whitespace, raw or escaped
    /// (\n, \t, \u0020…), splits words; other Unicode spaces do not (close enough for grouping
    /// rows by length).
    static func wordCount(_ text: Slice<UnsafeBufferPointer<UInt8>>) -> Int {
        var count = 0, inWord = false, k = text.startIndex
        while k < text.endIndex {
            var separator: Bool
            let b = text[k]
            if b == UInt8(ascii: "\\"), k + 1 < text.endIndex {
                let e = text[k + 1]
                separator = e == UInt8(ascii: "n") || e == UInt8(ascii: "t") || e == UInt8(ascii: "r") || e == UInt8(ascii: "f")
                if e == UInt8(ascii: "u"), k + 5 < text.endIndex, let code = UInt32(String(decoding: text[(k + 2)...(k + 5)], as: UTF8.self), radix: 16) {
                    separator = code == 0x20 || (0x09...0x0D).contains(code) || (0x1C...0x1F).contains(code)
                    k += 4
                }
                k += 2
            } else {
                separator = b == 0x20 || (0x09...0x0D).contains(b) || (0x1C...0x1F).contains(b)
                k += 1
            }
            if !separator && !inWord { count += 1 }
            inWord = !separator
        }
        return count
    }
}

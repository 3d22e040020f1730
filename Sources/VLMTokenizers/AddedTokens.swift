/// A token matched verbatim in the input before normalization (HF `added_tokens`, GGUF control
/// and user-defined tokens). Special ones are dropped by `decode(skipSpecialTokens: true)`.
struct AddedToken: Sendable {
    var content: String
    var id: Int
    var special: Bool
    var leftStrip = false
    var rightStrip = false
}

/// Splits text around added tokens: leftmost match wins, the longest token at that position.
struct AddedTokenMatcher: Sendable {
    enum Segment { case text(String, startsText: Bool), token(Int) }

    private let tokensByFirstByte: [[(bytes: [UInt8], token: AddedToken)]]
    let isEmpty: Bool

    init(_ tokens: [AddedToken]) {
        var table = [[(bytes: [UInt8], token: AddedToken)]](repeating: [], count: 256)
        for token in tokens where !token.content.isEmpty {
            let bytes = Array(token.content.utf8)
            table[Int(bytes[0])].append((bytes, token))
        }
        for i in table.indices { table[i].sort { $0.bytes.count > $1.bytes.count } }
        tokensByFirstByte = table
        isEmpty = tokens.isEmpty
    }

    func split(_ text: String) -> [Segment] {
        if isEmpty { return text.isEmpty ? [] : [.text(text, startsText: true)] }
        let bytes = Array(text.utf8)
        var segments: [Segment] = []
        var textStart = 0
        var i = 0
        bytes.withUnsafeBufferPointer { buf in
            while i < buf.count {
                guard let match = match(buf, at: i) else { i += 1; continue }
                var start = i, end = i + match.bytes.count
                if match.token.leftStrip {
                    while start > textStart && Self.isSpace(buf[start - 1]) { start -= 1 }
                }
                if match.token.rightStrip {
                    while end < buf.count && Self.isSpace(buf[end]) { end += 1 }
                }
                if start > textStart {
                    segments.append(.text(String(decoding: buf[textStart..<start], as: UTF8.self), startsText: textStart == 0))
                }
                segments.append(.token(match.token.id))
                i = end
                textStart = end
            }
            if textStart < buf.count {
                segments.append(.text(String(decoding: buf[textStart...], as: UTF8.self), startsText: textStart == 0))
            }
        }
        return segments
    }

    private func match(_ buf: UnsafeBufferPointer<UInt8>, at i: Int) -> (bytes: [UInt8], token: AddedToken)? {
        for candidate in tokensByFirstByte[Int(buf[i])] {
            let n = candidate.bytes.count
            guard i + n <= buf.count else { continue }
            var k = 1
            while k < n && buf[i + k] == candidate.bytes[k] { k += 1 }
            if k == n { return candidate }
        }
        return nil
    }

    private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || (b >= 0x09 && b <= 0x0D) }
}

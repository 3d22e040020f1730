/// GPT-2's reversible byte <-> printable character map used by byte-level BPE vocabularies.
enum ByteLevelAlphabet {
    /// Scalar value standing for each byte.
    static let scalarForByte: [UInt32] = {
        var printable = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
        var table = [UInt32](repeating: 0, count: 256)
        for b in printable { table[b] = UInt32(b) }
        var next: UInt32 = 256
        for b in 0..<256 where !printable.contains(b) {
            table[b] = next
            next += 1
            printable.append(b)
        }
        return table
    }()

    /// Byte for each mapped scalar value (index by scalar value < 324), -1 where none.
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 324)
        for (b, scalar) in scalarForByte.enumerated() { table[Int(scalar)] = Int16(b) }
        return table
    }()

    /// The vocabulary spelling of raw bytes.
    static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var view = String.UnicodeScalarView()
        for b in bytes { view.append(Unicode.Scalar(scalarForByte[Int(b)])!) }
        return String(view)
    }

    /// Raw bytes of a vocabulary token, or nil when it contains characters outside the alphabet
    /// (added tokens such as "<|im_start|>" are then used verbatim, as HF's ByteLevel decoder does).
    static func decode(_ token: String) -> [UInt8]? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(token.utf8.count)
        for scalar in token.unicodeScalars {
            let v = Int(scalar.value)
            guard v < byteForScalar.count, byteForScalar[v] >= 0 else { return nil }
            bytes.append(UInt8(byteForScalar[v]))
        }
        return bytes
    }
}

/// Character classes used by the pre-tokenizer regexes (\p{L}, \p{N}, \s, [\r\n]).
///
/// Classes are bit flags so one table lookup answers every question a splitter asks.
enum ScalarClass {
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let whitespace: UInt8 = 4
    static let newline: UInt8 = 8  // \r or \n (also whitespace)

    /// Classes of every BMP scalar, computed once: general-category queries are too slow per character.
    static let bmpTable: [UInt8] = {
        var table = [UInt8](repeating: 0, count: 0x10000)
        for v in 0..<0x10000 {
            if let scalar = Unicode.Scalar(UInt32(v)) { table[v] = compute(scalar) }
        }
        return table
    }()

    static func compute(_ scalar: Unicode.Scalar) -> UInt8 {
        if scalar == "\r" || scalar == "\n" { return whitespace | newline }
        let props = scalar.properties
        if props.isWhitespace { return whitespace }
        switch props.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return letter
        case .decimalNumber, .letterNumber, .otherNumber:
            return number
        default:
            return 0
        }
    }

    @inline(__always)
    static func of(_ value: UInt32) -> UInt8 {
        if value < 0x10000 { return bmpTable.withUnsafeBufferPointer { $0[Int(value)] } }
        return Unicode.Scalar(value).map(compute) ?? 0
    }

    /// Classes of a whole scalar array (one pass, reused by every splitter).
    static func classify(_ scalars: [UInt32]) -> [UInt8] {
        let table = bmpTable
        return table.withUnsafeBufferPointer { t in
            scalars.map { $0 < 0x10000 ? t[Int($0)] : (Unicode.Scalar($0).map(compute) ?? 0) }
        }
    }
}

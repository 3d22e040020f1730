/// Byte-level helpers shared by the ggml block decoders. Blocks are packed without padding,
/// so every multi-byte field is read unaligned (files are little-endian, as is every host we run on).
@usableFromInline
enum Block {
    @inline(__always) @usableFromInline
    static func f16(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
    }

    @inline(__always) @usableFromInline
    static func u8(_ p: UnsafeRawPointer, _ offset: Int) -> UInt8 {
        p.load(fromByteOffset: offset, as: UInt8.self)
    }

    @inline(__always) @usableFromInline
    static func i8(_ p: UnsafeRawPointer, _ offset: Int) -> Int8 {
        p.load(fromByteOffset: offset, as: Int8.self)
    }

    /// The 6-bit scale and min of sub-block `j` (0..<8) in the 12-byte packed table of Q4_K/Q5_K:
    /// the first four pairs sit in the low 6 bits of bytes 0..7, the last four are split between
    /// the nibbles of bytes 8..11 and the top two bits of bytes 0..7.
    @inline(__always) @usableFromInline
    static func scaleMinK4(_ j: Int, _ table: UnsafeRawPointer) -> (scale: UInt8, min: UInt8) {
        if j < 4 {
            return (u8(table, j) & 63, u8(table, j + 4) & 63)
        }
        let scale = (u8(table, j + 4) & 0x0F) | ((u8(table, j - 4) >> 6) << 4)
        let min = (u8(table, j + 4) >> 4) | ((u8(table, j) >> 6) << 4)
        return (scale, min)
    }

    /// The sixteen signed 6-bit scales of a Q3_K block (stored biased by 32) from its 12-byte table:
    /// low nibbles come from bytes 0..7, the top two bits from the bit pairs of bytes 8..11.
    @inline(__always) @usableFromInline
    static func scalesQ3K(_ table: UnsafeRawPointer, _ out: UnsafeMutablePointer<Int8>) {
        for i in 0..<16 {
            let low = i < 8 ? u8(table, i) & 0x0F : u8(table, i - 8) >> 4
            let high = (u8(table, 8 + (i & 3)) >> (2 * (i >> 2))) & 3
            out[i] = Int8(truncatingIfNeeded: Int(low | (high << 4)) - 32)
        }
    }
}

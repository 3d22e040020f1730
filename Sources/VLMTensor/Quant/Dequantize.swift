/// Decoding of ggml-encoded values to Float32.
///
/// `reference` is a plain block-by-block transcription of the ggml layouts and is what the tests
/// trust; `fast` produces identical values with vector code where it matters. `count` must be a
/// whole number of blocks of `type` (file readers validate this before any decoding happens).
public enum Dequantize {
    public static func reference(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let blocks = count / type.blockSize
        let bs = type.blockBytes
        switch type {
        case .f32:
            for i in 0..<count { dst[i] = src.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) }
        case .f16:
            Half.convertF16(src, dst, count: count)
        case .bf16:
            Half.convertBF16(src, dst, count: count)
        case .q4_0:
            for b in 0..<blocks { q4_0Block(src + b * bs, dst + b * 32) }
        case .q4_1:
            for b in 0..<blocks { q4_1Block(src + b * bs, dst + b * 32) }
        case .q5_0:
            for b in 0..<blocks { q5_0Block(src + b * bs, dst + b * 32) }
        case .q5_1:
            for b in 0..<blocks { q5_1Block(src + b * bs, dst + b * 32) }
        case .q8_0:
            for b in 0..<blocks { q8Block(src + b * bs, dst + b * 32, quantsAt: 2) }
        case .q8_1:
            // d and the (unused here) sum s are both f16; quants follow.
            for b in 0..<blocks { q8Block(src + b * bs, dst + b * 32, quantsAt: 4) }
        case .q2_K:
            for b in 0..<blocks { q2_KBlock(src + b * bs, dst + b * 256) }
        case .q3_K:
            for b in 0..<blocks { q3_KBlock(src + b * bs, dst + b * 256) }
        case .q4_K:
            for b in 0..<blocks { q4_KBlock(src + b * bs, dst + b * 256) }
        case .q5_K:
            for b in 0..<blocks { q5_KBlock(src + b * bs, dst + b * 256) }
        case .q6_K:
            for b in 0..<blocks { q6_KBlock(src + b * bs, dst + b * 256) }
        case .q8_K:
            for b in 0..<blocks { q8_KBlock(src + b * bs, dst + b * 256) }
        }
    }

    // MARK: 32-element blocks

    /// Q4_0: f16 d, 16 bytes of nibbles; low nibbles are elements 0..15, high nibbles 16..31; x = (q - 8) * d.
    static func q4_0Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0)
        for j in 0..<16 {
            let q = Block.u8(p, 2 + j)
            y[j] = Float(Int(q & 0x0F) - 8) * d
            y[j + 16] = Float(Int(q >> 4) - 8) * d
        }
    }

    /// Q4_1: f16 d, f16 m, 16 bytes of nibbles (same order as Q4_0); x = q * d + m.
    static func q4_1Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), m = Block.f16(p, 2)
        for j in 0..<16 {
            let q = Block.u8(p, 4 + j)
            y[j] = Float(q & 0x0F) * d + m
            y[j + 16] = Float(q >> 4) * d + m
        }
    }

    /// Q5_0: f16 d, 32-bit mask of fifth bits (bit j for element j), 16 bytes of low nibbles; x = (q - 16) * d.
    static func q5_0Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0)
        let high = p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)
        for j in 0..<16 {
            let q = Block.u8(p, 6 + j)
            let q0 = Int(q & 0x0F) | Int((high >> UInt32(j)) & 1) << 4
            let q1 = Int(q >> 4) | Int((high >> UInt32(j + 16)) & 1) << 4
            y[j] = Float(q0 - 16) * d
            y[j + 16] = Float(q1 - 16) * d
        }
    }

    /// Q5_1: f16 d, f16 m, fifth-bit mask, 16 bytes of low nibbles; x = q * d + m.
    static func q5_1Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), m = Block.f16(p, 2)
        let high = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        for j in 0..<16 {
            let q = Block.u8(p, 8 + j)
            let q0 = Int(q & 0x0F) | Int((high >> UInt32(j)) & 1) << 4
            let q1 = Int(q >> 4) | Int((high >> UInt32(j + 16)) & 1) << 4
            y[j] = Float(q0) * d + m
            y[j + 16] = Float(q1) * d + m
        }
    }

    /// Q8_0 / Q8_1: f16 d (plus an f16 sum for Q8_1), 32 signed bytes; x = q * d.
    static func q8Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, quantsAt offset: Int) {
        let d = Block.f16(p, 0)
        for j in 0..<32 { y[j] = Float(Block.i8(p, offset + j)) * d }
    }

    // MARK: 256-element super-blocks

    /// Q2_K: 16 bytes of (min << 4 | scale), 64 bytes of 2-bit quants, f16 d, f16 dmin.
    /// Each 128-element half uses 32 quant bytes four times (bit pairs 0-1, 2-3, 4-5, 6-7);
    /// every 16 elements take the next scale byte. x = d * scale * q - dmin * min.
    static func q2_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 80), dmin = Block.f16(p, 82)
        var out = 0, scaleIndex = 0
        for half in 0..<2 {
            let q = p + 16 + 32 * half
            for shift in stride(from: 0, to: 8, by: 2) {
                for part in 0..<2 {
                    let sc = Block.u8(p, scaleIndex); scaleIndex += 1
                    let dl = d * Float(sc & 0x0F), ml = dmin * Float(sc >> 4)
                    for l in 0..<16 {
                        let v = (Block.u8(q, 16 * part + l) >> UInt8(shift)) & 3
                        y[out] = dl * Float(v) - ml; out += 1
                    }
                }
            }
        }
    }

    /// Q3_K: 32 bytes of high-bit masks, 64 bytes of 2-bit quants, 12 bytes of packed 6-bit scales, f16 d.
    /// Same walk as Q2_K; bit `k` of mask byte `l` belongs to the k-th group of 32, and a clear
    /// high bit means subtract 4. x = d * (scale - 32) * q.
    static func q3_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 108)
        var scales = (Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0),
                      Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0), Int8(0))
        withUnsafeMutableBytes(of: &scales) { raw in
            let sc = raw.baseAddress!.assumingMemoryBound(to: Int8.self)
            Block.scalesQ3K(p + 96, sc)
            var out = 0, scaleIndex = 0, group = 0
            for half in 0..<2 {
                let q = p + 32 + 32 * half
                for shift in stride(from: 0, to: 8, by: 2) {
                    for part in 0..<2 {
                        let dl = d * Float(sc[scaleIndex]); scaleIndex += 1
                        for l in 0..<16 {
                            let low = Int((Block.u8(q, 16 * part + l) >> UInt8(shift)) & 3)
                            let hasHigh = (Block.u8(p, 16 * part + l) >> UInt8(group)) & 1 != 0
                            y[out] = dl * Float(low - (hasHigh ? 0 : 4)); out += 1
                        }
                    }
                    group += 1
                }
            }
        }
    }

    /// Q4_K: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of nibbles.
    /// Each 64 elements use 32 bytes: low nibbles then high nibbles, each half with its own scale/min.
    static func q4_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
        for chunk in 0..<4 {
            let q = p + 16 + 32 * chunk
            let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
            let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
            let d1 = d * Float(s1), min1 = dmin * Float(m1)
            let d2 = d * Float(s2), min2 = dmin * Float(m2)
            let o = y + 64 * chunk
            for l in 0..<32 {
                let v = Block.u8(q, l)
                o[l] = d1 * Float(v & 0x0F) - min1
                o[l + 32] = d2 * Float(v >> 4) - min2
            }
        }
    }

    /// Q5_K: as Q4_K plus 32 bytes of fifth bits: chunk c takes bit 2c (low nibbles) and 2c+1 (high).
    static func q5_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
        let qh = p + 16
        for chunk in 0..<4 {
            let q = p + 48 + 32 * chunk
            let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
            let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
            let d1 = d * Float(s1), min1 = dmin * Float(m1)
            let d2 = d * Float(s2), min2 = dmin * Float(m2)
            let o = y + 64 * chunk
            for l in 0..<32 {
                let v = Block.u8(q, l), h = Block.u8(qh, l)
                let lo = (v & 0x0F) | (((h >> UInt8(2 * chunk)) & 1) << 4)
                let hi = (v >> 4) | (((h >> UInt8(2 * chunk + 1)) & 1) << 4)
                o[l] = d1 * Float(lo) - min1
                o[l + 32] = d2 * Float(hi) - min2
            }
        }
    }

    /// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed scales, f16 d.
    /// Each 128-element half uses 64 low bytes and 32 high bytes: element l + 32k (k = 0..3) takes
    /// nibble (k >> 1) of low byte l + 32(k & 1) and bit pair k of high byte l; scales change every 16.
    static func q6_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 208)
        for half in 0..<2 {
            let ql = p + 64 * half, qh = p + 128 + 32 * half, sc = p + 192 + 8 * half
            let o = y + 128 * half
            for l in 0..<32 {
                let s = l / 16
                let a = Block.u8(ql, l), b = Block.u8(ql, l + 32), h = Block.u8(qh, l)
                let q1 = Int((a & 0x0F) | ((h & 3) << 4)) - 32
                let q2 = Int((b & 0x0F) | (((h >> 2) & 3) << 4)) - 32
                let q3 = Int((a >> 4) | (((h >> 4) & 3) << 4)) - 32
                let q4 = Int((b >> 4) | (((h >> 6) & 3) << 4)) - 32
                o[l] = d * Float(Block.i8(sc, s)) * Float(q1)
                o[l + 32] = d * Float(Block.i8(sc, s + 2)) * Float(q2)
                o[l + 64] = d * Float(Block.i8(sc, s + 4)) * Float(q3)
                o[l + 96] = d * Float(Block.i8(sc, s + 6)) * Float(q4)
            }
        }
    }

    /// Q8_K: f32 d, 256 signed bytes, 16 int16 group sums (unused for decoding).
    static func q8_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = p.loadUnaligned(fromByteOffset: 0, as: Float.self)
        for j in 0..<256 { y[j] = Float(Block.i8(p, 4 + j)) * d }
    }
}

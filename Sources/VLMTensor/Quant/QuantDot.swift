/// Dot products of one encoded row with Float32 activations. The activations stay Float32
/// (unlike ggml, which quantizes them), so results match dequantize-then-dot up to float rounding.
/// Each kernel factors the block scale out of the inner sum: dot = d * Σ q·x (+ m * Σ x).
@usableFromInline
enum QuantDot {
    /// `sums[b]` is the sum of x over its 32-element block `b` (filled when `needsBlockSums`):
    /// formats with a per-block offset reuse it for every row instead of re-adding x each time.
    typealias Kernel = (_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ cols: Int) -> Float

    /// The vector kernel for `type`, or nil when the type goes through decode-then-dot.
    static func kernel(for type: GGMLType) -> Kernel? {
        switch type {
        case .f32: return { row, x, _, n in Vec.dot(row.assumingMemoryBound(to: Float.self), x, count: n) }
        case .f16: return { row, x, _, n in f16(row, x, n) }
        case .bf16: return { row, x, _, n in bf16(row, x, n) }
        case .q4_0: return q4_0
        case .q4_1: return q4_1
        case .q8_0: return { row, x, _, n in q8_0(row, x, n) }
        case .q4_K: return q4_K
        case .q6_K: return { row, x, _, n in q6_K(row, x, n) }
        case .q5_0: return { row, x, sums, n in q5(row, x, sums, n, blockBytes: 22, hasMin: false) }
        case .q5_1: return { row, x, sums, n in q5(row, x, sums, n, blockBytes: 24, hasMin: true) }
        case .q5_K: return q5_K
        default: return nil
        }
    }

    static func needsBlockSums(_ type: GGMLType) -> Bool {
        switch type {
        case .q4_0, .q4_1, .q4_K, .q5_0, .q5_1, .q5_K: return true
        default: return false
        }
    }

    static func blockSums(_ x: UnsafePointer<Float>, cols: Int, into sums: UnsafeMutablePointer<Float>) {
        for b in 0..<(cols / 32) {
            let xb = x + 32 * b
            sums[b] = ((Vec.load(xb) + Vec.load(xb + 8)) + (Vec.load(xb + 16) + Vec.load(xb + 24))).sum()
        }
    }

    /// Σ q·x over one 32-element block of 4-bit quants (low nibbles are elements 0..15, high 16..31).
    /// Each group of 8 bytes is widened once and both nibbles are split in 32-bit lanes.
    @inline(__always)
    static func nibbleDot(_ qs: UnsafeRawPointer, _ x: UnsafePointer<Float>) -> SIMD8<Float> {
        let w0 = Vec.widenBytes(qs), w1 = Vec.widenBytes(qs + 8)
        var s = Vec.float(w0 & 15) * Vec.load(x)
        s.addProduct(Vec.float(w1 & 15), Vec.load(x + 8))
        s.addProduct(Vec.float(w0 &>> 4), Vec.load(x + 16))
        s.addProduct(Vec.float(w1 &>> 4), Vec.load(x + 24))
        return s
    }

    static func f16(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            s0.addProduct(Vec.f16(row + 2 * i), Vec.load(x + i))
            s1.addProduct(Vec.f16(row + 2 * i + 16), Vec.load(x + i + 8))
            i += 16
        }
        var total = (s0 + s1).sum()
        while i < n { total += Block.f16(row, 2 * i) * x[i]; i += 1 }
        return total
    }

    static func bf16(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
        var i = 0
        while i + 16 <= n {
            s0.addProduct(Vec.bf16(row + 2 * i), Vec.load(x + i))
            s1.addProduct(Vec.bf16(row + 2 * i + 16), Vec.load(x + i + 8))
            i += 16
        }
        var total = (s0 + s1).sum()
        while i < n {
            total += Half.bf16ToFloat(row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) * x[i]; i += 1
        }
        return total
    }

    /// Q4_0: Σ (q - 8)·d·x = d·Σ q·x - 8d·Σ x; Σ x per block comes precomputed in `sums`.
    static func q4_0(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var offset0: Float = 0, offset1: Float = 0
        var p = row, xb = x
        let blocks = n / 32
        var b = 0
        // Two blocks per step so the two accumulator chains overlap.
        while b + 2 <= blocks {
            let d0 = Block.f16(p, 0), d1 = Block.f16(p, 18)
            acc0.addProduct(SIMD8(repeating: d0), nibbleDot(p + 2, xb))
            offset0 += d0 * sums[b]
            acc1.addProduct(SIMD8(repeating: d1), nibbleDot(p + 20, xb + 32))
            offset1 += d1 * sums[b + 1]
            p += 36; xb += 64; b += 2
        }
        if b < blocks {
            let d0 = Block.f16(p, 0)
            acc0.addProduct(SIMD8(repeating: d0), nibbleDot(p + 2, xb))
            offset0 += d0 * sums[b]
        }
        return (acc0 + acc1).sum() - 8 * (offset0 + offset1)
    }

    /// Q4_1: Σ (q·d + m)·x = d·Σ q·x + m·Σ x, Σ x as for Q4_0.
    static func q4_1(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var min0: Float = 0, min1: Float = 0
        var p = row, xb = x
        let blocks = n / 32
        var b = 0
        while b + 2 <= blocks {
            acc0.addProduct(SIMD8(repeating: Block.f16(p, 0)), nibbleDot(p + 4, xb))
            min0 += Block.f16(p, 2) * sums[b]
            acc1.addProduct(SIMD8(repeating: Block.f16(p, 20)), nibbleDot(p + 24, xb + 32))
            min1 += Block.f16(p, 22) * sums[b + 1]
            p += 40; xb += 64; b += 2
        }
        if b < blocks {
            acc0.addProduct(SIMD8(repeating: Block.f16(p, 0)), nibbleDot(p + 4, xb))
            min0 += Block.f16(p, 2) * sums[b]
        }
        return (acc0 + acc1).sum() + (min0 + min1)
    }

    static func q8_0(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 32) {
            var s = Vec.float(p.loadUnaligned(fromByteOffset: 2, as: SIMD8<Int8>.self)) * Vec.load(xb)
            s.addProduct(Vec.float(p.loadUnaligned(fromByteOffset: 10, as: SIMD8<Int8>.self)), Vec.load(xb + 8))
            s.addProduct(Vec.float(p.loadUnaligned(fromByteOffset: 18, as: SIMD8<Int8>.self)), Vec.load(xb + 16))
            s.addProduct(Vec.float(p.loadUnaligned(fromByteOffset: 26, as: SIMD8<Int8>.self)), Vec.load(xb + 24))
            acc.addProduct(SIMD8(repeating: Block.f16(p, 0)), s)
            p += 34; xb += 32
        }
        return acc.sum()
    }

    /// Lane shifts 0...7, for spreading a bit mask over eight lanes (a constant, not a global).
    @inline(__always)
    static var laneShifts: SIMD8<Int32> { SIMD8<Int32>(0, 1, 2, 3, 4, 5, 6, 7) }

    /// Q5_0 / Q5_1: 4-bit quants plus a 32-bit mask of fifth bits (bit j for element j).
    /// Q5_0 is (q - 16)·d, so its offset term is -16d·Σ x; Q5_1 is q·d + m.
    @inline(__always)
    static func q5(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ n: Int,
                   blockBytes: Int, hasMin: Bool) -> Float {
        var acc = SIMD8<Float>()
        var offset: Float = 0
        var p = row, xb = x
        let maskAt = hasMin ? 4 : 2
        for b in 0..<(n / 32) {
            let d = Block.f16(p, 0)
            let mask = SIMD8<Int32>(repeating: Int32(bitPattern: p.loadUnaligned(fromByteOffset: maskAt, as: UInt32.self)))
            let qs = p + maskAt + 4
            let w0 = Vec.widenBytes(qs), w1 = Vec.widenBytes(qs + 8)
            // Bit j of the mask goes to element j: elements 0..15 are low nibbles, 16..31 high nibbles.
            let h0 = ((mask &>> laneShifts) & 1) &<< 4, h1 = ((mask &>> (laneShifts &+ 8)) & 1) &<< 4
            let h2 = ((mask &>> (laneShifts &+ 16)) & 1) &<< 4, h3 = ((mask &>> (laneShifts &+ 24)) & 1) &<< 4
            var s = Vec.float((w0 & 15) | h0) * Vec.load(xb)
            s.addProduct(Vec.float((w1 & 15) | h1), Vec.load(xb + 8))
            s.addProduct(Vec.float((w0 &>> 4) | h2), Vec.load(xb + 16))
            s.addProduct(Vec.float((w1 &>> 4) | h3), Vec.load(xb + 24))
            acc.addProduct(SIMD8(repeating: d), s)
            offset += (hasMin ? Block.f16(p, 2) : -16 * d) * sums[b]
            p += blockBytes; xb += 32
        }
        return acc.sum() + offset
    }

    /// Q5_K: Q4_K plus 32 bytes of fifth bits; chunk c takes bit 2c for its low nibbles, 2c+1 for high.
    static func q5_K(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var minSum: Float = 0
        var p = row, xb = x, sb = sums
        for _ in 0..<(n / 256) {
            let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
            let qh = p + 16
            let h0 = Vec.widenBytes(qh), h1 = Vec.widenBytes(qh + 8), h2 = Vec.widenBytes(qh + 16), h3 = Vec.widenBytes(qh + 24)
            for chunk in 0..<4 {
                let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
                let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
                let xc = xb + 64 * chunk, qs = p + 48 + 32 * chunk
                let lowBit = Int32(2 * chunk), highBit = Int32(2 * chunk + 1)
                let w0 = Vec.widenBytes(qs), w1 = Vec.widenBytes(qs + 8)
                let w2 = Vec.widenBytes(qs + 16), w3 = Vec.widenBytes(qs + 24)
                var sLow = Vec.float((w0 & 15) | (((h0 &>> lowBit) & 1) &<< 4)) * Vec.load(xc)
                sLow.addProduct(Vec.float((w1 & 15) | (((h1 &>> lowBit) & 1) &<< 4)), Vec.load(xc + 8))
                sLow.addProduct(Vec.float((w2 & 15) | (((h2 &>> lowBit) & 1) &<< 4)), Vec.load(xc + 16))
                sLow.addProduct(Vec.float((w3 & 15) | (((h3 &>> lowBit) & 1) &<< 4)), Vec.load(xc + 24))
                var sHigh = Vec.float((w0 &>> 4) | (((h0 &>> highBit) & 1) &<< 4)) * Vec.load(xc + 32)
                sHigh.addProduct(Vec.float((w1 &>> 4) | (((h1 &>> highBit) & 1) &<< 4)), Vec.load(xc + 40))
                sHigh.addProduct(Vec.float((w2 &>> 4) | (((h2 &>> highBit) & 1) &<< 4)), Vec.load(xc + 48))
                sHigh.addProduct(Vec.float((w3 &>> 4) | (((h3 &>> highBit) & 1) &<< 4)), Vec.load(xc + 56))
                acc0.addProduct(SIMD8(repeating: d * Float(s1)), sLow)
                acc1.addProduct(SIMD8(repeating: d * Float(s2)), sHigh)
                minSum += dmin * (Float(m1) * sb[2 * chunk] + Float(m2) * sb[2 * chunk + 1])
            }
            p += 176; xb += 256; sb += 8
        }
        return (acc0 + acc1).sum() - minSum
    }

    /// Q4_K: eight 32-element sub-blocks per 256, each with its own 6-bit scale and min;
    /// Σ (d·sc·q - dmin·m)·x = d·sc·Σ q·x - dmin·m·Σ x, with Σ x from `sums`.
    static func q4_K(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ sums: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var minSum: Float = 0
        var p = row, xb = x, sb = sums
        for _ in 0..<(n / 256) {
            let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
            for chunk in 0..<4 {
                let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
                let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
                let xc = xb + 64 * chunk, qs = p + 16 + 32 * chunk
                // 32 bytes: low nibbles are sub-block 2c, high nibbles sub-block 2c+1.
                let w0 = Vec.widenBytes(qs), w1 = Vec.widenBytes(qs + 8)
                let w2 = Vec.widenBytes(qs + 16), w3 = Vec.widenBytes(qs + 24)
                var sLow = Vec.float(w0 & 15) * Vec.load(xc)
                sLow.addProduct(Vec.float(w1 & 15), Vec.load(xc + 8))
                sLow.addProduct(Vec.float(w2 & 15), Vec.load(xc + 16))
                sLow.addProduct(Vec.float(w3 & 15), Vec.load(xc + 24))
                var sHigh = Vec.float(w0 &>> 4) * Vec.load(xc + 32)
                sHigh.addProduct(Vec.float(w1 &>> 4), Vec.load(xc + 40))
                sHigh.addProduct(Vec.float(w2 &>> 4), Vec.load(xc + 48))
                sHigh.addProduct(Vec.float(w3 &>> 4), Vec.load(xc + 56))
                acc0.addProduct(SIMD8(repeating: d * Float(s1)), sLow)
                acc1.addProduct(SIMD8(repeating: d * Float(s2)), sHigh)
                minSum += dmin * (Float(m1) * sb[2 * chunk] + Float(m2) * sb[2 * chunk + 1])
            }
            p += 144; xb += 256; sb += 8
        }
        return (acc0 + acc1).sum() - minSum
    }

    /// Q6_K: sixteen 16-element groups per 256, each with a signed 8-bit scale. The bit
    /// assembly runs in 32-bit lanes on bytes widened straight from memory.
    static func q6_K(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 256) {
            let d = Block.f16(p, 208)
            for half in 0..<2 {
                let ql = p + 64 * half, qh = p + 128 + 32 * half, sc = p + 192 + 8 * half
                let xh = xb + 128 * half
                for part in 0..<2 {
                    var s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>(), s4 = SIMD8<Float>()
                    for k in 0..<2 {
                        let l = 16 * part + 8 * k
                        let a = Vec.widenBytes(ql + l), b = Vec.widenBytes(ql + 32 + l), h = Vec.widenBytes(qh + l)
                        let q1 = ((a & 15) | ((h & 3) &<< 4)) &- 32
                        let q2 = ((b & 15) | (((h &>> 2) & 3) &<< 4)) &- 32
                        let q3 = ((a &>> 4) | (((h &>> 4) & 3) &<< 4)) &- 32
                        let q4 = ((b &>> 4) | ((h &>> 6) &<< 4)) &- 32
                        s1.addProduct(Vec.float(q1), Vec.load(xh + l))
                        s2.addProduct(Vec.float(q2), Vec.load(xh + l + 32))
                        s3.addProduct(Vec.float(q3), Vec.load(xh + l + 64))
                        s4.addProduct(Vec.float(q4), Vec.load(xh + l + 96))
                    }
                    acc0.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part))), s1)
                    acc1.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 2))), s2)
                    acc0.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 4))), s3)
                    acc1.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 6))), s4)
                }
            }
            p += 210; xb += 256
        }
        return (acc0 + acc1).sum()
    }

}

/// Dot products of one encoded row with Float32 activations. The activations stay Float32
/// (unlike ggml, which quantizes them), so results match dequantize-then-dot up to float rounding.
/// Each kernel factors the block scale out of the inner sum: dot = d * Σ q·x (+ m * Σ x).
@usableFromInline
enum QuantDot {
    typealias Kernel = (_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ cols: Int) -> Float

    /// The vector kernel for `type`, or nil when the type goes through decode-then-dot.
    static func kernel(for type: GGMLType) -> Kernel? {
        switch type {
        case .f32: return { row, x, n in Vec.dot(row.assumingMemoryBound(to: Float.self), x, count: n) }
        case .f16: return f16
        case .bf16: return bf16
        case .q4_0: return q4_0
        case .q4_1: return q4_1
        case .q8_0: return q8_0
        case .q4_K: return q4_K
        case .q6_K: return q6_K
        default: return nil
        }
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

    static func q4_0(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 32) {
            let v = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
            let lo = v & 0x0F, hi = v &>> 4
            var s = Vec.signed(lo.lowHalf, minus: 8) * Vec.load(xb)
            s.addProduct(Vec.signed(lo.highHalf, minus: 8), Vec.load(xb + 8))
            s.addProduct(Vec.signed(hi.lowHalf, minus: 8), Vec.load(xb + 16))
            s.addProduct(Vec.signed(hi.highHalf, minus: 8), Vec.load(xb + 24))
            acc.addProduct(SIMD8(repeating: Block.f16(p, 0)), s)
            p += 18; xb += 32
        }
        return acc.sum()
    }

    static func q4_1(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(), accMin = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 32) {
            let v = p.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
            let lo = v & 0x0F, hi = v &>> 4
            let x0 = Vec.load(xb), x1 = Vec.load(xb + 8), x2 = Vec.load(xb + 16), x3 = Vec.load(xb + 24)
            var s = Vec.float(lo.lowHalf) * x0
            s.addProduct(Vec.float(lo.highHalf), x1)
            s.addProduct(Vec.float(hi.lowHalf), x2)
            s.addProduct(Vec.float(hi.highHalf), x3)
            acc.addProduct(SIMD8(repeating: Block.f16(p, 0)), s)
            accMin.addProduct(SIMD8(repeating: Block.f16(p, 2)), (x0 + x1) + (x2 + x3))
            p += 20; xb += 32
        }
        return (acc + accMin).sum()
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

    static func q4_K(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(), accMin = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 256) {
            let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
            for chunk in 0..<4 {
                let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
                let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
                let xc = xb + 64 * chunk
                let va = p.loadUnaligned(fromByteOffset: 16 + 32 * chunk, as: SIMD16<UInt8>.self)
                let vb = p.loadUnaligned(fromByteOffset: 32 + 32 * chunk, as: SIMD16<UInt8>.self)
                let x0 = Vec.load(xc), x1 = Vec.load(xc + 8), x2 = Vec.load(xc + 16), x3 = Vec.load(xc + 24)
                let x4 = Vec.load(xc + 32), x5 = Vec.load(xc + 40), x6 = Vec.load(xc + 48), x7 = Vec.load(xc + 56)
                let la = va & 0x0F, lb = vb & 0x0F, ha = va &>> 4, hb = vb &>> 4
                var sLow = Vec.float(la.lowHalf) * x0
                sLow.addProduct(Vec.float(la.highHalf), x1)
                sLow.addProduct(Vec.float(lb.lowHalf), x2)
                sLow.addProduct(Vec.float(lb.highHalf), x3)
                var sHigh = Vec.float(ha.lowHalf) * x4
                sHigh.addProduct(Vec.float(ha.highHalf), x5)
                sHigh.addProduct(Vec.float(hb.lowHalf), x6)
                sHigh.addProduct(Vec.float(hb.highHalf), x7)
                acc.addProduct(SIMD8(repeating: d * Float(s1)), sLow)
                acc.addProduct(SIMD8(repeating: d * Float(s2)), sHigh)
                accMin.addProduct(SIMD8(repeating: dmin * Float(m1)), (x0 + x1) + (x2 + x3))
                accMin.addProduct(SIMD8(repeating: dmin * Float(m2)), (x4 + x5) + (x6 + x7))
            }
            p += 144; xb += 256
        }
        return (acc - accMin).sum()
    }

    static func q6_K(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>()
        var p = row, xb = x
        for _ in 0..<(n / 256) {
            let d = Block.f16(p, 208)
            for half in 0..<2 {
                let ql = p + 64 * half, qh = p + 128 + 32 * half, sc = p + 192 + 8 * half
                let xh = xb + 128 * half
                for part in 0..<2 {
                    let l0 = 16 * part
                    let (q1, q2, q3, q4) = Dequantize.q6_KQuants(ql, qh, l0)
                    acc.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part))), q6Dot(q1, xh + l0))
                    acc.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 2))), q6Dot(q2, xh + l0 + 32))
                    acc.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 4))), q6Dot(q3, xh + l0 + 64))
                    acc.addProduct(SIMD8(repeating: d * Float(Block.i8(sc, part + 6))), q6Dot(q4, xh + l0 + 96))
                }
            }
            p += 210; xb += 256
        }
        return acc.sum()
    }

    @inline(__always)
    static func q6Dot(_ q: SIMD16<UInt8>, _ x: UnsafePointer<Float>) -> SIMD8<Float> {
        var s = Vec.signed(q.lowHalf, minus: 32) * Vec.load(x)
        s.addProduct(Vec.signed(q.highHalf, minus: 32), Vec.load(x + 8))
        return s
    }
}

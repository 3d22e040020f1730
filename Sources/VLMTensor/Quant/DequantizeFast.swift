extension Dequantize {
    /// Same values as `reference`, decoded with vector code for the common weight types
    /// (the rest are rare enough that the reference decoder is fine).
    public static func fast(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        let blocks = count / type.blockSize
        let bs = type.blockBytes
        switch type {
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 * count)
        case .f16:
            var i = 0
            while i + 8 <= count { Vec.store(Vec.f16(src + 2 * i), dst + i); i += 8 }
            if i < count { Half.convertF16(src + 2 * i, dst + i, count: count - i) }
        case .bf16:
            var i = 0
            while i + 8 <= count { Vec.store(Vec.bf16(src + 2 * i), dst + i); i += 8 }
            if i < count { Half.convertBF16(src + 2 * i, dst + i, count: count - i) }
        case .q4_0:
            for b in 0..<blocks { fastQ4_0Block(src + b * bs, dst + b * 32) }
        case .q4_1:
            for b in 0..<blocks { fastQ4_1Block(src + b * bs, dst + b * 32) }
        case .q8_0:
            for b in 0..<blocks { fastQ8_0Block(src + b * bs, dst + b * 32) }
        case .q4_K:
            for b in 0..<blocks { fastQ4_KBlock(src + b * bs, dst + b * 256) }
        case .q6_K:
            for b in 0..<blocks { fastQ6_KBlock(src + b * bs, dst + b * 256) }
        case .q5_0, .q5_1, .q8_1, .q2_K, .q3_K, .q5_K, .q8_K:
            reference(type, src, dst, count: count)
        }
    }

    @inline(__always)
    static func fastQ4_0Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0)
        let v = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
        let lo = v & 0x0F, hi = v &>> 4
        Vec.store(Vec.signed(lo.lowHalf, minus: 8) * d, y)
        Vec.store(Vec.signed(lo.highHalf, minus: 8) * d, y + 8)
        Vec.store(Vec.signed(hi.lowHalf, minus: 8) * d, y + 16)
        Vec.store(Vec.signed(hi.highHalf, minus: 8) * d, y + 24)
    }

    @inline(__always)
    static func fastQ4_1Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), m = Block.f16(p, 2)
        let v = p.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        let lo = v & 0x0F, hi = v &>> 4
        Vec.store(Vec.float(lo.lowHalf) * d + m, y)
        Vec.store(Vec.float(lo.highHalf) * d + m, y + 8)
        Vec.store(Vec.float(hi.lowHalf) * d + m, y + 16)
        Vec.store(Vec.float(hi.highHalf) * d + m, y + 24)
    }

    @inline(__always)
    static func fastQ8_0Block(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0)
        for k in 0..<4 {
            Vec.store(Vec.float(p.loadUnaligned(fromByteOffset: 2 + 8 * k, as: SIMD8<Int8>.self)) * d, y + 8 * k)
        }
    }

    @inline(__always)
    static func fastQ4_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 0), dmin = Block.f16(p, 2)
        for chunk in 0..<4 {
            let (s1, m1) = Block.scaleMinK4(2 * chunk, p + 4)
            let (s2, m2) = Block.scaleMinK4(2 * chunk + 1, p + 4)
            let d1 = d * Float(s1), min1 = dmin * Float(m1)
            let d2 = d * Float(s2), min2 = dmin * Float(m2)
            let o = y + 64 * chunk
            for half in 0..<2 {
                let v = p.loadUnaligned(fromByteOffset: 16 + 32 * chunk + 16 * half, as: SIMD16<UInt8>.self)
                let lo = v & 0x0F, hi = v &>> 4
                Vec.store(d1 * Vec.float(lo.lowHalf) - min1, o + 16 * half)
                Vec.store(d1 * Vec.float(lo.highHalf) - min1, o + 16 * half + 8)
                Vec.store(d2 * Vec.float(hi.lowHalf) - min2, o + 32 + 16 * half)
                Vec.store(d2 * Vec.float(hi.highHalf) - min2, o + 32 + 16 * half + 8)
            }
        }
    }

    /// The four 6-bit quant vectors (already minus 32) for 16 positions `l0..<l0+16` of a Q6_K half.
    @inline(__always)
    static func q6_KQuants(_ ql: UnsafeRawPointer, _ qh: UnsafeRawPointer, _ l0: Int)
        -> (SIMD16<UInt8>, SIMD16<UInt8>, SIMD16<UInt8>, SIMD16<UInt8>) {
        let a = ql.loadUnaligned(fromByteOffset: l0, as: SIMD16<UInt8>.self)
        let b = ql.loadUnaligned(fromByteOffset: l0 + 32, as: SIMD16<UInt8>.self)
        let h = qh.loadUnaligned(fromByteOffset: l0, as: SIMD16<UInt8>.self)
        let q1 = (a & 0x0F) | ((h & 3) &<< 4)
        let q2 = (b & 0x0F) | (((h &>> 2) & 3) &<< 4)
        let q3 = (a &>> 4) | (((h &>> 4) & 3) &<< 4)
        let q4 = (b &>> 4) | (((h &>> 6) & 3) &<< 4)
        return (q1, q2, q3, q4)
    }

    @inline(__always)
    static func fastQ6_KBlock(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = Block.f16(p, 208)
        for half in 0..<2 {
            let ql = p + 64 * half, qh = p + 128 + 32 * half, sc = p + 192 + 8 * half
            let o = y + 128 * half
            for part in 0..<2 {
                let l0 = 16 * part
                let (q1, q2, q3, q4) = q6_KQuants(ql, qh, l0)
                storeQ6(q1, d * Float(Block.i8(sc, part)), o + l0)
                storeQ6(q2, d * Float(Block.i8(sc, part + 2)), o + l0 + 32)
                storeQ6(q3, d * Float(Block.i8(sc, part + 4)), o + l0 + 64)
                storeQ6(q4, d * Float(Block.i8(sc, part + 6)), o + l0 + 96)
            }
        }
    }

    @inline(__always)
    static func storeQ6(_ q: SIMD16<UInt8>, _ scale: Float, _ o: UnsafeMutablePointer<Float>) {
        Vec.store(scale * Vec.signed(q.lowHalf, minus: 32), o)
        Vec.store(scale * Vec.signed(q.highHalf, minus: 32), o + 8)
    }
}

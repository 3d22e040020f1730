/// Small SIMD building blocks for the quantized kernels. Everything is 8 lanes wide (one AVX2
/// register). Conversions are spelled lane by lane: the stdlib's generic SIMD conversion
/// initializers are not reliably inlined across files, while this form always becomes one
/// widen + convert instruction pair.
@usableFromInline
enum Vec {
    @inline(__always) @usableFromInline
    static func load(_ p: UnsafePointer<Float>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }

    @inline(__always) @usableFromInline
    static func store(_ v: SIMD8<Float>, _ p: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }

    @inline(__always) @usableFromInline
    static func float(_ v: SIMD8<UInt8>) -> SIMD8<Float> {
        SIMD8<Float>(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    @inline(__always) @usableFromInline
    static func float(_ v: SIMD8<Int8>) -> SIMD8<Float> {
        SIMD8<Float>(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    /// Eight bytes widened to 32-bit lanes straight from memory (one load-and-widen instruction),
    /// so both nibbles of each byte can be split afterwards with cheap lane-wise masks and shifts.
    @inline(__always) @usableFromInline
    static func widenBytes(_ p: UnsafeRawPointer) -> SIMD8<Int32> {
        let v = p.loadUnaligned(as: SIMD8<UInt8>.self)
        return SIMD8<Int32>(Int32(v[0]), Int32(v[1]), Int32(v[2]), Int32(v[3]),
                            Int32(v[4]), Int32(v[5]), Int32(v[6]), Int32(v[7]))
    }

    @inline(__always) @usableFromInline
    static func float(_ v: SIMD8<Int32>) -> SIMD8<Float> {
        SIMD8<Float>(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    /// Bytes holding small unsigned values reinterpreted as signed after removing a bias
    /// (q - bias fits in Int8 for every ggml format).
    @inline(__always) @usableFromInline
    static func signed(_ v: SIMD8<UInt8>, minus bias: UInt8) -> SIMD8<Float> {
        float(unsafeBitCast(v &- bias, to: SIMD8<Int8>.self))
    }

    @inline(__always) @usableFromInline
    static func f16(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        SIMD8<Float>(unsafeBitCast(p.loadUnaligned(as: SIMD8<UInt16>.self), to: SIMD8<Float16>.self))
    }

    @inline(__always) @usableFromInline
    static func bf16(_ p: UnsafeRawPointer) -> SIMD8<Float> {
        let h = p.loadUnaligned(as: SIMD8<UInt16>.self)
        let wide = SIMD8<UInt32>(UInt32(h[0]), UInt32(h[1]), UInt32(h[2]), UInt32(h[3]),
                                 UInt32(h[4]), UInt32(h[5]), UInt32(h[6]), UInt32(h[7])) &<< 16
        return unsafeBitCast(wide, to: SIMD8<Float>.self)
    }

    /// Plain dot product of two Float32 arrays, four accumulators to hide FMA latency.
    @inline(__always) @usableFromInline
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Float {
        var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
        var i = 0
        while i + 32 <= count {
            s0.addProduct(load(a + i), load(b + i))
            s1.addProduct(load(a + i + 8), load(b + i + 8))
            s2.addProduct(load(a + i + 16), load(b + i + 16))
            s3.addProduct(load(a + i + 24), load(b + i + 24))
            i += 32
        }
        while i + 8 <= count { s0.addProduct(load(a + i), load(b + i)); i += 8 }
        var total = ((s0 + s1) + (s2 + s3)).sum()
        while i < count { total += a[i] * b[i]; i += 1 }
        return total
    }
}

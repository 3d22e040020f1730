import Foundation

/// Elementwise activations, keyed by the names Hugging Face configs use for `hidden_act` and
/// `projector_hidden_act`. Decoding an unknown name fails (`init(rawValue:)` returns nil), so a
/// config asking for something unimplemented is refused instead of silently approximated.
public enum Activation: String, Codable, Sendable, CaseIterable {
    /// x·σ(1.702x): OpenAI CLIP.
    case quickGelu = "quick_gelu"
    /// 0.5x(1 + erf(x/√2)): the exact GELU (`nn.GELU()`), LLaVA projectors.
    case gelu
    /// 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))): SigLIP.
    case geluPytorchTanh = "gelu_pytorch_tanh"
    /// The same tanh approximation under its older name.
    case geluNew = "gelu_new"
    /// x·σ(x).
    case silu

    /// Elements per thread chunk: smaller splits cost more in dispatch than they save.
    static let minChunk = 1 << 14

    /// x ← act(x) over `count` values, threaded.
    public func apply(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let kind = self
        Parallel.forEach(count, minChunk: Self.minChunk) { range in
            kind.run(x + range.lowerBound, range.count, bias: nil)
        }
    }

    /// x[r, :] ← act(x[r, :] + bias) for `rows` rows of `width`: the bias add of the preceding
    /// linear layer fused into the same pass over memory.
    public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int, bias: UnsafePointer<Float>?) {
        let kind = self
        Parallel.forEach(rows, minChunk: max(1, Self.minChunk / max(width, 1))) { range in
            for r in range { kind.run(x + r * width, width, bias: bias) }
        }
    }

    /// One contiguous run, eight lanes at a time; the tail is padded through a stack vector so
    /// every element sees the same arithmetic.
    @inline(__always)
    func run(_ x: UnsafeMutablePointer<Float>, _ n: Int, bias: UnsafePointer<Float>?) {
        let raw = UnsafeMutableRawPointer(x)
        var i = 0
        while i + 8 <= n {
            var v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            if let bias { v += UnsafeRawPointer(bias).loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) }
            raw.storeBytes(of: evaluate(v), toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        if i < n {
            var v = SIMD8<Float>()
            for j in 0..<(n - i) { v[j] = x[i + j] + (bias?[i + j] ?? 0) }
            let y = evaluate(v)
            for j in 0..<(n - i) { x[i + j] = y[j] }
        }
    }

    @inline(__always)
    func evaluate(_ x: SIMD8<Float>) -> SIMD8<Float> {
        switch self {
        case .quickGelu: return x / (1 + VectorMath.exp(-1.702 * x))
        case .silu: return x / (1 + VectorMath.exp(-x))
        case .geluPytorchTanh, .geluNew:
            // 0.5(1 + tanh u) = σ(2u), so the tanh form needs one exp and no cancellation.
            let u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            return x / (1 + VectorMath.exp(-2 * u))
        case .gelu:
            return 0.5 * x * VectorMath.onePlusErf(x * 0.7071067811865476)
        }
    }
}

/// Vectorized transcendental functions for the activation and softmax kernels.
public enum VectorMath {
    /// eˣ to about 2 ulp (Cephes polynomial on a ln 2 range reduction). Inputs are clamped to
    /// ±88.3, so large negatives give ~0 and large positives a big finite value, never inf.
    @inline(__always)
    public static func exp(_ x: SIMD8<Float>) -> SIMD8<Float> {
        var x = x
        x.replace(with: SIMD8(repeating: -87.3), where: x .< -87.3)
        x.replace(with: SIMD8(repeating: 88.3), where: x .> 88.3)
        // Adding 1.5·2²³ rounds to the nearest integer and leaves it in the low mantissa bits:
        // no float-to-int conversion (Swift's generic one is scalar and slow).
        let magic = SIMD8<Float>(repeating: 12582912)
        let shifted = x * 1.44269504088896341 + magic
        let n = shifted - magic
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p = SIMD8<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        p = p * r * r + r + 1
        // 2ⁿ built straight into the exponent bits; n + 127 stays within 1...254 after the clamp.
        let integer = unsafeBitCast(shifted, to: SIMD8<Int32>.self) &- 0x4B40_0000
        let exponent = (integer &+ 127) &<< 23
        return p * unsafeBitCast(exponent, to: SIMD8<Float>.self)
    }

    /// 1 + erf(z), accurate to ~1.5e-7 absolute (Abramowitz & Stegun 7.1.26). Computed as
    /// q·e^(−z²) for z < 0 rather than 1 + erf(z), so the negative tail keeps relative accuracy.
    @inline(__always)
    public static func onePlusErf(_ z: SIMD8<Float>) -> SIMD8<Float> {
        var a = z
        a.replace(with: -z, where: z .< 0)
        let t = 1 / (1 + 0.3275911 * a)
        var q = SIMD8<Float>(repeating: 1.061405429)
        q = q * t - 1.453152027
        q = q * t + 1.421413741
        q = q * t - 0.284496736
        q = q * t + 0.254829592
        let tail = q * t * exp(-a * a)   // 1 − erf(|z|)
        return tail.replacing(with: 2 - tail, where: z .>= 0)
    }
}

extension Kernels {
    /// In-place softmax of each of `rows` rows of `width`, threaded over rows, vectorized exp.
    /// For long rows such as attention scores, where `softmax`'s scalar exp dominates.
    public static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
        Parallel.forEach(rows, minChunk: max(1, 8192 / max(width, 1))) { range in
            for r in range { softmaxVectorized(x + r * width, width) }
        }
    }

    /// In-place softmax of one row with the vectorized exp.
    @inline(__always)
    public static func softmaxVectorized(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        let raw = UnsafeMutableRawPointer(x)
        var mx = -Float.infinity
        var vmax = SIMD8<Float>(repeating: -.infinity)
        var i = 0
        while i + 8 <= n {
            // `replace(where:)` compiles to vmaxps; `pointwiseMax` is an out-of-line generic call.
            let v = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            vmax.replace(with: v, where: v .> vmax)
            i += 8
        }
        mx = vmax.max()
        while i < n { mx = Swift.max(mx, x[i]); i += 1 }

        var vsum = SIMD8<Float>()
        var sum: Float = 0
        i = 0
        while i + 8 <= n {
            let e = VectorMath.exp(raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) - mx)
            raw.storeBytes(of: e, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            vsum += e
            i += 8
        }
        while i < n { let e = expf(x[i] - mx); x[i] = e; sum += e; i += 1 }
        let inv = 1 / (sum + vsum.sum())
        i = 0
        while i + 8 <= n {
            raw.storeBytes(of: raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self) * inv, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { x[i] *= inv; i += 1 }
    }
}

extension Reference {
    /// The activations exactly as PyTorch writes them, with libm's erf, tanh and exp.
    public static func activation(_ kind: Activation, _ x: [Float]) -> [Float] {
        x.map { v in
            switch kind {
            case .quickGelu: return v * (1 / (1 + expf(-1.702 * v)))
            case .silu: return v / (1 + expf(-v))
            case .gelu: return 0.5 * v * (1 + erff(v / Float(2).squareRoot()))
            case .geluPytorchTanh, .geluNew:
                return 0.5 * v * (1 + tanhf(0.7978845608028654 * (v + 0.044715 * v * v * v)))
            }
        }
    }
}

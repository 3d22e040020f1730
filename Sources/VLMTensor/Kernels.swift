import CBLAS
import CVLMKernels
import Foundation

/// Fast Float32 kernels used by the models. Each has a plain twin in `Reference` that the tests
/// compare against. Pointers are raw so hot loops carry no bounds checks or copy-on-write.
public enum Kernels {
    /// `--bf16`: the large matrix products (training's, the vision encoder's, a Float32 prefill's)
    /// round both operands to bfloat16 and sum in Float32 (`vlm_gemm_bf16`), as the seed's
    /// `bf16` training multiplies; AVX512-BF16 does twice the multiply-adds per instruction.
    /// Float32 by default.
    nonisolated(unsafe) public static var bf16Products = false

    /// Whether this build multiplies bfloat16 in hardware (AVX512-BF16).
    public static var hasBF16Instructions: Bool { vlm_gemm_bf16_available() != 0 }

    /// c[m, n] = a[m, k] · b[n, k]ᵀ (+ c when `accumulate`). Linear layers store weights `[out, in]`,
    /// so this is `x · Wᵀ` without a transpose copy.
    public static func matmulTransposed(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, accumulate: Bool = false
    ) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(k), b, Int32(k), accumulate ? 1 : 0, c, Int32(n))
    }

    /// c[m, n] = a[m, k] · b[k, n] (+ c when `accumulate`).
    public static func matmul(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, accumulate: Bool = false, ldb: Int? = nil
    ) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    1, a, Int32(k), b, Int32(ldb ?? n), accumulate ? 1 : 0, c, Int32(n))
    }

    /// General strided GEMM: c = a·b (b transposed when `transB`), leading dimensions explicit so
    /// per-head slices of a packed `[tokens, heads·headDim]` buffer need no copies.
    /// `transA` reads a as `[k, m]` (gradients of weights: dW = dYᵀ·X); the product is scaled by `alpha`.
    /// With `bf16Products` in bfloat16, on the calling thread (attention calls it per head from its own threads).
    public static func gemm(
        m: Int, n: Int, k: Int,
        _ a: UnsafePointer<Float>, lda: Int, transA: Bool = false, _ b: UnsafePointer<Float>, ldb: Int, transB: Bool,
        _ c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool = false, alpha: Float = 1
    ) {
        if bf16Products, vlm_gemm_bf16(Int32(m), Int32(n), Int32(k), alpha, a, lda, transA ? 1 : 0, b, ldb, transB ? 1 : 0,
                                       accumulate ? 1 : 0, c, ldc, 1) == 0 {
            return
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), Int32(k),
                    alpha, a, Int32(lda), b, Int32(ldb), accumulate ? 1 : 0, c, Int32(ldc))
    }

    /// Σ a[i]·b[i], eight lanes at a time.
    @inlinable
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var i = 0
        let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
        while i + 16 <= n {
            acc0 += ra.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            acc1 += ra.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self)
                * rb.loadUnaligned(fromByteOffset: 4 * i + 32, as: SIMD8<Float>.self)
            i += 16
        }
        var s = (acc0 + acc1).sum()
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    /// y[i] += alpha · x[i].
    @inlinable
    public static func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let va = SIMD8<Float>(repeating: alpha)
        let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
        while i + 8 <= n {
            let v = ry.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                + va * rx.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            ry.storeBytes(of: v, toByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { y[i] += alpha * x[i]; i += 1 }
    }

    /// In-place softmax over `n` values, max-subtracted for stability.
    @inlinable
    public static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        var mx = -Float.infinity
        for i in 0..<n where x[i] > mx { mx = x[i] }
        var sum: Float = 0
        for i in 0..<n { let e = expf(x[i] - mx); x[i] = e; sum += e }
        let inv = 1 / sum
        for i in 0..<n { x[i] *= inv }
    }

    /// gate[i] = silu(gate[i]) · up[i] (SwiGLU), threaded.
    public static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        Parallel.forEach(n, minChunk: 1 << 14) { range in
            for i in range {
                let g = gate[i]
                gate[i] = g / (1 + expf(-g)) * up[i]
            }
        }
    }

    /// y[i] += x[i], threaded.
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        Parallel.forEach(n, minChunk: 1 << 15) { range in
            axpy(1, x + range.lowerBound, y + range.lowerBound, range.count)
        }
    }
}

/// Plain, obviously-correct versions of `Kernels` and of the tape's norms, for tests.
public enum Reference {
    public static func matmulTransposed(_ a: [Float], _ b: [Float], m: Int, n: Int, k: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        for i in 0..<m { for j in 0..<n {
            var s: Float = 0
            for t in 0..<k { s += a[i * k + t] * b[j * k + t] }
            c[i * n + j] = s
        } }
        return c
    }

    public static func rmsNorm(_ x: [Float], _ weight: [Float], dim: Int, eps: Float) -> [Float] {
        var y = x
        for r in 0..<(x.count / dim) {
            var ss: Float = 0
            for i in 0..<dim { ss += x[r * dim + i] * x[r * dim + i] }
            let scale = 1 / (ss / Float(dim) + eps).squareRoot()
            for i in 0..<dim { y[r * dim + i] = x[r * dim + i] * scale * weight[i] }
        }
        return y
    }

    public static func layerNorm(_ x: [Float], _ weight: [Float], _ bias: [Float], dim: Int, eps: Float) -> [Float] {
        var y = x
        for r in 0..<(x.count / dim) {
            let row = x[(r * dim)..<((r + 1) * dim)]
            let mean = row.reduce(0, +) / Float(dim)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(dim)
            for i in 0..<dim { y[r * dim + i] = (x[r * dim + i] - mean) / (variance + eps).squareRoot() * weight[i] + bias[i] }
        }
        return y
    }

    public static func softmax(_ x: [Float]) -> [Float] {
        let mx = x.max() ?? 0
        let e = x.map { expf($0 - mx) }
        let s = e.reduce(0, +)
        return e.map { $0 / s }
    }

    public static func swiglu(_ gate: [Float], _ up: [Float]) -> [Float] {
        zip(gate, up).map { g, u in g / (1 + expf(-g)) * u }
    }
}

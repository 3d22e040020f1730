import CBLAS
import CVLMKernels
import Foundation
import VLMTensor

/// W `[out, in]` of a linear op: a graph value (trainable or a constant), or a frozen matrix in
/// its stored encoding (any GGUF type), which is read in place: one token goes through the
/// quantized mat-vec (decode is memory bound), several dequantize it one matrix at a time into a
/// reused scratch for sgemm, forward and backward alike, so no Float32 copy of a model is made.
public enum LinearWeight: @unchecked Sendable {
    case value(Variable)
    case stored(QuantizedMatrix)

    public var outFeatures: Int {
        switch self { case .value(let w): return w.shape[0]; case .stored(let m): return m.rows }
    }
    public var inFeatures: Int {
        switch self { case .value(let w): return w.shape[1]; case .stored(let m): return m.cols }
    }
    /// The leaf a weight gradient goes to.
    var variable: Variable? { if case .value(let w) = self { return w }; return nil }

    /// Runs `body` with W as Float32 `[out, in]`: in place when it is, else dequantized into a scratch.
    func withFloats<T>(_ body: (UnsafePointer<Float>) -> T) -> T {
        switch self {
        case .value(let w): return body(w.data)
        case .stored(let m) where m.type == .f32: return body(m.data.assumingMemoryBound(to: Float.self))
        case .stored(let m):
            return ScratchPool.shared.withBuffer(count: m.rows * m.cols) { scratch in
                m.dequantize(into: scratch)
                return body(scratch)
            }
        }
    }

    /// y `[n, out]` = x `[n, in]` · Wᵀ. With int8 activations (QuantizedMatrix.activations),
    /// inference multiplies by 8-bit activations as llama.cpp does: one token always, several when
    /// `prefersIntegerProduct` (a large W, a short prompt). Training keeps x in Float32, so its
    /// gradients are those of the dequantized weights.
    func multiplyTransposed(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows n: Int, training: Bool) {
        if case .stored(let m) = self {
            if n == 1 { return m.matVec(x, y) }
            if !training && m.prefersIntegerProduct(tokens: n) { return m.matMulInteger(x, y, tokens: n) }
        }
        withFloats { w in matmulTransposed(x, w, y, m: n, n: outFeatures, k: inFeatures) }
    }

    /// Runs `body(first, count, block)` over W's rows in blocks of at most `blockRows`, each block
    /// Float32 `[count, in]`: in place when W is Float32, else dequantized into a reused scratch.
    /// A language-model head is 200–800 MB as Float32; a block of it is a few MB.
    func forEachRowBlock(_ blockRows: Int, _ body: (_ first: Int, _ count: Int, _ block: UnsafePointer<Float>) -> Void) {
        switch self {
        case .value(let w): body(0, w.shape[0], w.data)
        case .stored(let m) where m.type == .f32: body(0, m.rows, m.data.assumingMemoryBound(to: Float.self))
        case .stored(let m):
            let cols = m.cols, per = max(1, min(blockRows, m.rows))
            ScratchPool.shared.withBuffer(count: per * cols) { scratch in
                for first in stride(from: 0, to: m.rows, by: per) {
                    let count = min(per, m.rows - first)
                    Parallel.forEach(count, minChunk: 16) { range in
                        for r in range { m.dequantizeRow(first + r, into: scratch + r * cols) }
                    }
                    body(first, count, scratch)
                }
            }
        }
    }

    /// dx `[n, in]` (+)= dy `[n, out]` · W.
    func multiply(_ dy: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, rows n: Int, accumulate: Bool) {
        withFloats { w in matmul(dy, w, dx, m: n, n: inFeatures, k: outFeatures, accumulate: accumulate) }
    }
}

extension Tape {
    /// y `[n, out]` = x `[n, in]` · Wᵀ (+ b), W `[out, in]` as PyTorch stores it.
    public func linear(_ x: Variable, _ weight: Variable, bias: Variable? = nil) -> Variable {
        affine(x, .value(weight), bias: bias, adapter: nil)
    }

    /// A model's linear layer: its stored weight, bias and LoRA adapter. The adapter's dropout is
    /// applied while the tape has a random stream (training).
    public func linear(_ x: Variable, _ layer: Linear) -> Variable {
        let weight: LinearWeight = layer.weightLeaf.map { .value($0) } ?? .stored(layer.weight)
        guard let adapter = layer.adapter else { return affine(x, weight, bias: layer.bias, adapter: nil) }
        var input = x
        if adapter.dropout > 0, random != nil { input = dropout(x, probability: adapter.dropout, random: &random!) }
        return affine(x, weight, bias: layer.bias, adapter: (input, adapter.a, adapter.b, adapter.scale))
    }

    /// PEFT LoRA around a frozen linear: y = x·Wᵀ (+ b) + scale · (dropout(x)·Aᵀ)·Bᵀ.
    public func loraLinear(_ x: Variable, _ weight: Variable, bias: Variable?, a: Variable, b: Variable, scale: Float,
                           dropout: Float, random: inout SeededRandom) -> Variable {
        affine(x, .value(weight), bias: bias, adapter: (self.dropout(x, probability: dropout, random: &random), a, b, scale))
    }

    /// y = x·Wᵀ (+ b) (+ scale · (xa·Aᵀ)·Bᵀ): the adapter's product is added by the GEMM into y,
    /// so no `[n, out]` temporaries are made for it, forward or backward. Only the `[n, r]`
    /// low-rank activation is kept.
    private func affine(_ x: Variable, _ weight: LinearWeight, bias: Variable?,
                        adapter: (input: Variable, a: Variable, b: Variable, scale: Float)?) -> Variable {
        let n = x.rows, inp = weight.inFeatures, out = weight.outFeatures
        checkShape(x.columns == inp, "linear: input width \(x.columns), weight \(out)×\(inp)")
        let y = output(shape: Array(x.shape.dropLast()) + [out],
                       requiresGrad: x.requiresGrad || weight.variable?.requiresGrad == true || bias?.requiresGrad == true
                           || adapter.map { $0.input.requiresGrad || $0.a.requiresGrad || $0.b.requiresGrad } == true)
        weight.multiplyTransposed(x.data, y.data, rows: n, training: isRecording)
        if let bias { addRowVector(bias.data, to: y.data, rows: n, width: out) }
        var low: FloatStorage?   // xa·Aᵀ `[n, r]`, kept for backward
        if let (xa, a, b, scale) = adapter {
            let r = a.shape[0]
            checkShape(xa.count == x.count && a.shape == [r, inp] && b.shape == [out, r],
                       "loraLinear: x \(x.shape), weight \(out)×\(inp), A \(a.shape), B \(b.shape)")
            let storage = FloatStorage(count: n * r, zeroed: false)
            matmulTransposed(xa.data, a.data, storage.pointer, m: n, n: r, k: inp)
            sgemm(m: n, n: out, k: r, alpha: scale, storage.pointer, lda: r, b.data, ldb: r, transB: true, beta: 1, y.data, ldc: out)
            low = storage
        }

        record(y) { dy in
            var inputGradientDone = false
            if let (xa, a, b, scale) = adapter, let low {
                inputGradientDone = Self.lowRankBackward(dy, x: x, weight: weight, xa: xa, a: a, b: b, scale: scale, low: low)
            }
            if x.requiresGrad && !inputGradientDone {
                // dx[n, in] += dy[n, out] · W[out, in]
                let (gx, accumulate) = x.gradDestination()
                weight.multiply(dy, gx, rows: n, accumulate: accumulate)
            }
            if let w = weight.variable { accumulateWeightGradients(dy, x, w, bias) } else { accumulateBiasGradient(dy, rows: n, bias) }
        }
        return y
    }

    /// The adapter's gradients: dB += scale·dyᵀ·low, dLow = scale·dy·B, dA += dLowᵀ·xa,
    /// dxa += dLow·A. When xa is x itself, dx = dy·W + dLow·A is written here (returns true).
    private static func lowRankBackward(_ dy: UnsafeMutablePointer<Float>, x: Variable, weight: LinearWeight,
                                        xa: Variable, a: Variable, b: Variable, scale: Float, low: FloatStorage) -> Bool {
        let n = x.rows, inp = weight.inFeatures, out = weight.outFeatures, r = a.shape[0]
        if b.requiresGrad {
            sgemm(m: out, n: r, k: n, alpha: scale, dy, lda: out, transA: true, low.pointer, ldb: r, transB: false,
                  beta: 1, b.gradBuffer(), ldc: r)
        }
        guard a.requiresGrad || xa.requiresGrad else { return false }
        let dLow = FloatStorage(count: n * r, zeroed: false)
        sgemm(m: n, n: r, k: out, alpha: scale, dy, lda: out, b.data, ldb: r, transB: false, beta: 0, dLow.pointer, ldc: r)
        if a.requiresGrad {
            sgemm(m: r, n: inp, k: n, alpha: 1, dLow.pointer, lda: r, transA: true, xa.data, ldb: inp, transB: false,
                  beta: 1, a.gradBuffer(), ldc: inp)
        }
        if xa.requiresGrad && xa !== x {
            let (gxa, accumulate) = xa.gradDestination()
            matmul(dLow.pointer, a.data, gxa, m: n, n: inp, k: r, accumulate: accumulate)
        }
        guard xa === x && x.requiresGrad else { return false }
        // The frozen product first, then the adapter's added to it.
        let (gx, accumulate) = x.gradDestination()
        weight.multiply(dy, gx, rows: n, accumulate: accumulate)
        matmul(dLow.pointer, a.data, gx, m: n, n: inp, k: r, accumulate: true)
        return true
    }
}

/// c = alpha · op(a)·op(b) + beta · c (row-major; op transposes when asked), spread over vlmsh's
/// threads: c's rows (or, when it has fewer rows than columns, its columns) in chunks, more than
/// one per thread so a thread that the OS preempts holds the others up less, each chunk one
/// single-threaded OpenBLAS call. OpenBLAS's own threads stay asleep: after each call they spin
/// (yielding) for a while, which takes the cores from the threads doing the elementwise work
/// between GEMMs. Every element of c is computed by one call, as a whole, so results do not depend
/// on the split. With `Kernels.bf16Products` (`--bf16`) the bfloat16 GEMM does it all, threaded
/// over pieces of c the same way.
package func sgemm(m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<Float>, lda: Int, transA: Bool = false,
           _ b: UnsafePointer<Float>, ldb: Int, transB: Bool, beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    @Sendable func call(_ m: Int, _ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    guard m > 0 && n > 0 else { return }
    let threads = Parallel.threads
    if Kernels.bf16Products,
       vlm_gemm_bf16(Int32(m), Int32(n), Int32(k), alpha, a, lda, transA ? 1 : 0, b, ldb, transB ? 1 : 0, beta, c, ldc, Int32(threads)) == 0 {
        return
    }
    let splitRows = m >= n
    let extent = splitRows ? m : n
    // Chunks of at least 32 rows/columns (a multiple of 16, OpenBLAS's kernel block), two per
    // thread: more would pack the shared operand more often.
    let chunks = min(threads * 2, extent / 32)
    guard threads > 1, chunks > 1, m * n * k >= 1 << 20 else { return call(m, n, a, b, c) }
    let per = ((extent + chunks - 1) / chunks + 15) / 16 * 16
    let count = (extent + per - 1) / per
    nonisolated(unsafe) let a = a, b = b, c = c
    withSingleThreadedBLAS {
        Parallel.run(count) { i in
            let lo = i * per, size = min(per, extent - lo)
            if splitRows {
                // Rows lo..<lo+size of op(a) and of c.
                call(size, n, transA ? a + lo : a + lo * lda, b, c + lo * ldc)
            } else {
                // Columns lo..<lo+size of op(b) and of c.
                call(m, size, a, transB ? b + lo * ldb : b + lo, c + lo)
            }
        }
    }
}

/// c[m, n] = a[m, k] · b[n, k]ᵀ (+ c when `accumulate`), threaded as `sgemm`.
package func matmulTransposed(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                      m: Int, n: Int, k: Int, accumulate: Bool = false) {
    sgemm(m: m, n: n, k: k, alpha: 1, a, lda: k, b, ldb: k, transB: true, beta: accumulate ? 1 : 0, c, ldc: n)
}

/// c[m, n] = a[m, k] · b[k, n] (+ c when `accumulate`), threaded as `sgemm`.
package func matmul(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
            m: Int, n: Int, k: Int, accumulate: Bool = false) {
    sgemm(m: m, n: n, k: k, alpha: 1, a, lda: k, b, ldb: n, transB: false, beta: accumulate ? 1 : 0, c, ldc: n)
}

/// y[r, :] += v for every row, threaded.
package func addRowVector(_ v: UnsafePointer<Float>, to y: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    Parallel.forEach(rows, minChunk: max(1, 32768 / max(width, 1))) { range in
        for r in range { Kernels.axpy(1, v, y + r * width, width) }
    }
}

/// A linear's own gradients: dW[out, in] += dyᵀ·x and db[out] += Σ_rows dy.
private func accumulateWeightGradients(_ dy: UnsafeMutablePointer<Float>, _ x: Variable, _ weight: Variable, _ bias: Variable?) {
    let n = x.rows, inp = weight.shape[1], out = weight.shape[0]
    if weight.requiresGrad {
        sgemm(m: out, n: inp, k: n, alpha: 1, dy, lda: out, transA: true, x.data, ldb: inp, transB: false,
              beta: 1, weight.gradBuffer(), ldc: inp)
    }
    accumulateBiasGradient(dy, rows: n, bias)
}

/// db[out] += Σ_rows dy.
private func accumulateBiasGradient(_ dy: UnsafeMutablePointer<Float>, rows n: Int, _ bias: Variable?) {
    guard let bias, bias.requiresGrad else { return }
    let db = bias.gradBuffer(), out = bias.count
    for row in 0..<n { Kernels.axpy(1, dy + row * out, db, out) }
}

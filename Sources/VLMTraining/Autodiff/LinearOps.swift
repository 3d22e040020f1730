import CBLAS
import Foundation
import VLMGeneration
import VLMTensor

extension Tape {
    /// y `[n, out]` = x `[n, in]` · Wᵀ (+ b), W `[out, in]` as PyTorch stores it.
    public func linear(_ x: Variable, _ weight: Variable, bias: Variable? = nil) -> Variable {
        let n = x.rows, inp = weight.shape[1], out = weight.shape[0]
        checkShape(x.columns == inp, "linear: input width \(x.columns), weight \(weight.shape)")
        let y = Variable(Tensor(shape: Array(x.shape.dropLast()) + [out], zeroed: false),
                         requiresGrad: x.requiresGrad || weight.requiresGrad || bias?.requiresGrad == true)
        matmulTransposed(x.data, weight.data, y.data, m: n, n: out, k: inp)
        if let bias { addRowVector(bias.data, to: y.data, rows: n, width: out) }

        record(y) { dy in
            // dx[n, in] += dy[n, out] · W[out, in]
            if x.requiresGrad {
                let (gx, accumulate) = x.gradDestination()
                matmul(dy, weight.data, gx, m: n, n: inp, k: out, accumulate: accumulate)
            }
            accumulateWeightGradients(dy, x, weight, bias)
        }
        return y
    }

    /// PEFT LoRA around a frozen linear: y = x·Wᵀ (+ b) + scale · (dropout(x)·Aᵀ)·Bᵀ.
    public func loraLinear(_ x: Variable, _ weight: Variable, bias: Variable?, a: Variable, b: Variable, scale: Float,
                           dropout: Float, random: inout SeededRandom) -> Variable {
        lowRankLinear(x, weight, bias: bias, adapterInput: self.dropout(x, probability: dropout, random: &random),
                      a: a, b: b, scale: scale)
    }

    /// y = x·Wᵀ (+ b) + scale · (xa·Aᵀ)·Bᵀ as one op (xa is x, or x after LoRA dropout): the
    /// adapter's product is added by the GEMM into y, so no `[n, out]` temporaries are made for
    /// it, forward or backward. Only the `[n, r]` low-rank activation is kept.
    func lowRankLinear(_ x: Variable, _ weight: Variable, bias: Variable?, adapterInput xa: Variable,
                       a: Variable, b: Variable, scale: Float) -> Variable {
        let n = x.rows, inp = weight.shape[1], out = weight.shape[0], r = a.shape[0]
        checkShape(x.columns == inp && xa.count == x.count && a.shape == [r, inp] && b.shape == [out, r],
                   "loraLinear: x \(x.shape), weight \(weight.shape), A \(a.shape), B \(b.shape)")
        let y = Variable(Tensor(shape: Array(x.shape.dropLast()) + [out], zeroed: false),
                         requiresGrad: x.requiresGrad || weight.requiresGrad || bias?.requiresGrad == true
                            || xa.requiresGrad || a.requiresGrad || b.requiresGrad)
        matmulTransposed(x.data, weight.data, y.data, m: n, n: out, k: inp)
        if let bias { addRowVector(bias.data, to: y.data, rows: n, width: out) }
        let low = FloatStorage(count: n * r, zeroed: false)   // xa·Aᵀ, kept for backward
        matmulTransposed(xa.data, a.data, low.pointer, m: n, n: r, k: inp)
        sgemm(m: n, n: out, k: r, alpha: scale, low.pointer, lda: r, b.data, ldb: r, transB: true, beta: 1, y.data, ldc: out)

        record(y) { dy in
            let pl = low.pointer   // keeps the storage alive until backward
            // dB += scale · dyᵀ·low
            if b.requiresGrad {
                sgemm(m: out, n: r, k: n, alpha: scale, dy, lda: out, transA: true, pl, ldb: r, transB: false,
                      beta: 1, b.gradBuffer(), ldc: r)
            }
            // dLow = scale · dy·B;  dA += dLowᵀ·xa;  dxa += dLow·A
            if a.requiresGrad || xa.requiresGrad {
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
                if xa === x && x.requiresGrad {
                    // dx = dy·W + dLow·A: the frozen product first, then the adapter's added to it.
                    let (gx, accumulate) = x.gradDestination()
                    matmul(dy, weight.data, gx, m: n, n: inp, k: out, accumulate: accumulate)
                    matmul(dLow.pointer, a.data, gx, m: n, n: inp, k: r, accumulate: true)
                }
            }
            if x.requiresGrad && !(xa === x && (a.requiresGrad || xa.requiresGrad)) {
                let (gx, accumulate) = x.gradDestination()
                matmul(dy, weight.data, gx, m: n, n: inp, k: out, accumulate: accumulate)
            }
            accumulateWeightGradients(dy, x, weight, bias)
        }
        return y
    }
}

/// c = alpha · op(a)·op(b) + beta · c (row-major; op transposes when asked), spread over vlmsh's
/// threads: c's rows (or, when it has fewer rows than columns, its columns) in chunks, more than
/// one per thread so a thread that the OS preempts holds the others up less, each chunk one
/// single-threaded OpenBLAS call. OpenBLAS's own threads stay asleep: after each call they spin
/// (yielding) for a while, which takes the cores from the threads doing the elementwise work
/// between GEMMs. Every element of c is computed by one call, as a whole, so results do not depend
/// on the split.
func sgemm(m: Int, n: Int, k: Int, alpha: Float, _ a: UnsafePointer<Float>, lda: Int, transA: Bool = false,
           _ b: UnsafePointer<Float>, ldb: Int, transB: Bool, beta: Float, _ c: UnsafeMutablePointer<Float>, ldc: Int) {
    @Sendable func call(_ m: Int, _ n: Int, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) {
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    guard m > 0 && n > 0 else { return }
    let threads = Parallel.threads
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
        DispatchQueue.concurrentPerform(iterations: count) { i in
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
func matmulTransposed(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                      m: Int, n: Int, k: Int, accumulate: Bool = false) {
    sgemm(m: m, n: n, k: k, alpha: 1, a, lda: k, b, ldb: k, transB: true, beta: accumulate ? 1 : 0, c, ldc: n)
}

/// c[m, n] = a[m, k] · b[k, n] (+ c when `accumulate`), threaded as `sgemm`.
func matmul(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
            m: Int, n: Int, k: Int, accumulate: Bool = false) {
    sgemm(m: m, n: n, k: k, alpha: 1, a, lda: k, b, ldb: n, transB: false, beta: accumulate ? 1 : 0, c, ldc: n)
}

/// y[r, :] += v for every row, threaded.
func addRowVector(_ v: UnsafePointer<Float>, to y: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    Parallel.forEach(rows, minChunk: max(1, 32768 / max(width, 1))) { range in
        for r in range { Kernels.axpy(1, v, y + r * width, width) }
    }
}

/// The frozen-or-trainable linear's own gradients, shared by `linear` and `lowRankLinear`:
/// dW[out, in] += dyᵀ·x and db[out] += Σ_rows dy.
private func accumulateWeightGradients(_ dy: UnsafeMutablePointer<Float>, _ x: Variable, _ weight: Variable, _ bias: Variable?) {
    let n = x.rows, inp = weight.shape[1], out = weight.shape[0]
    if weight.requiresGrad {
        sgemm(m: out, n: inp, k: n, alpha: 1, dy, lda: out, transA: true, x.data, ldb: inp, transB: false,
              beta: 1, weight.gradBuffer(), ldc: inp)
    }
    if let bias, bias.requiresGrad {
        let db = bias.gradBuffer()
        for row in 0..<n { Kernels.axpy(1, dy + row * out, db, out) }
    }
}

import CBLAS
import CVLMKernels
import VLMTensor

/// Query rows per block of causal attention.
package let attentionBlock = 64

/// Runs `body` with OpenBLAS on one thread, for work that is already spread over the threads
/// (several GEMMs at once); a plain call when vlmsh runs on one thread.
package func withSingleThreadedBLAS<T>(_ body: () -> T) -> T {
    guard Parallel.threads > 1 else { return body() }
    let previous = openblas_get_num_threads()
    guard previous > 1 else { return body() }
    openblas_set_num_threads(1)
    defer { openblas_set_num_threads(previous) }
    return body()
}

/// How rows of a `[batch·length, width]` activation are laid out: `batch` sequences of `length`
/// positions each (right-padded; padding sits after every real token, so a causal mask keeps it
/// out of the real positions' attention), the first row of each at position `start` (after a
/// cached prefix).
public struct SequenceLayout: Sendable, Equatable {
    public let batch: Int
    public let length: Int
    public let start: Int
    public init(batch: Int, length: Int, start: Int = 0) { self.batch = batch; self.length = length; self.start = start }
    public var rows: Int { batch * length }
    /// The position of row `r`.
    public func position(_ r: Int) -> Int { start + r % length }
}

extension Tape {
    /// Rotary embedding of `heads` heads per row; row r sits at `layout.position(r)`.
    /// The rotation is orthogonal, so the backward pass rotates the gradient by the opposite angle.
    public func rope(_ x: Variable, _ rope: RoPE, heads: Int, layout: SequenceLayout) -> Variable {
        let width = x.columns
        checkShape(width == heads * rope.headDim && x.rows == layout.rows, "rope: \(x.shape) for \(heads) heads")
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad)
        y.data.update(from: x.data, count: x.count)
        let py = y.data
        Parallel.forEach(layout.rows, minChunk: 32) { range in
            for r in range { rope.apply(py + r * width, heads: heads, position: layout.position(r)) }
        }
        record(y) { dy in
            // A first gradient is rotated in place in x's new buffer; a later one via a temporary.
            let (gx, accumulate) = x.gradDestination()
            let back = accumulate ? FloatStorage(count: x.count, zeroed: false) : nil
            let target = back?.pointer ?? gx
            Parallel.forEach(layout.rows, minChunk: 32) { range in
                (target + range.lowerBound * width).update(from: dy + range.lowerBound * width, count: range.count * width)
                for r in range { rope.apply(target + r * width, heads: heads, position: -layout.position(r)) }
            }
            if let back { Kernels.add(back.pointer, into: gx, x.count) }
        }
        return y
    }

    /// Scaled dot-product attention per sequence and head: softmax(Q·Kᵀ/√d [+ causal mask])·V.
    /// q `[rows, heads·headDim]`, k and v `[rows, kvHeads·headDim]` (grouped-query attention:
    /// each key/value head serves heads/kvHeads query heads).
    ///
    /// Sequences × heads are spread over the threads, each running single-threaded GEMMs. With the
    /// causal mask, rows go in blocks of `attentionBlock`: a block's scores and products stop at
    /// its last visible key, so the masked half of each product is mostly skipped.
    public func attention(q: Variable, k: Variable, v: Variable, heads: Int, kvHeads: Int, headDim hd: Int,
                          layout: SequenceLayout, causal: Bool) -> Variable {
        let t = layout.length, qw = heads * hd, kw = kvHeads * hd, group = heads / kvHeads
        checkShape(q.columns == qw && k.columns == kw && v.columns == kw && q.rows == layout.rows,
                   "attention: q \(q.shape) k \(k.shape) v \(v.shape) for \(heads)/\(kvHeads) heads of \(hd)")
        let scale = 1 / Float(hd).squareRoot()
        let out = output(shape: q.shape, requiresGrad: q.requiresGrad || k.requiresGrad || v.requiresGrad)
        // Row blocks [start, end); a block sees keys [0, keysEnd(end)).
        let blockSize = causal ? attentionBlock : max(t, 1)
        let blocks = stride(from: 0, to: t, by: blockSize).map { ($0, min($0 + blockSize, t)) }
        func keysEnd(_ blockEnd: Int) -> Int { causal ? blockEnd : t }
        // P[b, h] = softmax(S), kept for backward: [batch, heads, t, t]; within a row, entries
        // past its block's last key are never written nor read. Without a backward pass, each
        // thread's tasks share one [t, t] scratch instead.
        let keepsProbabilities = isRecording && out.requiresGrad
        let probabilities = FloatStorage(count: keepsProbabilities ? layout.batch * heads * t * t : 0, zeroed: false)
        let pq = q.data, pk = k.data, pv = v.data, po = out.data
        withSingleThreadedBLAS {
            Parallel.forEach(layout.batch * heads) { tasks in
                let scratch = keepsProbabilities ? nil : FloatStorage(count: t * t, zeroed: false)
                for task in tasks {
                    let b = task / heads, h = task % heads
                    let p = scratch?.pointer ?? probabilities.pointer + task * t * t
                    let qh = pq + b * t * qw + h * hd, kh = pk + b * t * kw + (h / group) * hd, vh = pv + b * t * kw + (h / group) * hd
                    let oh = po + b * t * qw + h * hd
                    for (start, end) in blocks {
                        let keys = keysEnd(end)
                        Kernels.gemm(m: end - start, n: keys, k: hd, qh + start * qw, lda: qw, kh, ldb: kw, transB: true, p + start * t, ldc: t,
                                     alpha: scale)
                        for i in start..<end {
                            let row = p + i * t, visible = causal ? i + 1 : t
                            Kernels.softmaxVectorized(row, visible)
                            for j in visible..<keys { row[j] = 0 }
                        }
                        Kernels.gemm(m: end - start, n: hd, k: keys, p + start * t, lda: t, vh, ldb: kw, transB: false, oh + start * qw, ldc: qw)
                    }
                }
            }
        }

        record(out) { dOut in
            let gq = q.requiresGrad ? q.gradDestination() : nil
            let gk = k.requiresGrad ? k.gradDestination() : nil
            let gv = v.requiresGrad ? v.gradDestination() : nil
            withSingleThreadedBLAS {
                // One task per sequence and key/value head: its query heads add into the same
                // dK and dV slices, so they run one after another in the task.
                Parallel.forEach(layout.batch * kvHeads) { tasks in
                    let dS = FloatStorage(count: t * t, zeroed: false)
                    let ds = dS.pointer
                    for task in tasks {
                        let b = task / kvHeads, kvh = task % kvHeads
                        let kvOff = b * t * kw + kvh * hd
                        for h in kvh * group..<(kvh + 1) * group {
                            let p = probabilities.pointer + (b * heads + h) * t * t
                            let qOff = b * t * qw + h * hd
                            let dO = dOut + qOff
                            // The first head of a group writes fresh dK/dV buffers, the rest add.
                            let firstOfGroup = h == kvh * group
                            // dV += Pᵀ·dO, by key blocks: keys [start, end) are seen by rows ≥ start.
                            if let (gv, accumulate) = gv {
                                for (start, end) in blocks {
                                    let rows = causal ? start : 0
                                    Kernels.gemm(m: end - start, n: hd, k: t - rows, p + rows * t + start, lda: t, transA: true,
                                                 dO + rows * qw, ldb: qw, transB: false, gv + kvOff + start * kw, ldc: kw,
                                                 accumulate: accumulate || !firstOfGroup)
                                }
                            }
                            // dP = dO·Vᵀ; dS = P ⊙ (dP − Σ_j dP⊙P) · scale
                            for (start, end) in blocks {
                                let keys = keysEnd(end)
                                Kernels.gemm(m: end - start, n: keys, k: hd, dO + start * qw, lda: qw, pv + kvOff, ldb: kw, transB: true,
                                             ds + start * t, ldc: t)
                                for i in start..<end {
                                    let pr = p + i * t, dr = ds + i * t, visible = causal ? i + 1 : t
                                    let dotPD = Kernels.dot(pr, dr, visible)
                                    for j in 0..<visible { dr[j] = pr[j] * (dr[j] - dotPD) * scale }
                                    for j in visible..<keys { dr[j] = 0 }
                                }
                            }
                            // dQ += dS·K (each head its own columns: written once)
                            if let (gq, accumulate) = gq {
                                for (start, end) in blocks {
                                    Kernels.gemm(m: end - start, n: hd, k: keysEnd(end), ds + start * t, lda: t, pk + kvOff, ldb: kw,
                                                 transB: false, gq + qOff + start * qw, ldc: qw, accumulate: accumulate)
                                }
                            }
                            // dK += dSᵀ·Q, by key blocks as dV
                            if let (gk, accumulate) = gk {
                                for (start, end) in blocks {
                                    let rows = causal ? start : 0
                                    Kernels.gemm(m: end - start, n: hd, k: t - rows, ds + rows * t + start, lda: t, transA: true,
                                                 pq + qOff + rows * qw, ldb: qw, transB: false, gk + kvOff + start * kw, ldc: kw,
                                                 accumulate: accumulate || !firstOfGroup)
                                }
                            }
                        }
                    }
                }
            }
        }
        return out
    }
}

extension Tape {
    /// Causal attention of `n` new rows (one sequence) over a key/value cache: k and v `[n,
    /// kvHeads·headDim]` are appended to `cache`'s layer `layer` at `start` (the cached count),
    /// and each query attends to every cached position up to its own. Inference only (the cache
    /// is state across calls, not a graph value): nothing is recorded. A prompt from an empty
    /// cache runs `attention` itself; decode steps and follow-up turns read the cache.
    public func cachedAttention(q: Variable, k: Variable, v: Variable, heads: Int, kvHeads: Int, headDim hd: Int,
                                cache: KVCache, layer l: Int, start: Int) -> Variable {
        let n = q.rows, qDim = heads * hd, kvDim = cache.width, group = heads / kvHeads
        checkShape(q.columns == qDim && k.columns == kvDim && v.columns == kvDim && k.rows == n && v.rows == n,
                   "cachedAttention: q \(q.shape) k \(k.shape) v \(v.shape) for \(heads)/\(kvHeads) heads of \(hd)")
        precondition(!(isRecording && (q.requiresGrad || k.requiresGrad || v.requiresGrad)), "cachedAttention has no backward")
        cache.reserve(n)
        cache.store(layer: l, position: start, keys: k.data, values: v.data, count: n)
        // A first chunk attends only to itself: the training op computes exactly that.
        if start == 0 && n > 1 {
            return attention(q: q, k: k, v: v, heads: heads, kvHeads: kvHeads, headDim: hd,
                             layout: SequenceLayout(batch: 1, length: n), causal: true)
        }
        let total = start + n, scale = 1 / Float(hd).squareRoot()
        let out = output(shape: q.shape, requiresGrad: false)
        let pq = q.data, po = out.data
        if n == 1 {
            // One query: per-head dot products, heads spread over the cores, the cache read as stored.
            let keys = cache.keys(layer: l), values = cache.values(layer: l), f16 = cache.precision == .f16
            ScratchPool.shared.withBuffer(count: heads * total) { scores in
                Parallel.forEach(heads, minChunk: max(1, 512 / max(total, 1))) { range in
                    for head in range {
                        let kvOffset = (head / group) * hd
                        let s = scores + head * total, qh = pq + head * hd, oh = po + head * hd
                        if f16 {
                            let k = keys.assumingMemoryBound(to: UInt16.self), v = values.assumingMemoryBound(to: UInt16.self)
                            vlm_attention_scores_f16(qh, k + kvOffset, kvDim, Int32(total), Int32(hd), scale, s)
                            Kernels.softmaxVectorized(s, total)
                            vlm_attention_mix_f16(s, v + kvOffset, kvDim, Int32(total), Int32(hd), oh)
                        } else {
                            let k = keys.assumingMemoryBound(to: Float.self), v = values.assumingMemoryBound(to: Float.self)
                            vlm_attention_scores_f32(qh, k + kvOffset, kvDim, Int32(total), Int32(hd), scale, s)
                            Kernels.softmaxVectorized(s, total)
                            vlm_attention_mix_f32(s, v + kvOffset, kvDim, Int32(total), Int32(hd), oh)
                        }
                    }
                }
            }
            return out
        }
        // Several queries: S = Q·Kᵀ and O = softmax(S)·V per head through sgemm, over the
        // layer's keys and values as Float32 (an f16 cache is widened once per layer).
        cache.withFloatKeysAndValues(layer: l, positions: total) { keys, values in
            ScratchPool.shared.withBuffer(count: n * total) { s in
                for head in 0..<heads {
                    let kvOffset = (head / group) * hd
                    Kernels.gemm(m: n, n: total, k: hd, pq + head * hd, lda: qDim, keys + kvOffset, ldb: kvDim, transB: true, s, ldc: total,
                                 alpha: scale)
                    Parallel.forEach(n, minChunk: 8) { range in
                        for i in range {
                            let row = s + i * total, visible = start + i + 1
                            Kernels.softmaxVectorized(row, visible)
                            for j in visible..<total { row[j] = 0 }
                        }
                    }
                    Kernels.gemm(m: n, n: hd, k: total, s, lda: total, values + kvOffset, ldb: kvDim, transB: false, po + head * hd, ldc: qDim)
                }
            }
        }
        return out
    }
}

import VLMModels
import VLMTensor

/// How rows of a `[batch·length, width]` activation are laid out: `batch` sequences of `length`
/// positions each (right-padded; padding sits after every real token, so a causal mask keeps it
/// out of the real positions' attention).
public struct SequenceLayout: Sendable, Equatable {
    public let batch: Int
    public let length: Int
    public init(batch: Int, length: Int) { self.batch = batch; self.length = length }
    public var rows: Int { batch * length }
}

extension Tape {
    /// Rotary embedding of `heads` heads per row; row r sits at position r mod `layout.length`.
    /// The rotation is orthogonal, so the backward pass rotates the gradient by the opposite angle.
    public func rope(_ x: Variable, _ rope: RoPE, heads: Int, layout: SequenceLayout) -> Variable {
        let width = x.columns
        checkShape(width == heads * rope.headDim && x.rows == layout.rows, "rope: \(x.shape) for \(heads) heads")
        let y = Variable(Tensor(shape: x.shape, zeroed: false), requiresGrad: x.requiresGrad)
        y.data.update(from: x.data, count: x.count)
        let py = y.data
        Parallel.forEach(layout.rows, minChunk: 32) { range in
            for r in range { rope.apply(py + r * width, heads: heads, position: r % layout.length) }
        }
        record(y) { dy in
            let gx = x.gradBuffer()
            let back = FloatStorage(count: x.count, zeroed: false)
            back.pointer.update(from: dy, count: x.count)
            Parallel.forEach(layout.rows, minChunk: 32) { range in
                for r in range { rope.apply(back.pointer + r * width, heads: heads, position: -(r % layout.length)) }
            }
            Kernels.add(back.pointer, into: gx, x.count)
        }
        return y
    }

    /// Scaled dot-product attention per sequence and head: softmax(Q·Kᵀ/√d [+ causal mask])·V.
    /// q `[rows, heads·headDim]`, k and v `[rows, kvHeads·headDim]` (grouped-query attention:
    /// each key/value head serves heads/kvHeads query heads).
    public func attention(q: Variable, k: Variable, v: Variable, heads: Int, kvHeads: Int, headDim hd: Int,
                          layout: SequenceLayout, causal: Bool) -> Variable {
        let t = layout.length, qw = heads * hd, kw = kvHeads * hd, group = heads / kvHeads
        checkShape(q.columns == qw && k.columns == kw && v.columns == kw && q.rows == layout.rows,
                   "attention: q \(q.shape) k \(k.shape) v \(v.shape) for \(heads)/\(kvHeads) heads of \(hd)")
        let scale = 1 / Float(hd).squareRoot()
        let out = Variable(Tensor(shape: q.shape, zeroed: false),
                           requiresGrad: q.requiresGrad || k.requiresGrad || v.requiresGrad)
        // P[b, h] = softmax(S), kept for backward: [batch, heads, t, t].
        let probabilities = FloatStorage(count: layout.batch * heads * t * t, zeroed: false)
        let pq = q.data, pk = k.data, pv = v.data, po = out.data
        for b in 0..<layout.batch {
            for h in 0..<heads {
                let p = probabilities.pointer + (b * heads + h) * t * t
                let qh = pq + b * t * qw + h * hd, kh = pk + b * t * kw + (h / group) * hd, vh = pv + b * t * kw + (h / group) * hd
                Kernels.gemm(m: t, n: t, k: hd, qh, lda: qw, kh, ldb: kw, transB: true, p, ldc: t)
                Parallel.forEach(t, minChunk: 16) { range in
                    for i in range {
                        let row = p + i * t, visible = causal ? i + 1 : t
                        for j in 0..<visible { row[j] *= scale }
                        Kernels.softmax(row, visible)
                        for j in visible..<t { row[j] = 0 }
                    }
                }
                Kernels.gemm(m: t, n: hd, k: t, p, lda: t, vh, ldb: kw, transB: false, po + b * t * qw + h * hd, ldc: qw)
            }
        }

        record(out) { dOut in
            let dP = FloatStorage(count: t * t, zeroed: false)
            let gq = q.requiresGrad ? q.gradBuffer() : nil
            let gk = k.requiresGrad ? k.gradBuffer() : nil
            let gv = v.requiresGrad ? v.gradBuffer() : nil
            for b in 0..<layout.batch {
                for h in 0..<heads {
                    let p = probabilities.pointer + (b * heads + h) * t * t
                    let qOff = b * t * qw + h * hd, kvOff = b * t * kw + (h / group) * hd
                    let dO = dOut + qOff
                    // dV += Pᵀ·dO
                    if let gv { Kernels.gemm(m: t, n: hd, k: t, p, lda: t, transA: true, dO, ldb: qw, transB: false, gv + kvOff, ldc: kw, accumulate: true) }
                    // dP = dO·Vᵀ; dS = P ⊙ (dP − Σ_j dP⊙P) · scale
                    Kernels.gemm(m: t, n: t, k: hd, dO, lda: qw, pv + kvOff, ldb: kw, transB: true, dP.pointer, ldc: t)
                    let ds = dP.pointer
                    Parallel.forEach(t, minChunk: 16) { range in
                        for i in range {
                            let pr = p + i * t, dr = ds + i * t, visible = causal ? i + 1 : t
                            let dotPD = Kernels.dot(pr, dr, visible)
                            for j in 0..<visible { dr[j] = pr[j] * (dr[j] - dotPD) * scale }
                            for j in visible..<t { dr[j] = 0 }
                        }
                    }
                    // dQ += dS·K;  dK += dSᵀ·Q
                    if let gq { Kernels.gemm(m: t, n: hd, k: t, ds, lda: t, pk + kvOff, ldb: kw, transB: false, gq + qOff, ldc: qw, accumulate: true) }
                    if let gk { Kernels.gemm(m: t, n: hd, k: t, ds, lda: t, transA: true, pq + qOff, ldb: qw, transB: false, gk + kvOff, ldc: kw, accumulate: true) }
                }
            }
        }
        return out
    }
}

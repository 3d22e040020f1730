import Foundation
import VLMTensor

/// Elements per thread chunk for elementwise passes.
let elementwiseChunk = 1 << 15

extension Tape {
    /// a + b (same shape): residual connections.
    public func add(_ a: Variable, _ b: Variable) -> Variable {
        checkShape(a.count == b.count, "add: \(a.shape) and \(b.shape)")
        let y = output(shape: a.shape, requiresGrad: a.requiresGrad || b.requiresGrad)
        let n = a.count, pa = a.data, pb = b.data, py = y.data
        Parallel.forEach(n, minChunk: elementwiseChunk) { r in
            for i in r { py[i] = pa[i] + pb[i] }
        }
        record(y) { dy in
            // The first input with no gradient yet takes dy's buffer itself (y's gradient is
            // released after this step), the other gets a copy or adds it.
            var adopted = false
            for v in [a, b] where v.requiresGrad {
                if !adopted, let g = y.grad, v.adoptGrad(g) { adopted = true; continue }
                let (gv, accumulate) = v.gradDestination()
                if accumulate { Kernels.add(dy, into: gv, n) } else { copyThreaded(dy, gv, n) }
            }
        }
        return y
    }

    /// a ⊙ b (same shape).
    public func multiply(_ a: Variable, _ b: Variable) -> Variable {
        checkShape(a.count == b.count, "multiply: \(a.shape) and \(b.shape)")
        let y = output(shape: a.shape, requiresGrad: a.requiresGrad || b.requiresGrad)
        let n = a.count, pa = a.data, pb = b.data, py = y.data
        Parallel.forEach(n, minChunk: elementwiseChunk) { r in
            for i in r { py[i] = pa[i] * pb[i] }
        }
        record(y) { dy in
            let ga = a.requiresGrad ? a.gradBuffer() : nil, gb = b.requiresGrad ? b.gradBuffer() : nil
            Parallel.forEach(n, minChunk: elementwiseChunk) { r in
                for i in r {
                    ga?[i] += dy[i] * pb[i]
                    gb?[i] += dy[i] * pa[i]
                }
            }
        }
        return y
    }

    /// s · x.
    public func scale(_ x: Variable, _ s: Float) -> Variable {
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad)
        let n = x.count, px = x.data, py = y.data
        Parallel.forEach(n, minChunk: elementwiseChunk) { r in
            for i in r { py[i] = s * px[i] }
        }
        record(y) { dy in Kernels.axpyThreaded(s, dy, x.gradBuffer(), n) }
        return y
    }

    /// act(x) for the activations configs name (`hidden_act`, `projector_hidden_act`).
    public func activation(_ x: Variable, _ kind: Activation) -> Variable {
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad)
        let n = x.count
        y.data.update(from: x.data, count: n)
        kind.apply(y.data, count: n)
        record(y) { dy in
            let gx = x.gradBuffer(), px = x.data
            Parallel.forEach(n, minChunk: elementwiseChunk) { r in
                for i in r { gx[i] += dy[i] * kind.derivative(px[i]) }
            }
        }
        return y
    }

    /// silu(gate) ⊙ up: the Llama MLP's SwiGLU, fused. σ(gate) is kept for the backward pass
    /// (which then has no exponentials to compute and vectorizes).
    public func swiglu(_ gate: Variable, _ up: Variable) -> Variable {
        checkShape(gate.count == up.count, "swiglu: \(gate.shape) and \(up.shape)")
        let y = output(shape: gate.shape, requiresGrad: gate.requiresGrad || up.requiresGrad)
        let n = gate.count, pg = gate.data, pu = up.data, py = y.data
        guard y.requiresGrad else {
            y.data.update(from: pg, count: n)
            Kernels.swiglu(y.data, pu, n)
            return y
        }
        let sigmoid = FloatStorage(count: n, zeroed: false)
        let ps = sigmoid.pointer
        Parallel.forEach(n, minChunk: 1 << 14) { r in
            // y as Kernels.swiglu computes it: g / (1 + e^-g) · up.
            for i in r {
                let g = pg[i], e = 1 + expf(-g)
                py[i] = g / e * pu[i]
                ps[i] = 1 / e
            }
        }
        record(y) { dy in
            // d up = dy·g·σ;  d gate = dy·up·σ·(1 + g·(1 − σ)). Fresh buffers are written, not added
            // to (unless gate and up are one value).
            let ps = sigmoid.pointer
            func destination(_ v: Variable) -> (UnsafeMutablePointer<Float>?, Bool) {
                guard v.requiresGrad else { return (nil, false) }
                return gate === up ? (v.gradBuffer(), true) : v.gradDestination()
            }
            let (gg, accumulateGate) = destination(gate), (gu, accumulateUp) = destination(up)
            Parallel.forEach(n, minChunk: elementwiseChunk) { r in
                if let gu {
                    if accumulateUp {
                        for i in r { gu[i] += dy[i] * pg[i] * ps[i] }
                    } else {
                        for i in r { gu[i] = dy[i] * pg[i] * ps[i] }
                    }
                }
                if let gg {
                    if accumulateGate {
                        for i in r { let g = pg[i], s = ps[i]; gg[i] += dy[i] * pu[i] * s * (1 + g * (1 - s)) }
                    } else {
                        for i in r { let g = pg[i], s = ps[i]; gg[i] = dy[i] * pu[i] * s * (1 + g * (1 - s)) }
                    }
                }
            }
        }
        return y
    }

    /// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1-p).
    /// The identity when p is 0 (evaluation, or LoRA without dropout).
    public func dropout(_ x: Variable, probability p: Float, random: inout SeededRandom) -> Variable {
        guard p > 0 else { return x }
        let n = x.count
        let mask = FloatStorage(count: n, zeroed: false)
        let keep = 1 / (1 - p)
        for i in 0..<n { mask.pointer[i] = random.nextUnit() < p ? 0 : keep }
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad)
        let px = x.data, py = y.data
        for i in 0..<n { py[i] = px[i] * mask.pointer[i] }
        record(y) { dy in
            let gx = x.gradBuffer(), pm = mask.pointer
            for i in 0..<n { gx[i] += dy[i] * pm[i] }
        }
        return y
    }
}

/// y = x, threaded.
func copyThreaded(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    Parallel.forEach(n, minChunk: elementwiseChunk) { r in
        (y + r.lowerBound).update(from: x + r.lowerBound, count: r.count)
    }
}

extension Kernels {
    /// y += alpha · x, threaded.
    static func axpyThreaded(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        Parallel.forEach(n, minChunk: elementwiseChunk) { r in
            Kernels.axpy(alpha, x + r.lowerBound, y + r.lowerBound, r.count)
        }
    }
}

extension Activation {
    /// d act(x) / dx, in the same formulas as the forward pass.
    public func derivative(_ x: Float) -> Float {
        switch self {
        case .quickGelu:
            let s = 1 / (1 + expf(-1.702 * x))
            return s + 1.702 * x * s * (1 - s)
        case .gelu:
            let cdf = 0.5 * (1 + erff(x / Float(2).squareRoot()))
            let pdf = expf(-0.5 * x * x) / (2 * Float.pi).squareRoot()
            return cdf + x * pdf
        case .geluPytorchTanh, .geluNew:
            let c = (2 / Float.pi).squareRoot()
            let u = c * (x + 0.044715 * x * x * x)
            let t = tanhf(u)
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
        case .silu:
            let s = 1 / (1 + expf(-x))
            return s * (1 + x * (1 - s))
        }
    }
}

import VLMGeneration
import VLMTensor

extension Tape {
    /// y `[n, out]` = x `[n, in]` · Wᵀ (+ b), W `[out, in]` as PyTorch stores it.
    public func linear(_ x: Variable, _ weight: Variable, bias: Variable? = nil) -> Variable {
        let n = x.rows, inp = weight.shape[1], out = weight.shape[0]
        checkShape(x.columns == inp, "linear: input width \(x.columns), weight \(weight.shape)")
        let y = Variable(Tensor(shape: Array(x.shape.dropLast()) + [out], zeroed: false),
                         requiresGrad: x.requiresGrad || weight.requiresGrad || bias?.requiresGrad == true)
        Kernels.matmulTransposed(x.data, weight.data, y.data, m: n, n: out, k: inp)
        if let bias { addRowVector(bias.data, to: y.data, rows: n, width: out) }

        record(y) { dy in
            // dx[n, in] += dy[n, out] · W[out, in]
            if x.requiresGrad { Kernels.matmul(dy, weight.data, x.gradBuffer(), m: n, n: inp, k: out, accumulate: true) }
            // dW[out, in] += dyᵀ · x
            if weight.requiresGrad {
                Kernels.gemm(m: out, n: inp, k: n, dy, lda: out, transA: true, x.data, ldb: inp, transB: false,
                             weight.gradBuffer(), ldc: inp, accumulate: true)
            }
            // db[out] += Σ_rows dy
            if let bias, bias.requiresGrad {
                let db = bias.gradBuffer()
                for r in 0..<n { Kernels.axpy(1, dy + r * out, db, out) }
            }
        }
        return y
    }

    /// PEFT LoRA around a frozen linear: y = x·Wᵀ (+ b) + scale · (dropout(x)·Aᵀ)·Bᵀ.
    public func loraLinear(_ x: Variable, _ weight: Variable, bias: Variable?, a: Variable, b: Variable, scale: Float,
                           dropout: Float, random: inout SeededRandom) -> Variable {
        let base = linear(x, weight, bias: bias)
        let low = linear(self.dropout(x, probability: dropout, random: &random), a)
        return add(base, self.scale(linear(low, b), scale))
    }
}

/// y[r, :] += v for every row, threaded.
func addRowVector(_ v: UnsafePointer<Float>, to y: UnsafeMutablePointer<Float>, rows: Int, width: Int) {
    Parallel.forEach(rows, minChunk: max(1, 32768 / max(width, 1))) { range in
        for r in range { Kernels.axpy(1, v, y + r * width, width) }
    }
}

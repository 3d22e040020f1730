import VLMTensor

extension Tape {
    /// Llama RMSNorm per row: y = x · r · w with r = 1/√(mean(x²) + eps).
    public func rmsNorm(_ x: Variable, weight: Variable, eps: Float) -> Variable {
        let d = x.columns, n = x.rows
        checkShape(weight.count == d, "rmsNorm: width \(d), weight \(weight.shape)")
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad || weight.requiresGrad)
        let inverse = FloatStorage(count: n, zeroed: false)   // r per row, for backward
        let px = x.data, pw = weight.data, py = y.data, pr = inverse.pointer
        Parallel.forEach(n, minChunk: 16) { range in
            for row in range {
                let xr = px + row * d, yr = py + row * d
                let r = 1 / (Kernels.dot(xr, xr, d) / Float(d) + eps).squareRoot()
                pr[row] = r
                for i in 0..<d { yr[i] = (xr[i] * r) * pw[i] }
            }
        }
        record(y) { dy in
            // dx = r·(w⊙dy) − x·r³/d·Σ(w⊙dy⊙x);  dw = Σ_rows dy⊙x·r
            let pr = inverse.pointer   // captures the storage, keeping it alive until backward
            if x.requiresGrad {
                let (gx, accumulate) = x.gradDestination()
                Parallel.forEach(n, minChunk: 16) { range in
                    for row in range {
                        let xr = px + row * d, dyr = dy + row * d, gr = gx + row * d, r = pr[row]
                        var s: Float = 0
                        for i in 0..<d { s += pw[i] * dyr[i] * xr[i] }
                        let c = r * r * r * s / Float(d)
                        if accumulate {
                            for i in 0..<d { gr[i] += r * pw[i] * dyr[i] - c * xr[i] }
                        } else {
                            for i in 0..<d { gr[i] = r * pw[i] * dyr[i] - c * xr[i] }
                        }
                    }
                }
            }
            if weight.requiresGrad {
                // Σ over rows, each thread over a slice of the columns (same order of rows).
                let gw = weight.gradBuffer()
                Parallel.forEach(d, minChunk: 64) { columns in
                    for row in 0..<n {
                        let xr = px + row * d, dyr = dy + row * d, r = pr[row]
                        for i in columns { gw[i] += dyr[i] * xr[i] * r }
                    }
                }
            }
        }
        return y
    }

    /// LayerNorm per row (biased variance): y = (x − μ)/√(σ² + eps) · w + b.
    public func layerNorm(_ x: Variable, weight: Variable, bias: Variable?, eps: Float) -> Variable {
        let d = x.columns, n = x.rows
        checkShape(weight.count == d, "layerNorm: width \(d), weight \(weight.shape)")
        let y = output(shape: x.shape, requiresGrad: x.requiresGrad || weight.requiresGrad || bias?.requiresGrad == true)
        // x̂ and 1/σ are kept only for a backward pass (inference writes y alone).
        let normalized = y.requiresGrad ? FloatStorage(count: n * d, zeroed: false) : nil
        let inverse = FloatStorage(count: n, zeroed: false)
        let px = x.data, pw = weight.data, pb = bias?.data, py = y.data, ph = normalized?.pointer, pr = inverse.pointer
        Parallel.forEach(n, minChunk: 16) { range in
            for row in range {
                let xr = px + row * d, yr = py + row * d
                var mean: Float = 0
                for i in 0..<d { mean += xr[i] }
                mean /= Float(d)
                var variance: Float = 0
                for i in 0..<d { let c = xr[i] - mean; variance += c * c }
                let r = 1 / (variance / Float(d) + eps).squareRoot()
                pr[row] = r
                if let hr = ph.map({ $0 + row * d }) {
                    for i in 0..<d {
                        hr[i] = (xr[i] - mean) * r
                        yr[i] = hr[i] * pw[i] + (pb?[i] ?? 0)
                    }
                } else {
                    for i in 0..<d { yr[i] = (xr[i] - mean) * r * pw[i] + (pb?[i] ?? 0) }
                }
            }
        }
        record(y) { dy in
            // dx = r/d · (d·g − Σg − x̂·Σ(g⊙x̂)) with g = dy⊙w
            let ph = normalized!.pointer, pr = inverse.pointer   // keeps both buffers alive until backward
            if x.requiresGrad {
                let gx = x.gradBuffer()
                Parallel.forEach(n, minChunk: 16) { range in
                    for row in range {
                        let hr = ph + row * d, dyr = dy + row * d, gr = gx + row * d, r = pr[row]
                        var sum: Float = 0, dotH: Float = 0
                        for i in 0..<d { let g = dyr[i] * pw[i]; sum += g; dotH += g * hr[i] }
                        let k = r / Float(d)
                        for i in 0..<d { gr[i] += k * (Float(d) * dyr[i] * pw[i] - sum - hr[i] * dotH) }
                    }
                }
            }
            if weight.requiresGrad {
                let gw = weight.gradBuffer()
                for row in 0..<n { for i in 0..<d { gw[i] += dy[row * d + i] * ph[row * d + i] } }
            }
            if let bias, bias.requiresGrad {
                let gb = bias.gradBuffer()
                for row in 0..<n { Kernels.axpy(1, dy + row * d, gb, d) }
            }
        }
        return y
    }
}

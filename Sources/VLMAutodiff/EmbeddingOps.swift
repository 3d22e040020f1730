import VLMTensor

extension Tape {
    /// Rows of `source` placed over rows `positions` of `base`: the image-feature splice, where
    /// projector outputs replace the image placeholder tokens' embeddings.
    public func scatterRows(_ base: Variable, positions: [Int], source: Variable) -> Variable {
        let d = base.columns
        checkShape(source.columns == d && source.rows == positions.count, "scatterRows: \(source.shape) into \(base.shape) at \(positions.count) rows")
        let y = output(shape: base.shape, requiresGrad: base.requiresGrad || source.requiresGrad)
        y.data.update(from: base.data, count: base.count)
        for (j, r) in positions.enumerated() {
            checkShape(r >= 0 && r < base.rows, "scatterRows: row \(r) outside \(base.rows)")
            (y.data + r * d).update(from: source.data + j * d, count: d)
        }
        record(y) { dy in
            if source.requiresGrad {
                let gs = source.gradBuffer()
                for (j, r) in positions.enumerated() { Kernels.axpy(1, dy + r * d, gs + j * d, d) }
            }
            if base.requiresGrad {
                let gb = base.gradBuffer()
                let covered = Set(positions)
                for r in 0..<base.rows where !covered.contains(r) { Kernels.axpy(1, dy + r * d, gb + r * d, d) }
            }
        }
        return y
    }

    /// Rows `indices` of `table` `[n, d]` (an embedding lookup on a trainable or frozen table).
    public func gather(_ table: Variable, indices: [Int]) -> Variable {
        let d = table.columns
        let y = output(shape: [indices.count, d], requiresGrad: table.requiresGrad)
        for (j, i) in indices.enumerated() {
            checkShape(i >= 0 && i < table.rows, "gather: index \(i) outside \(table.rows)")
            (y.data + j * d).update(from: table.data + i * d, count: d)
        }
        record(y) { dy in
            let g = table.gradBuffer()
            for (j, i) in indices.enumerated() { Kernels.axpy(1, dy + j * d, g + i * d, d) }
        }
        return y
    }
}

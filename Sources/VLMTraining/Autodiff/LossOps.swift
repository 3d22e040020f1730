import Foundation
import VLMTensor

/// Label value that contributes nothing to the loss (PyTorch's `ignore_index`).
public let ignoreIndex = -100

/// Per-batch cross-entropy statistics, for logging and evaluation.
public struct TokenStatistics: Sendable, Equatable {
    /// Σ −log p(target) over counted positions.
    public var lossSum: Double = 0
    /// Positions whose target is not `ignoreIndex`.
    public var tokens = 0
    /// Counted positions whose argmax equals the target.
    public var correct = 0
    public init() {}
    public static func += (a: inout TokenStatistics, b: TokenStatistics) {
        a.lossSum += b.lossSum; a.tokens += b.tokens; a.correct += b.correct
    }
}

extension Tape {
    /// Σ over rows with target ≠ -100 of −log softmax(logits)[target], divided by `normalizer`
    /// (the label count of the whole accumulated batch, as the HF Trainer normalizes).
    /// logits `[rows, vocab]`, one target per row (already shifted). Returns a scalar and the stats.
    public func crossEntropy(_ logits: Variable, targets: [Int], normalizer: Float) -> (loss: Variable, stats: TokenStatistics) {
        let v = logits.columns, n = logits.rows
        checkShape(targets.count == n, "crossEntropy: \(n) rows, \(targets.count) targets")
        let logSumExp = FloatStorage(count: n, zeroed: false)
        var losses = [Double](repeating: 0, count: n), hits = [Bool](repeating: false, count: n)
        let pl = logits.data, plse = logSumExp.pointer
        losses.withUnsafeMutableBufferPointer { lossRows in
            hits.withUnsafeMutableBufferPointer { hitRows in
                let lossRows = lossRows, hitRows = hitRows
                Parallel.forEach(n, minChunk: 4) { range in
                    for r in range where targets[r] != ignoreIndex {
                        let row = pl + r * v
                        var mx = -Float.infinity, arg = 0
                        for j in 0..<v where row[j] > mx { mx = row[j]; arg = j }
                        var sum: Float = 0
                        for j in 0..<v { sum += expf(row[j] - mx) }
                        plse[r] = mx + logf(sum)
                        lossRows[r] = Double(plse[r] - row[targets[r]])
                        hitRows[r] = arg == targets[r]
                    }
                }
            }
        }
        var stats = TokenStatistics()
        for r in 0..<n where targets[r] != ignoreIndex {
            precondition(targets[r] >= 0 && targets[r] < v, "crossEntropy: target \(targets[r]) outside the vocabulary of \(v)")
            stats.lossSum += losses[r]; stats.tokens += 1; stats.correct += hits[r] ? 1 : 0
        }
        let loss = Variable(Tensor(shape: [1], values: [Float(stats.lossSum / Double(normalizer))]), requiresGrad: logits.requiresGrad)
        record(loss) { dy in
            // dlogits = dy/N · (softmax − onehot(target)) on counted rows.
            let g = logits.gradBuffer(), k = dy[0] / normalizer
            let plse = logSumExp.pointer   // keeps the buffer alive until backward
            Parallel.forEach(n, minChunk: 4) { range in
                for r in range where targets[r] != ignoreIndex {
                    let row = pl + r * v, gr = g + r * v, lse = plse[r]
                    for j in 0..<v { gr[j] += k * expf(row[j] - lse) }
                    gr[targets[r]] -= k
                }
            }
        }
        return (loss, stats)
    }
}

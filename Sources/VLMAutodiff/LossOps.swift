import Foundation
import VLMTensor

/// Label value that contributes nothing to the loss (PyTorch's `ignore_index`).
public let ignoreIndex = -100

/// Per-batch loss statistics, for logging and evaluation (for `embeddingMatch` the positions
/// are image tokens, and "argmax" is the nearest candidate).
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

    /// `crossEntropy(linear(x, weight), …)` with a graph value as the head's weight.
    public func linearCrossEntropy(_ x: Variable, _ weight: Variable, targets: [Int], normalizer: Float,
                                   gradientInForward: Bool = true) -> (loss: Variable, stats: TokenStatistics) {
        linearCrossEntropy(x, .value(weight), targets: targets, normalizer: normalizer, gradientInForward: gradientInForward)
    }

    /// `crossEntropy(linear(x, weight), …)` (a language-model head and its loss) without holding
    /// the `[rows, vocab]` logits: the labelled rows (target ≠ ignoreIndex), gathered, go through
    /// in chunks of `lossChunkRows`, and each chunk's logits become its softmax, then its
    /// gradient, in place. A stored (quantized) head is read `headBlockRows` vocabulary rows at a
    /// time, never whole in Float32. With `gradientInForward` (training: a backward pass follows) dL/dx (and
    /// dL/dW for a trainable weight) are computed chunk by chunk in the forward pass while the
    /// logits are at hand, and the backward pass only scales them by the incoming gradient;
    /// without it (evaluation) a backward pass recomputes the logits.
    public func linearCrossEntropy(_ x: Variable, _ weight: LinearWeight, targets: [Int], normalizer: Float,
                                   gradientInForward: Bool = true) -> (loss: Variable, stats: TokenStatistics) {
        let n = x.rows, d = x.columns, v = weight.outFeatures
        checkShape(weight.inFeatures == d, "linearCrossEntropy: x \(x.shape), weight \(v)×\(weight.inFeatures)")
        checkShape(targets.count == n, "linearCrossEntropy: \(n) rows, \(targets.count) targets")
        for t in targets where t != ignoreIndex {
            precondition(t >= 0 && t < v, "crossEntropy: target \(t) outside the vocabulary of \(v)")
        }
        let trainedWeight = weight.variable.flatMap { $0.requiresGrad ? $0 : nil }
        let requiresGrad = x.requiresGrad || trainedWeight != nil
        // Only labelled rows reach the head: prompt, image and padding rows (most of a chat
        // batch) have no loss and no gradient, and their logits would be most of the work.
        let labelled = (0..<n).filter { targets[$0] != ignoreIndex }
        let chunk = max(1, min(labelled.count, lossChunkRows))
        let logits = FloatStorage(count: chunk * v, zeroed: false)
        let rowsX = FloatStorage(count: chunk * d, zeroed: false), rowsDX = FloatStorage(count: chunk * d, zeroed: false)
        let k = 1 / normalizer

        /// Logits of the labelled rows `rows` → loss per row (and whether the argmax hits); with
        /// `gradient`, dL/dlogits (= (softmax − onehot) / normalizer) and from it dx rows / dW.
        func pass(_ rows: ArraySlice<Int>, losses: UnsafeMutablePointer<Double>, hits: UnsafeMutablePointer<Bool>,
                  gradient: Bool, dx: UnsafeMutablePointer<Float>?, dw: UnsafeMutablePointer<Float>?) {
            let m = rows.count, pl = logits.pointer, px = rowsX.pointer
            for (i, r) in rows.enumerated() { (px + i * d).update(from: x.data + r * d, count: d) }
            weight.forEachRowBlock(headBlockRows) { first, count, w in
                sgemm(m: m, n: count, k: d, alpha: 1, px, lda: d, w, ldb: d, transB: true, beta: 0, pl + first, ldc: v)
            }
            Parallel.forEach(m) { range in
                for i in range {
                    let r = rows[rows.startIndex + i], row = pl + i * v, target = targets[r]
                    var mx = -Float.infinity, arg = 0
                    for j in 0..<v where row[j] > mx { mx = row[j]; arg = j }
                    let targetLogit = row[target]
                    var sum: Float = 0
                    if gradient {
                        for j in 0..<v { let e = expf(row[j] - mx); row[j] = e; sum += e }
                    } else {
                        for j in 0..<v { sum += expf(row[j] - mx) }
                    }
                    losses[r] = Double(mx + logf(sum) - targetLogit)
                    hits[r] = arg == target
                    if gradient {
                        let scale = k / sum
                        for j in 0..<v { row[j] *= scale }
                        row[target] -= k
                    }
                }
            }
            guard gradient else { return }
            // dx[rows] = dlogits · W;  dW += dlogitsᵀ · x[rows]
            if let dx {
                weight.forEachRowBlock(headBlockRows) { first, count, w in
                    sgemm(m: m, n: d, k: count, alpha: 1, pl + first, lda: v, w, ldb: d, transB: false,
                          beta: first == 0 ? 0 : 1, rowsDX.pointer, ldc: d)
                }
                for (i, r) in rows.enumerated() { (dx + r * d).update(from: rowsDX.pointer + i * d, count: d) }
            }
            if let dw {
                sgemm(m: v, n: d, k: m, alpha: 1, pl, lda: v, transA: true, px, ldb: d, transB: false, beta: 1, dw, ldc: d)
            }
        }

        let eager = requiresGrad && gradientInForward
        let dX = eager && x.requiresGrad ? FloatStorage(count: n * d, zeroed: true) : nil
        let dW = eager && trainedWeight != nil ? FloatStorage(count: v * d, zeroed: true) : nil
        var losses = [Double](repeating: 0, count: n), hits = [Bool](repeating: false, count: n)
        losses.withUnsafeMutableBufferPointer { l in
            hits.withUnsafeMutableBufferPointer { h in
                for c in stride(from: 0, to: labelled.count, by: chunk) {
                    pass(labelled[c..<min(c + chunk, labelled.count)], losses: l.baseAddress!, hits: h.baseAddress!,
                         gradient: eager, dx: dX?.pointer, dw: dW?.pointer)
                }
            }
        }
        var stats = TokenStatistics()
        for r in labelled {
            stats.lossSum += losses[r]; stats.tokens += 1; stats.correct += hits[r] ? 1 : 0
        }
        let loss = Variable(Tensor(shape: [1], values: [Float(stats.lossSum / Double(normalizer))]), requiresGrad: requiresGrad)
        record(loss) { dy in
            var dX = dX, dW = dW
            if !eager {
                // Evaluation graph asked for gradients after all: recompute the logits.
                dX = x.requiresGrad ? FloatStorage(count: n * d, zeroed: true) : nil
                dW = trainedWeight != nil ? FloatStorage(count: v * d, zeroed: true) : nil
                let scratch = UnsafeMutablePointer<Double>.allocate(capacity: n), hit = UnsafeMutablePointer<Bool>.allocate(capacity: n)
                defer { scratch.deallocate(); hit.deallocate() }
                for c in stride(from: 0, to: labelled.count, by: chunk) {
                    pass(labelled[c..<min(c + chunk, labelled.count)], losses: scratch, hits: hit, gradient: true, dx: dX?.pointer, dw: dW?.pointer)
                }
            }
            let g = dy[0]
            if let dX {
                let (gx, accumulate) = x.gradDestination()
                let px = dX.pointer
                Parallel.forEach(n * d, minChunk: elementwiseChunk) { range in
                    if accumulate {
                        Kernels.axpy(g, px + range.lowerBound, gx + range.lowerBound, range.count)
                    } else {
                        for i in range { gx[i] = g * px[i] }
                    }
                }
            }
            if let dW, let trainedWeight { Kernels.axpyThreaded(g, dW.pointer, trainedWeight.gradBuffer(), v * d) }
        }
        return (loss, stats)
    }
}

/// Rows of logits per chunk in `linearCrossEntropy` (256 × a 49152-token vocabulary is 48 MiB).
let lossChunkRows = 256
/// Vocabulary rows of a stored head dequantized at a time in `linearCrossEntropy` (16 MiB at 4096 wide).
let headBlockRows = 1024

extension Tape {
    /// For each row of x `[rows, d]` and its target `candidates[labels[row]]` (`candidates`
    /// `[c, d]`, constants): the squared distance ‖x − target‖² plus the cross-entropy of
    /// softmax(−‖x − candidate‖²) over all candidates against the target's index. Summed over the
    /// rows and divided by `normalizer`. The distance pulls each row onto its target; the
    /// cross-entropy is what moves a row that sits between two candidates (the features that
    /// tell them apart get the gradient, not just the shared bulk). Returns the loss and the
    /// stats: `lossSum` (summed per-row loss), `tokens` (rows), `correct` (rows nearest to their
    /// own target).
    public func embeddingMatch(_ x: Variable, candidates: Tensor, labels: [Int], normalizer: Float) -> (loss: Variable, stats: TokenStatistics) {
        let n = x.rows, d = x.columns, c = candidates.shape[0]
        checkShape(labels.count == n && candidates.shape == [c, d], "embeddingMatch: \(x.shape) rows, \(labels.count) labels, candidates \(candidates.shape)")
        let px = x.data, pc = candidates.data
        // Per row: the probability-weighted mean of the candidates, for the backward pass.
        let expected = FloatStorage(count: n * d, zeroed: true)
        var losses = [Double](repeating: 0, count: n), hits = [Bool](repeating: false, count: n)
        let pe = expected.pointer
        losses.withUnsafeMutableBufferPointer { lossRows in
            hits.withUnsafeMutableBufferPointer { hitRows in
                let lossRows = lossRows, hitRows = hitRows
                Parallel.forEach(n, minChunk: 8) { range in
                    var z = [Float](repeating: 0, count: c)
                    for r in range {
                        let row = px + r * d
                        for j in 0..<c {
                            let cj = pc + j * d
                            var s: Float = 0
                            for k in 0..<d { let e = row[k] - cj[k]; s += e * e }
                            z[j] = -s
                        }
                        var mx = -Float.infinity, arg = 0
                        for j in 0..<c where z[j] > mx { mx = z[j]; arg = j }
                        let y = labels[r], zy = z[y]
                        var sum: Float = 0
                        for j in 0..<c { z[j] = expf(z[j] - mx); sum += z[j] }
                        // ‖x − target‖² (that is −zy) plus −log softmax(z)[y].
                        lossRows[r] = Double(-zy) + Double(logf(sum) - (zy - mx))
                        let er = pe + r * d
                        for j in 0..<c where z[j] > 0 {
                            let w = z[j] / sum, cj = pc + j * d
                            for k in 0..<d { er[k] += w * cj[k] }
                        }
                        hitRows[r] = arg == y
                    }
                }
            }
        }
        var stats = TokenStatistics()
        for r in 0..<n { stats.lossSum += losses[r]; stats.tokens += 1; stats.correct += hits[r] ? 1 : 0 }
        let loss = Variable(Tensor(shape: [1], values: [Float(stats.lossSum / Double(normalizer))]), requiresGrad: x.requiresGrad)
        record(loss) { dy in
            // d/dx = 2(x − t) + 2(E_p[candidate] − t), scaled by dy/N.
            let g = x.gradBuffer(), k = 2 * dy[0] / normalizer
            let pe = expected.pointer   // keeps the buffer alive until backward
            _ = candidates
            Parallel.forEach(n, minChunk: 8) { range in
                for r in range {
                    let row = px + r * d, er = pe + r * d, cy = pc + labels[r] * d, gr = g + r * d
                    for i in 0..<d { gr[i] += k * ((row[i] - cy[i]) + (er[i] - cy[i])) }
                }
            }
        }
        return (loss, stats)
    }
}

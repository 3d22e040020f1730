import XCTest
import VLMTraining
import VLMGeneration
import VLMModels
import VLMTensor

/// Every op's backward pass against central finite differences of its forward pass: for
/// L = Σ R ⊙ op(inputs) with a fixed random R, dL/dinput from the tape must match
/// (L(x + ε) − L(x − ε)) / 2ε element by element.
final class AutodiffTests: GradientCheckCase {
    func testTapeRecordsOnlyTrainablePaths() {
        let tape = Tape()
        let frozen = Variable(shape: [2, 2], values: [1, 2, 3, 4])
        let y = tape.scale(frozen, 2)
        XCTAssertEqual(tape.count, 0)
        XCTAssertEqual(y.value.array, [2, 4, 6, 8])
        XCTAssertFalse(y.requiresGrad)
    }

    func testGradientFlowsThroughFrozenLayers() {
        // A frozen weight passes dL/dx back without storing a gradient of its own.
        let x = randomVariable([3, 4]), w = randomVariable([5, 4], trainable: false)
        checkGradients("linear with frozen weight", [x]) { $0.linear(x, w) }
        XCTAssertNil(w.grad)
    }

    func testLinear() {
        let x = randomVariable([3, 4]), w = randomVariable([5, 4]), b = randomVariable([5])
        checkGradients("linear", [x, w, b]) { $0.linear(x, w, bias: b) }
    }

    func testLoRALinear() {
        let x = randomVariable([3, 6]), w = randomVariable([5, 6], trainable: false)
        let a = randomVariable([2, 6]), b = randomVariable([5, 2])
        var noDropout = SeededRandom(seed: 1)
        checkGradients("lora", [x, a, b]) { $0.loraLinear(x, w, bias: nil, a: a, b: b, scale: 2, dropout: 0, random: &noDropout) }
        // With dropout: the same mask for every evaluation (the stream restarts).
        checkGradients("lora dropout", [x, a, b]) { tape in
            var r = SeededRandom(seed: 3)
            return tape.loraLinear(x, w, bias: nil, a: a, b: b, scale: 2, dropout: 0.3, random: &r)
        }
    }

    func testElementwise() {
        let a = randomVariable([4, 5]), b = randomVariable([4, 5])
        checkGradients("add", [a, b]) { $0.add(a, b) }
        checkGradients("multiply", [a, b]) { $0.multiply(a, b) }
        checkGradients("scale", [a]) { $0.scale(a, -1.5) }
        checkGradients("swiglu", [a, b]) { $0.swiglu(a, b) }
        for kind in Activation.allCases {
            let x = randomVariable([3, 7], scale: 3)
            checkGradients("activation \(kind)", [x]) { $0.activation(x, kind) }
        }
    }

    func testNorms() {
        let x = randomVariable([4, 8], scale: 2), w = randomVariable([8]), b = randomVariable([8])
        checkGradients("rmsNorm", [x, w]) { $0.rmsNorm(x, weight: w, eps: 1e-5) }
        checkGradients("layerNorm", [x, w, b]) { $0.layerNorm(x, weight: w, bias: b, eps: 1e-5) }
    }

    func testRoPE() {
        for pairing in [RoPE.Pairing.halves, .interleaved] {
            let rope = RoPE(headDim: 8, base: 10000, scaling: nil, pairing: pairing)
            let x = randomVariable([6, 16])
            checkGradients("rope \(pairing)", [x]) { $0.rope(x, rope, heads: 2, layout: SequenceLayout(batch: 2, length: 3)) }
        }
    }

    func testAttention() {
        let layout = SequenceLayout(batch: 2, length: 5)
        for causal in [true, false] {
            // 4 query heads sharing 2 key/value heads (grouped-query attention).
            let q = randomVariable([10, 4 * 3]), k = randomVariable([10, 2 * 3]), v = randomVariable([10, 2 * 3])
            checkGradients("attention causal=\(causal)", [q, k, v]) {
                $0.attention(q: q, k: k, v: v, heads: 4, kvHeads: 2, headDim: 3, layout: layout, causal: causal)
            }
        }
    }

    func testCausalAttentionIgnoresLaterPositions() {
        // Right padding is safe: changing a later position never changes an earlier output.
        let layout = SequenceLayout(batch: 1, length: 4)
        let q = randomVariable([4, 4], trainable: false), k = randomVariable([4, 4], trainable: false), v = randomVariable([4, 4], trainable: false)
        let before = Tape().attention(q: q, k: k, v: v, heads: 2, kvHeads: 2, headDim: 2, layout: layout, causal: true).value.array
        for i in 12..<16 { k.data[i] += 5; v.data[i] -= 3 }
        let after = Tape().attention(q: q, k: k, v: v, heads: 2, kvHeads: 2, headDim: 2, layout: layout, causal: true).value.array
        XCTAssertEqual(Array(before[0..<12]), Array(after[0..<12]))
        XCTAssertNotEqual(Array(before[12..<16]), Array(after[12..<16]))
    }

    func testSpliceAndGather() {
        let base = randomVariable([5, 3]), features = randomVariable([2, 3]), table = randomVariable([6, 3])
        checkGradients("scatterRows", [base, features]) { $0.scatterRows(base, positions: [1, 3], source: features) }
        checkGradients("gather", [table]) { $0.gather(table, indices: [4, 0, 4, 2]) }
    }

    func testCrossEntropy() {
        let logits = randomVariable([5, 7], scale: 3)
        let targets = [3, ignoreIndex, 0, 6, ignoreIndex]
        checkGradients("crossEntropy", [logits]) { $0.crossEntropy(logits, targets: targets, normalizer: 3).loss }
        // The value: mean over counted rows of −log softmax[target], here against a plain formula.
        let (loss, stats) = Tape().crossEntropy(logits, targets: targets, normalizer: 3)
        var expected = 0.0
        for (r, t) in targets.enumerated() where t != ignoreIndex {
            let row = (0..<7).map { Double(logits.data[r * 7 + $0]) }
            let lse = log(row.map { exp($0) }.reduce(0, +))
            expected += lse - row[t]
        }
        XCTAssertEqual(Double(loss.data[0]), expected / 3, accuracy: 1e-5)
        XCTAssertEqual(stats.tokens, 3)
    }

    func testEmbeddingMatch() {
        let x = randomVariable([6, 5])
        let candidates = randomVariable([3, 5], trainable: false).value
        let labels = [0, 2, 1, 1, 0, 2]
        checkGradients("embeddingMatch", [x]) { $0.embeddingMatch(x, candidates: candidates, labels: labels, normalizer: 4).loss }
        // The value: Σ rows of ‖x − c_y‖² − log softmax(−‖x − c‖²)[y], / normalizer, by the formula.
        let (loss, stats) = Tape().embeddingMatch(x, candidates: candidates, labels: labels, normalizer: 4)
        var expected = 0.0, nearest = 0
        for (r, y) in labels.enumerated() {
            let d = (0..<3).map { j in (0..<5).reduce(0.0) { s, k in
                let e = Double(x.data[r * 5 + k] - candidates.data[j * 5 + k]); return s + e * e } }
            expected += d[y] + log(d.map { exp(-$0) }.reduce(0, +)) + d[y]
            nearest += d.firstIndex(of: d.min()!) == y ? 1 : 0
        }
        XCTAssertEqual(Double(loss.data[0]), expected / 4, accuracy: 1e-4)
        XCTAssertEqual(stats.tokens, 6)
        XCTAssertEqual(stats.correct, nearest)
    }
}

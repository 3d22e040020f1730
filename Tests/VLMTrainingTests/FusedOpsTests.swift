import XCTest
@testable import VLMTraining
@testable import VLMAutodiff
import VLMGeneration
import VLMModels
import VLMTensor

/// The fused and blocked training ops against finite differences and their unfused forms:
/// multi-block causal attention, the chunked LM-head loss (eager and recomputed gradients), LoRA
/// with every input trainable, first-write and adopted gradients, split GEMMs.
final class FusedOpsTests: GradientCheckCase {
    func testAttentionBlocks() {
        for (t, causal) in [(70, true), (70, false), (129, true)] {
            let layout = SequenceLayout(batch: 1, length: t)
            let q = randomVariable([t, 2 * 2]), k = randomVariable([t, 1 * 2]), v = randomVariable([t, 1 * 2])
            checkGradients("attention t=\(t) causal=\(causal)", [q, k, v], tolerance: 3e-2) {
                $0.attention(q: q, k: k, v: v, heads: 2, kvHeads: 1, headDim: 2, layout: layout, causal: causal)
            }
            // Forward against a plain implementation.
            let out = Tape().attention(q: q, k: k, v: v, heads: 2, kvHeads: 1, headDim: 2, layout: layout, causal: causal)
            var worst: Float = 0
            for h in 0..<2 { for i in 0..<t {
                let visible = causal ? i + 1 : t
                var s = (0..<visible).map { j in (q.data[i * 4 + h * 2] * k.data[j * 2] + q.data[i * 4 + h * 2 + 1] * k.data[j * 2 + 1]) / Float(2).squareRoot() }
                let mx = s.max()!; s = s.map { expf($0 - mx) }; let sum = s.reduce(0, +)
                for dd in 0..<2 {
                    var o: Float = 0
                    for j in 0..<visible { o += s[j] / sum * v.data[j * 2 + dd] }
                    worst = max(worst, abs(o - out.data[i * 4 + h * 2 + dd]))
                }
            } }
            XCTAssertLessThan(worst, 1e-5)
        }
    }

    func testLinearCrossEntropyMatchesUnfused() {
        for eager in [true, false] {
            let n = 300, d = 5, v = 11
            let x = randomVariable([n, d], scale: 2), w = randomVariable([v, d])
            let targets = (0..<n).map { $0 % 7 == 3 ? ignoreIndex : ($0 * 5) % v }
            let t1 = Tape()
            let (l1, s1) = t1.crossEntropy(t1.linear(x, w), targets: targets, normalizer: 250)
            t1.backward(l1, seed: 0.7)
            let gx1 = x.grad!.array, gw1 = w.grad!.array
            x.zeroGrad(); w.zeroGrad()
            let t2 = Tape()
            let (l2, s2) = t2.linearCrossEntropy(x, w, targets: targets, normalizer: 250, gradientInForward: eager)
            t2.backward(l2, seed: 0.7)
            XCTAssertEqual(l1.data[0], l2.data[0], accuracy: 1e-6)
            XCTAssertEqual(s1, s2)
            let gx2 = x.grad!.array, gw2 = w.grad!.array
            XCTAssertLessThan(zip(gx1, gx2).map { abs($0 - $1) }.max()!, 1e-6)
            XCTAssertLessThan(zip(gw1, gw2).map { abs($0 - $1) }.max()!, 1e-6)
        }
        // No labelled row: zero loss, zero gradients.
        let none = randomVariable([4, 3]), head = randomVariable([7, 3])
        let t = Tape()
        let (l, s) = t.linearCrossEntropy(none, head, targets: [Int](repeating: ignoreIndex, count: 4), normalizer: 1)
        t.backward(l)
        XCTAssertEqual(l.data[0], 0)
        XCTAssertEqual(s.tokens, 0)
        XCTAssertEqual(none.grad!.array, [Float](repeating: 0, count: 12))
        XCTAssertEqual(head.grad!.array, [Float](repeating: 0, count: 21))
        // Gradient reaches x through a fresh buffer when x is an intermediate.
        let x = randomVariable([6, 4]), w = randomVariable([9, 4], trainable: false)
        checkGradients("linearCrossEntropy", [x]) { tape in
            tape.linearCrossEntropy(tape.scale(x, 1.5), w, targets: [1, 2, ignoreIndex, 8, 0, 3], normalizer: 4).loss
        }
    }

    /// A stored head (here f16, 2500 vocabulary rows: three blocks of `headBlockRows`) gives the
    /// loss and input gradient of its Float32 copy as a graph value.
    func testLinearCrossEntropyReadsAStoredHeadInBlocks() {
        let n = 40, d = 32, v = 2500
        XCTAssertGreaterThan(v, 2 * headBlockRows)
        var random = SeededRandom(seed: 4)
        let bits = (0..<(v * d)).map { _ in Float16(random.nextUnit() - 0.5).bitPattern }
        let storage = bits.withUnsafeBytes { Data($0) } as NSData
        let stored = QuantizedMatrix(type: .f16, rows: v, cols: d, data: storage.bytes, owner: storage)
        let dense = Tensor(shape: [v, d], zeroed: false)
        stored.dequantize(into: dense.data)
        let targets = (0..<n).map { $0 % 5 == 1 ? ignoreIndex : ($0 * 61) % v }
        let x = randomVariable([n, d], scale: 2)
        var results: [(loss: Float, grad: [Float])] = []
        for weight in [LinearWeight.value(Variable(dense)), .stored(stored)] {
            x.zeroGrad()
            let tape = Tape()
            let (loss, _) = tape.linearCrossEntropy(x, weight, targets: targets, normalizer: 30)
            tape.backward(loss)
            results.append((loss.data[0], x.grad!.array))
        }
        XCTAssertEqual(results[0].loss, results[1].loss, accuracy: 1e-6)
        XCTAssertLessThan(zip(results[0].grad, results[1].grad).map { abs($0 - $1) }.max()!, 1e-6)
    }

    func testLoRAAllTrainableAndShared() {
        let x = randomVariable([3, 6]), w = randomVariable([5, 6]), bias = randomVariable([5])
        let a = randomVariable([2, 6]), b = randomVariable([5, 2])
        var r0 = SeededRandom(seed: 1)
        checkGradients("lora all", [x, w, bias, a, b]) { $0.loraLinear(x, w, bias: bias, a: a, b: b, scale: 1.7, dropout: 0, random: &r0) }
        checkGradients("lora dropout all", [x, w, bias, a, b]) { tape in
            var r = SeededRandom(seed: 3)
            return tape.loraLinear(x, w, bias: bias, a: a, b: b, scale: 1.7, dropout: 0.3, random: &r)
        }
        // x used twice: the second gradient is added to the first.
        let b6 = randomVariable([6, 2])
        checkGradients("lora residual", [x, a, b6]) { tape in
            var r = SeededRandom(seed: 3)
            let wSquare = Variable(shape: [6, 6], values: (0..<36).map { Float(($0 * 7) % 11) / 11 - 0.5 })
            return tape.add(x, tape.loraLinear(x, wSquare, bias: nil, a: a, b: b6, scale: 2, dropout: 0, random: &r))
        }
    }

    func testElementwiseSharing() {
        let a = randomVariable([4, 5]), b = randomVariable([4, 5])
        checkGradients("swiglu same", [a]) { $0.swiglu(a, a) }
        checkGradients("swiglu + residual", [a, b]) { $0.add($0.swiglu(a, b), a) }
        checkGradients("add same", [a]) { $0.add(a, a) }
        checkGradients("add chain", [a, b]) { t in t.add(t.add(a, b), t.multiply(a, b)) }
        let x = randomVariable([6, 16])
        let rope = RoPE(headDim: 8, base: 10000, scaling: nil, pairing: .halves)
        checkGradients("rope twice", [x]) { t in t.add(t.rope(x, rope, heads: 2, layout: SequenceLayout(batch: 2, length: 3)), t.scale(x, 2)) }
    }

    func testWideNorm() {
        let x = randomVariable([3, 200], scale: 2), w = randomVariable([200])
        checkGradients("rmsNorm wide", [x, w]) { $0.rmsNorm(x, weight: w, eps: 1e-5) }
        checkGradients("rmsNorm twice", [x]) { t in t.add(t.rmsNorm(x, weight: w, eps: 1e-5), x) }
    }

    func testSplitGemm() {
        // Rows split (m ≥ n) and columns split (m < n), against a plain product.
        for (m, n, k) in [(300, 80, 64), (8, 2000, 100), (1000, 33, 40)] {
            let x = randomVariable([m, k]), w = randomVariable([n, k])
            let y = Tape().linear(x, w)
            var worst: Float = 0
            for i in stride(from: 0, to: m, by: 7) { for j in stride(from: 0, to: n, by: 3) {
                var s: Float = 0
                for p in 0..<k { s += x.data[i * k + p] * w.data[j * k + p] }
                worst = max(worst, abs(s - y.data[i * n + j]))
            } }
            XCTAssertLessThan(worst, 1e-3, "\(m)x\(n)x\(k)")
            // Backward against the identity: dW = dyᵀ·x, dx = dy·W.
            let t = Tape()
            let out = t.linear(x, w)
            x.zeroGrad(); w.zeroGrad()
            let dy = (0..<(m * n)).map { Float(($0 * 13) % 17) / 17 - 0.5 }
            t.backward(out, outputGradient: dy)
            worst = 0
            for i in stride(from: 0, to: m, by: 11) { for p in 0..<k {
                var s: Float = 0
                for j in 0..<n { s += dy[i * n + j] * w.data[j * k + p] }
                worst = max(worst, abs(s - x.grad!.data[i * k + p]))
            } }
            for j in stride(from: 0, to: n, by: 5) { for p in 0..<k {
                var s: Float = 0
                for i in 0..<m { s += dy[i * n + j] * x.data[i * k + p] }
                worst = max(worst, abs(s - w.grad!.data[j * k + p]))
            } }
            XCTAssertLessThan(worst, 1e-3, "backward \(m)x\(n)x\(k)")
        }
    }
}

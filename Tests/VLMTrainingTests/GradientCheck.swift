import XCTest
import VLMGeneration
import VLMTensor
import VLMTraining

/// Finite-difference gradient checking shared by the op tests: for L = Σ R ⊙ op(inputs) with a
/// fixed random R, dL/dinput from the tape must match (L(x + ε) − L(x − ε)) / 2ε per element.
class GradientCheckCase: XCTestCase {
    var random = SeededRandom(seed: 7)

    func randomVariable(_ shape: [Int], scale: Float = 1, trainable: Bool = true) -> Variable {
        let n = shape.reduce(1, *)
        return Variable(Tensor(shape: shape, values: (0..<n).map { _ in (random.nextUnit() * 2 - 1) * scale }), requiresGrad: trainable)
    }

    /// Checks the gradients of `inputs` (all trainable) for `op`, which builds its output on a tape.
    func checkGradients(_ name: String, _ inputs: [Variable], tolerance: Float = 2e-2, epsilon: Float = 1e-2,
                        file: StaticString = #filePath, line: UInt = #line, _ op: (Tape) -> Variable) {
        let tape = Tape()
        let out = op(tape)
        let weights = (0..<out.count).map { _ in random.nextUnit() * 2 - 1 }
        for v in inputs { v.zeroGrad() }
        tape.backward(out, outputGradient: weights)

        func objective() -> Double {
            let t = Tape()
            let y = op(t)
            var s = 0.0
            for i in 0..<y.count { s += Double(weights[i]) * Double(y.data[i]) }
            return s
        }
        for (k, v) in inputs.enumerated() {
            guard let grad = v.grad else { XCTFail("\(name): input \(k) got no gradient", file: file, line: line); continue }
            var worst: Float = 0, scale: Float = 1e-3
            for i in 0..<v.count { scale = max(scale, abs(grad.data[i])) }
            for i in 0..<v.count {
                let saved = v.data[i]
                v.data[i] = saved + epsilon; let plus = objective()
                v.data[i] = saved - epsilon; let minus = objective()
                v.data[i] = saved
                let numeric = Float((plus - minus) / Double(2 * epsilon))
                worst = max(worst, abs(numeric - grad.data[i]) / scale)
            }
            XCTAssertLessThan(worst, tolerance, "\(name): input \(k) max relative gradient error \(worst)", file: file, line: line)
        }
    }
}

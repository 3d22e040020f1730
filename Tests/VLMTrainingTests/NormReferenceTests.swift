import XCTest
import VLMTensor
import VLMTraining

/// The norms every model runs (the tape's ops, in inference and training alike) against the plain
/// reference formulas.
final class NormReferenceTests: XCTestCase {
    func values(_ n: Int, seed: UInt64) -> [Float] {
        var random = SeededRandom(seed: seed)
        return (0..<n).map { _ in random.nextUnit() * 2 - 1 }
    }

    func testNormsMatchReference() {
        let dim = 96, rows = 40
        let x = values(rows * dim, seed: 7), w = values(dim, seed: 8), b = values(dim, seed: 9)
        for recording in [false, true] {
            let tape = Tape(recording: recording)
            let input = Variable(Tensor(shape: [rows, dim], values: x), requiresGrad: recording)
            let rms = tape.rmsNorm(input, weight: Variable(shape: [dim], values: w), eps: 1e-5).value.array
            let expectedRMS = Reference.rmsNorm(x, w, dim: dim, eps: 1e-5)
            XCTAssertLessThan(zip(rms, expectedRMS).map { abs($0 - $1) }.max()!, 1e-5, "rmsNorm, recording \(recording)")
            let layer = tape.layerNorm(input, weight: Variable(shape: [dim], values: w), bias: Variable(shape: [dim], values: b), eps: 1e-5).value.array
            let expectedLayer = Reference.layerNorm(x, w, b, dim: dim, eps: 1e-5)
            XCTAssertLessThan(zip(layer, expectedLayer).map { abs($0 - $1) }.max()!, 1e-5, "layerNorm, recording \(recording)")
        }
    }
}

import Foundation
import VLMTensor
import XCTest

/// Vectorized activations and row softmax against the libm formulas in `Reference`.
final class ActivationTests: XCTestCase {
    /// Uniform values in [-scale, scale) from a fixed LCG, plus the awkward points.
    func values(_ n: Int, scale: Float, seed: UInt64) -> [Float] {
        var state = seed
        let random = (0..<n).map { _ -> Float in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
        }
        return random + [0, -0, 1e-8, -1e-8, 3, -3, 9, -9, 15, -15, 80, -80, 100, -100, 1e6, -1e6]
    }

    func testEveryActivationMatchesReference() {
        // 70_003: several thread chunks and a ragged SIMD tail.
        let x = values(70_003 - 16, scale: 8, seed: 1)
        for kind in Activation.allCases {
            var y = x
            kind.apply(&y, count: y.count)
            let expected = Reference.activation(kind, x)
            let diff = zip(y, expected).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
            print("activation \(kind.rawValue): max relative diff \(diff)")
            XCTAssertLessThan(diff, 2e-6, "\(kind.rawValue)")
            XCTAssertFalse(y.contains { !$0.isFinite }, "\(kind.rawValue) produced a non-finite value")
        }
    }

    func testFusedBiasMatchesSeparateAdd() {
        let rows = 37, width = 45
        let x = values(rows * width - 16, scale: 4, seed: 2)
        let bias = values(width - 16, scale: 1, seed: 3)
        for kind in Activation.allCases {
            var y = x
            bias.withUnsafeBufferPointer { kind.apply(&y, rows: rows, width: width, bias: $0.baseAddress) }
            let shifted = x.enumerated().map { $0.element + bias[$0.offset % width] }
            let diff = zip(y, Reference.activation(kind, shifted)).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(diff, 2e-5, "\(kind.rawValue) with bias")
        }
    }

    func testNamesFollowHuggingFace() throws {
        XCTAssertEqual(Activation(rawValue: "quick_gelu"), .quickGelu)
        XCTAssertEqual(Activation(rawValue: "gelu_pytorch_tanh"), .geluPytorchTanh)
        XCTAssertEqual(Activation(rawValue: "gelu_new"), .geluNew)
        XCTAssertNil(Activation(rawValue: "relu6"))
        let decoded = try JSONDecoder().decode([Activation].self, from: Data(#"["gelu","silu"]"#.utf8))
        XCTAssertEqual(decoded, [.gelu, .silu])
        XCTAssertThrowsError(try JSONDecoder().decode([Activation].self, from: Data(#"["mish"]"#.utf8)))
    }

    func testSoftmaxRowsMatchesReference() {
        let rows = 9, width = 577
        var x = values(rows * width - 16, scale: 30, seed: 4)
        let expected = (0..<rows).flatMap { Reference.softmax(Array(x[($0 * width)..<(($0 + 1) * width)])) }
        Kernels.softmaxRows(&x, rows: rows, width: width)
        let diff = zip(x, expected).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThan(diff, 1e-6, "softmaxRows: max diff \(diff)")
        for r in 0..<rows { XCTAssertEqual(x[(r * width)..<((r + 1) * width)].reduce(0, +), 1, accuracy: 1e-5) }
    }

    func testExpOverItsRange() {
        var worst: Float = 0
        for i in stride(from: -87.0 as Float, through: 88, by: 0.37) {
            let v = VectorMath.exp(SIMD8(repeating: i))[0]
            worst = max(worst, abs(v - expf(i)) / expf(i))
        }
        XCTAssertLessThan(worst, 1e-6, "exp max relative error \(worst)")
        XCTAssertEqual(VectorMath.exp(SIMD8(repeating: -1000))[0], 0, accuracy: 1e-37)
        XCTAssertTrue(VectorMath.exp(SIMD8(repeating: 1000))[0].isFinite)
    }
}

import VLMTensor
import XCTest

/// Fast kernels against their plain twins in `Reference`.
final class KernelTests: XCTestCase {
    func randomValues(_ n: Int, seed: UInt64) -> [Float] {
        var state = seed
        return (0..<n).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state >> 11) % 2000) / 1000 - 1
        }
    }

    func assertClose(_ a: [Float], _ b: [Float], tolerance: Float, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let diff = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(diff, tolerance, "\(what): max diff \(diff)", file: file, line: line)
    }

    func testMatmulTransposedMatchesReference() {
        for (m, n, k) in [(1, 7, 5), (17, 33, 64), (64, 96, 130)] {
            let a = randomValues(m * k, seed: 1), b = randomValues(n * k, seed: 2)
            let c = Tensor(shape: [m, n])
            Kernels.matmulTransposed(a, b, c.data, m: m, n: n, k: k)
            assertClose(c.array, Reference.matmulTransposed(a, b, m: m, n: n, k: k), tolerance: 1e-4, "matmul \(m)x\(n)x\(k)")
        }
    }

    func testStridedGemmOnHeadSlices() {
        // Q [3 tokens, 2 heads × 4] against K [5, 4]: head 1 only, through leading dimensions.
        let q = randomValues(3 * 8, seed: 3), k = randomValues(5 * 4, seed: 4)
        var s = [Float](repeating: 0, count: 15)
        q.withUnsafeBufferPointer { qp in
            Kernels.gemm(m: 3, n: 5, k: 4, qp.baseAddress! + 4, lda: 8, k, ldb: 4, transB: true, &s, ldc: 5)
        }
        let head1 = (0..<3).flatMap { t in q[(t * 8 + 4)..<(t * 8 + 8)] }
        assertClose(s, Reference.matmulTransposed(Array(head1), k, m: 3, n: 5, k: 4), tolerance: 1e-5, "strided gemm")
    }

    func testDotAndAxpy() {
        for n in [0, 1, 7, 16, 33, 1000] {
            let a = randomValues(n, seed: 5), b = randomValues(n, seed: 6)
            let expected = zip(a, b).map(*).reduce(0, +)
            XCTAssertEqual(Kernels.dot(a, b, n), expected, accuracy: 1e-3, "dot n=\(n)")
            var y = b
            Kernels.axpy(0.5, a, &y, n)
            assertClose(y, zip(a, b).map { 0.5 * $0 + $1 }, tolerance: 1e-6, "axpy n=\(n)")
        }
    }

    func testSoftmaxSwigluAdd() {
        var x = randomValues(300, seed: 10).map { $0 * 20 }
        let expected = Reference.softmax(x)
        Kernels.softmax(&x, x.count)
        assertClose(x, expected, tolerance: 1e-6, "softmax")
        XCTAssertEqual(x.reduce(0, +), 1, accuracy: 1e-5)

        var gate = randomValues(70_000, seed: 11).map { $0 * 6 }
        let up = randomValues(70_000, seed: 12)
        let swiglu = Reference.swiglu(gate, up)
        Kernels.swiglu(&gate, up, gate.count)
        assertClose(gate, swiglu, tolerance: 1e-6, "swiglu")

        var y = up
        Kernels.add(gate, into: &y, y.count)
        assertClose(y, zip(gate, up).map(+), tolerance: 0, "add")
    }

    func testHalfConversions() {
        XCTAssertEqual(Half.f16ToFloat(0x3C00), 1)
        XCTAssertEqual(Half.f16ToFloat(0xC000), -2)
        XCTAssertEqual(Half.bf16ToFloat(0x3F80), 1)
        XCTAssertEqual(Half.floatToBF16(1.00390625), 0x3F80)   // tie rounds to even
        XCTAssertEqual(Half.floatToBF16(1.01171875), 0x3F82)   // tie rounds up to even
        XCTAssertEqual(Half.floatToF16(65504), 0x7BFF)
    }
}

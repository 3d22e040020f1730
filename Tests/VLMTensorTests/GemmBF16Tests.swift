import XCTest
import CVLMKernels
import VLMTensor

/// The --bf16 matrix product: the plain loop rounds as bfloat16 does, and the AVX512-BF16
/// kernel (where this CPU has it) gives the plain loop's numbers.
final class GemmBF16Tests: XCTestCase {
    /// c [m, n] = op(a)·op(b), a stored [m, k] (or [k, m] with transA), b [k, n] (or [n, k]).
    func product(_ m: Int, _ n: Int, _ k: Int, _ a: [Float], _ b: [Float], transA: Bool = false, transB: Bool, reference: Bool) -> [Float] {
        var c = [Float](repeating: .nan, count: m * n)
        let lda = transA ? m : k, ldb = transB ? k : n
        if reference {
            vlm_gemm_bf16_ref(Int32(m), Int32(n), Int32(k), 1, a, lda, transA ? 1 : 0, b, ldb, transB ? 1 : 0, 0, &c, n)
        } else {
            XCTAssertEqual(vlm_gemm_bf16(Int32(m), Int32(n), Int32(k), 1, a, lda, transA ? 1 : 0, b, ldb, transB ? 1 : 0, 0, &c, n, 2), 0)
        }
        return c
    }

    func testReferenceRoundsOperandsToNearestEvenBFloat16() {
        // bfloat16 keeps 8 significant bits: 1 + 2^-8 is a tie (to 1), 1 + 3·2^-8 a tie (up to
        // 1 + 2^-6), 1 + 2^-8 + 2^-12 rounds up to 1 + 2^-7; 2^-130 is denormal (to zero).
        let cases: [(Float, Float)] = [(1 + 0x1p-8, 1), (1 + 3 * 0x1p-8, 1 + 0x1p-6), (1 + 0x1p-8 + 0x1p-12, 1 + 0x1p-7),
                                       (-3.0, -3.0), (0x1p-130, 0), (65504, 65536)]
        for (x, rounded) in cases {
            XCTAssertEqual(product(1, 1, 1, [x], [1], transB: false, reference: true), [rounded], "\(x)")
            XCTAssertEqual(product(1, 1, 1, [1], [x], transA: true, transB: true, reference: true), [rounded], "\(x)")
        }
        // Sums stay Float32: 256 products of 1 · (1 + 2^-7) are 256 + 2.
        XCTAssertEqual(product(1, 1, 256, [Float](repeating: 1, count: 256), [Float](repeating: 1 + 0x1p-7, count: 256),
                               transB: true, reference: true), [258])
    }

    func testKernelMatchesReference() throws {
        try XCTSkipUnless(Kernels.hasBF16Instructions, "no AVX512-BF16: vlm_gemm_bf16 is the reference itself")
        var random = SystemRandomNumberGenerator()
        // Edges of every block: 12-row and 32-column panels, 256-wide k slices, 96-row and
        // 1024-column blocks, odd k.
        for (m, n, k) in [(1, 1, 1), (5, 7, 3), (13, 33, 17), (12, 32, 2), (97, 1025, 300), (200, 1100, 513), (37, 8, 576)] {
            for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = (0..<m * k).map { _ in Float.random(in: -1...1, using: &random) }
                let b = (0..<k * n).map { _ in Float.random(in: -1...1, using: &random) }
                let fast = product(m, n, k, a, b, transA: transA, transB: transB, reference: false)
                let slow = product(m, n, k, a, b, transA: transA, transB: transB, reference: true)
                let worst = zip(fast, slow).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(worst, 1e-5 * Float(k).squareRoot(), "\(m)×\(n)×\(k) transA \(transA) transB \(transB)")
            }
        }
        // alpha and beta, and strided operands: c = 0.5·a·bᵀ + 2·c.
        let (m, n, k, lda, ldb, ldc) = (30, 40, 50, 53, 51, 44)
        let a = (0..<m * lda).map { _ in Float.random(in: -1...1, using: &random) }
        let b = (0..<n * ldb).map { _ in Float.random(in: -1...1, using: &random) }
        let c0 = (0..<m * ldc).map { _ in Float.random(in: -1...1, using: &random) }
        var fast = c0, slow = c0
        XCTAssertEqual(vlm_gemm_bf16(Int32(m), Int32(n), Int32(k), 0.5, a, lda, 0, b, ldb, 1, 2, &fast, ldc, 2), 0)
        vlm_gemm_bf16_ref(Int32(m), Int32(n), Int32(k), 0.5, a, lda, 0, b, ldb, 1, 2, &slow, ldc)
        for i in 0..<m * ldc { XCTAssertEqual(fast[i], slow[i], accuracy: 1e-4, "element \(i)") }
        for r in 0..<m { for j in n..<ldc { XCTAssertEqual(fast[r * ldc + j], c0[r * ldc + j], "outside c: row \(r) column \(j)") } }
    }
}

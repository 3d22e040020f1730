import XCTest
import CVLMKernels

/// The decode attention kernels over Float32 and f16 caches, and the half conversions, against
/// plain Swift (Float16 is IEEE half, rounding to nearest even).
final class AttentionKernelTests: XCTestCase {
    func testHalfConversionsRoundAsSwiftFloat16() {
        // Normal, subnormal, overflowing, tie-breaking and special values; 45 of them, so the
        // vector loop and the scalar tail both run.
        var x: [Float] = [0, -0, 1, -1, 65504, 65520, 65519.99, 1e6, -1e6, 6.1e-5, 6.0e-8, 5.96e-8, 2.98e-8, 2.99e-8,
                          1e-10, .infinity, -.infinity, 1 + 1 / 2048, 1 + 3 / 2048, -(1 + 1 / 2048), 0.1, 1 / 3]
        var random = SystemRandomNumberGenerator()
        while x.count < 45 { x.append(Float.random(in: -8...8, using: &random) * powf(2, Float(Int.random(in: -20...12, using: &random)))) }
        var half = [UInt16](repeating: 0, count: x.count), back = [Float](repeating: 0, count: x.count)
        vlm_f16_from_f32(x, &half, x.count)
        vlm_f32_from_f16(half, &back, x.count)
        for (i, v) in x.enumerated() {
            XCTAssertEqual(half[i], Float16(v).bitPattern, "f16 of \(v)")
            XCTAssertEqual(back[i], Float(Float16(v)), "back from f16 of \(v)")
            // One at a time: the scalar conversion (a vector build's tail, a scalar build's all).
            var one: UInt16 = 0, oneBack: Float = 0
            vlm_f16_from_f32([v], &one, 1)
            vlm_f32_from_f16([one], &oneBack, 1)
            XCTAssertEqual(one, Float16(v).bitPattern, "scalar f16 of \(v)")
            XCTAssertEqual(oneBack, Float(Float16(v)), "scalar back from f16 of \(v)")
        }
        var nan: UInt16 = 0
        vlm_f16_from_f32([Float.nan], &nan, 1)
        XCTAssertTrue(Float16(bitPattern: nan).isNaN)
    }

    func testScoresAndMixMatchPlainSwiftForBothCacheTypes() {
        var random = SystemRandomNumberGenerator()
        for hd in [64, 128, 72, 5] {
            let total = 37, stride = hd * 3 + 4   // a head's slice inside wider rows
            let q = (0..<hd).map { _ in Float.random(in: -1...1, using: &random) }
            let p = (0..<total).map { _ in Float.random(in: 0...1, using: &random) }
            let cache = (0..<total * stride).map { _ in Float.random(in: -2...2, using: &random) }
            var half = [UInt16](repeating: 0, count: cache.count)
            vlm_f16_from_f32(cache, &half, cache.count)
            let rounded = half.map { Float(Float16(bitPattern: $0)) }
            let scale: Float = 0.125
            for (name, values) in [("f32", cache), ("f16", rounded)] {
                let expectedScores = (0..<total).map { j in (0..<hd).reduce(Float(0)) { $0 + q[$1] * values[j * stride + $1] } * scale }
                let expectedMix = (0..<hd).map { i in (0..<total).reduce(Float(0)) { $0 + p[$1] * values[$1 * stride + i] } }
                var scores = [Float](repeating: .nan, count: total), mix = [Float](repeating: .nan, count: hd)
                if name == "f32" {
                    vlm_attention_scores_f32(q, cache, stride, Int32(total), Int32(hd), scale, &scores)
                    vlm_attention_mix_f32(p, cache, stride, Int32(total), Int32(hd), &mix)
                } else {
                    vlm_attention_scores_f16(q, half, stride, Int32(total), Int32(hd), scale, &scores)
                    vlm_attention_mix_f16(p, half, stride, Int32(total), Int32(hd), &mix)
                }
                for j in 0..<total { XCTAssertEqual(scores[j], expectedScores[j], accuracy: 1e-4, "\(name) hd \(hd) score \(j)") }
                for i in 0..<hd { XCTAssertEqual(mix[i], expectedMix[i], accuracy: 1e-4, "\(name) hd \(hd) mix \(i)") }
            }
        }
    }
}

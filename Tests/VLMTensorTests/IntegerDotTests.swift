import XCTest
import CVLMKernels
import VLMTensor

/// The integer decode kernels (IntegerDot): activation quantization, vector kernels against the
/// scalar reference kernels, and both against dequantize-then-dot.
final class IntegerDotTests: XCTestCase {
    static let types: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

    func testSupportedTypes() {
        XCTAssertEqual(GGMLType.allCases.filter(IntegerDot.supports), Self.types)
        print("integer dot kernels: \(IntegerDot.instructionSet)")
    }

    static func quantized(_ type: GGMLType, _ x: [Float], reference: Bool) -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: IntegerDot.activationBytes(type, cols: x.count))
        out.withUnsafeMutableBytes { IntegerDot.quantizeActivations(type, x, cols: x.count, into: $0.baseAddress!, reference: reference) }
        return out
    }

    static func float(_ bytes: [UInt8], _ at: Int) -> Float { bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: Float.self) } }
    static func int8s(_ bytes: [UInt8], _ range: Range<Int>) -> [Int] { bytes[range].map { Int(Int8(bitPattern: $0)) } }

    /// Hand-checked blocks: max |x| = 127 gives d = 1, so the quants are x rounded half to even.
    func testQuantizeActivationsByHand() {
        var x = [Float](repeating: 0, count: 64)
        x[0] = 127; x[1] = -63.5; x[2] = 2.5; x[3] = -0.5; x[4] = 1.49; x[5] = 3.5
        // Second block all zero: d = 0 and every quant 0 (no division by zero).
        for reference in [true, false] {
            let q = Self.quantized(.q4_0, x, reference: reference)
            XCTAssertEqual(q.count, 80)
            XCTAssertEqual(Self.float(q, 0), 1)
            XCTAssertEqual(Self.int8s(q, 8..<14), [127, -64, 2, 0, 1, 4])
            XCTAssertEqual(Self.int8s(q, 14..<40), [Int](repeating: 0, count: 26))
            XCTAssertEqual(Self.float(q, 4), 70, "d · Σq = 127 - 64 + 2 + 0 + 1 + 4")
            XCTAssertEqual(Self.float(q, 40), 0)
            XCTAssertEqual(Self.float(q, 44), 0)
            XCTAssertEqual(Self.int8s(q, 48..<80), [Int](repeating: 0, count: 32))
        }

        // 256-element blocks: max |x| = 254 gives d = 2; sums per 16 elements.
        var wide = [Float](repeating: 0, count: 256)
        wide[0] = 254; wide[1] = -127; wide[2] = 5; wide[16] = -7; wide[17] = 3; wide[255] = 1
        for reference in [true, false] {
            let q = Self.quantized(.q6_K, wide, reference: reference)
            XCTAssertEqual(q.count, 292)
            XCTAssertEqual(Self.float(q, 0), 2)
            XCTAssertEqual(Self.int8s(q, 4..<7), [127, -64, 2], "-63.5 → -64, 2.5 → 2")
            XCTAssertEqual(Self.int8s(q, 20..<22), [-4, 2], "-3.5 → -4, 1.5 → 2")
            XCTAssertEqual(Self.int8s(q, 259..<260), [0], "0.5 → 0")
            let sums = q.withUnsafeBytes { raw in (0..<16).map { Int(raw.loadUnaligned(fromByteOffset: 260 + 2 * $0, as: Int16.self)) } }
            XCTAssertEqual(sums, [65, -2] + [Int](repeating: 0, count: 14))
        }
    }

    /// On gguf-py's blocks (Tests/Fixtures/data/quant) both kernels give Σ golden·x̂, x̂ the
    /// activations as their quants represent them, up to float rounding.
    func testIntegerDotMatchesGoldenDequantization() throws {
        let names: [GGMLType: String] = [.q4_0: "q4_0", .q4_1: "q4_1", .q5_0: "q5_0", .q5_1: "q5_1", .q8_0: "q8_0",
                                         .q4_K: "q4_k", .q5_K: "q5_k", .q6_K: "q6_k"]
        for type in Self.types {
            let name = try XCTUnwrap(names[type])
            let blocks = try Data(contentsOf: QuantTests.fixtures.appendingPathComponent("blocks/\(name).bin"))
            let golden = try QuantTests.readFloats(QuantTests.fixtures.appendingPathComponent("golden/\(name).f32"))
            let cols = 512, rows = golden.count / cols, rowBytes = type.byteCount(elements: cols)!
            XCTAssertEqual(blocks.count, rows * rowBytes)
            let x = Self.randomActivations(cols, seed: 77)
            let activations = Self.quantized(type, x, reference: true)
            let xHat = Self.represented(type, activations, cols: cols)
            for r in 0..<rows {
                var exact = 0.0, magnitude = 0.0
                for i in 0..<cols {
                    exact += Double(golden[r * cols + i]) * xHat[i]
                    magnitude += abs(Double(golden[r * cols + i]) * xHat[i])
                }
                for reference in [true, false] {
                    let value = blocks.withUnsafeBytes { raw in
                        activations.withUnsafeBytes { IntegerDot.dot(type, raw.baseAddress! + r * rowBytes, $0.baseAddress!, cols: cols, reference: reference) }
                    }
                    XCTAssertLessThanOrEqual(abs(Double(value) - exact), 1e-5 * magnitude,
                                             "\(type.name) row \(r) reference \(reference): \(value) vs \(exact)")
                }
            }
        }
    }

    /// The activations as their quantized blocks represent them: d_b · q_i.
    static func represented(_ type: GGMLType, _ blocks: [UInt8], cols: Int) -> [Double] {
        let per = IntegerDot.activationBlockElements(type), blockBytes = IntegerDot.activationBlockBytes(type)
        let quantsAt = per == 32 ? 8 : 4
        return (0..<cols).map { i in
            let b = i / per
            return Double(float(blocks, b * blockBytes)) * Double(Int8(bitPattern: blocks[b * blockBytes + quantsAt + i % per]))
        }
    }

    /// Vector quantization equals the reference byte for byte, on random rows.
    func testFastQuantizeMatchesReference() {
        for type in [GGMLType.q4_0, .q4_K] {
            for cols in [256, 768, 1536] {
                let x = Self.randomActivations(cols, seed: UInt64(cols))
                XCTAssertEqual(Self.quantized(type, x, reference: false), Self.quantized(type, x, reference: true), "\(type.name) \(cols)")
            }
        }
    }

    static func randomActivations(_ count: Int, seed: UInt64) -> [Float] {
        var rng = SplitMix(seed: seed)
        // Mostly small values with a few large ones, like hidden states with outlier channels.
        return (0..<count).map { _ in
            let v = Float(Int(rng.next() % 20001) - 10000) / 10000
            return rng.next() % 64 == 0 ? v * 20 : v
        }
    }

    /// Per row: the two dot products, Σ|w·x̂| (float rounding scale), Σ|w·x| and the bound
    /// Σ |w_i| · d_b / 2 that rounding x to 8 bits implies.
    struct RowCheck {
        var fast: Float, reference: Float
        var dequantizedExact: Double, dequantizedQuantizedExact: Double
        var magnitude: Double, activationBound: Double
    }

    static func rowChecks(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64) -> [RowCheck] {
        let blocks = QuantTests.randomBlocks(type, elements: rows * cols, seed: seed)
        let x = randomActivations(cols, seed: seed &+ 17)
        let fastBlocks = quantized(type, x, reference: false), referenceBlocks = quantized(type, x, reference: true)
        // x as its quants represent it, and the rounding bound d_b / 2 of each element.
        let per = IntegerDot.activationBlockElements(type), blockBytes = IntegerDot.activationBlockBytes(type)
        let xHat = represented(type, referenceBlocks, cols: cols)
        let halfStep = (0..<cols).map { Double(float(referenceBlocks, $0 / per * blockBytes)) / 2 }
        let rowBytes = type.byteCount(elements: cols)!
        var dense = [Float](repeating: 0, count: cols)
        return (0..<rows).map { r in
            blocks.withUnsafeBytes { raw in
                let row = raw.baseAddress! + r * rowBytes
                Dequantize.reference(type, row, &dense, count: cols)
                var check = RowCheck(
                    fast: fastBlocks.withUnsafeBytes { IntegerDot.dot(type, row, $0.baseAddress!, cols: cols) },
                    reference: referenceBlocks.withUnsafeBytes { IntegerDot.dot(type, row, $0.baseAddress!, cols: cols, reference: true) },
                    dequantizedExact: 0, dequantizedQuantizedExact: 0, magnitude: 0, activationBound: 0)
                for i in 0..<cols {
                    let w = Double(dense[i])
                    check.dequantizedExact += w * Double(x[i])
                    check.dequantizedQuantizedExact += w * xHat[i]
                    check.magnitude += abs(w * xHat[i])
                    check.activationBound += abs(w) * halfStep[i]
                }
                return check
            }
        }
    }

    /// The vector kernel equals the scalar reference kernel: both sum integers exactly, so they
    /// differ only in the order of the float block sums (≤ 1e-6 of Σ|w·x̂|).
    func testFastKernelsMatchReference() {
        for type in Self.types {
            let widths = type.blockSize == 32 ? [32, 96, 576, 1536] : [256, 768, 1536]
            for cols in widths {
                for (r, c) in Self.rowChecks(type, rows: 9, cols: cols, seed: UInt64(cols) &* 31 &+ UInt64(type.rawValue)).enumerated() {
                    let diff = Double(abs(c.fast - c.reference))
                    XCTAssertLessThanOrEqual(diff, 1e-6 * c.magnitude + 1e-7,
                                             "\(type.name) cols \(cols) row \(r): fast \(c.fast) vs reference \(c.reference)")
                }
            }
        }
    }

    /// Against dequantize-then-dot: with the activations as their quants represent them the
    /// integer path is exact up to float rounding (1e-5 of Σ|w·x̂|); against the Float32
    /// activations the difference stays within Σ |w_i|·d_b/2, the quantization bound.
    func testIntegerDotMatchesDequantizedDot() {
        for type in Self.types {
            var worstShare = 0.0
            for cols in type.blockSize == 32 ? [64, 576, 1536] : [256, 1536] {
                for (r, c) in Self.rowChecks(type, rows: 16, cols: cols, seed: 1000 &+ UInt64(cols) &+ UInt64(type.rawValue)).enumerated() {
                    let label = "\(type.name) cols \(cols) row \(r)"
                    for value in [c.fast, c.reference] {
                        XCTAssertLessThanOrEqual(abs(Double(value) - c.dequantizedQuantizedExact), 1e-5 * c.magnitude + 1e-6,
                                                 "\(label): \(value) vs Σ w·x̂ \(c.dequantizedQuantizedExact)")
                        let error = abs(Double(value) - c.dequantizedExact)
                        XCTAssertLessThanOrEqual(error, c.activationBound + 1e-5 * c.magnitude + 1e-6,
                                                 "\(label): \(value) vs Σ w·x \(c.dequantizedExact), bound \(c.activationBound)")
                        worstShare = max(worstShare, error / max(c.activationBound, 1e-12))
                    }
                }
            }
            // Rounding errors mostly cancel: typically a few percent of the worst case is used.
            print(String(format: "%@: integer dot error at most %.1f%% of the 8-bit activation bound", type.name, 100 * worstShare))
        }
    }
}

/// Prefill's integer product (QuantizedMatrix.matMulInteger: four tokens per weight-row pass,
/// rows in chunks over the threads) equals one reference dot per (row, token).
final class IntegerMatMulTests: XCTestCase {
    func testMatMulIntegerMatchesPerPairReference() {
        for type in IntegerDotTests.types {
            // 4096 columns: several row chunks per matrix; 3·blockSize: a single chunk.
            for (rows, cols) in [(100, 4096), (37, 3 * type.blockSize)] {
                for tokens in [1, 4, 5, 11] {
                    check(type, rows: rows, cols: cols, tokens: tokens, seed: UInt64(rows * 7919 + tokens) &+ UInt64(type.rawValue))
                }
            }
        }
    }

    /// Q4_0, Q4_K and Q6_K rows interleaved eight at a time: the vector kernels (decode's
    /// mat-vec and prefill's tokens) and the reference that takes each row back out of its group,
    /// against the per-pair reference on the stored rows.
    func testInterleavedRowsMatchPerPairReference() throws {
        try XCTSkipIf(String(cString: vlm_dot_instruction_set()) == "scalar", "the scalar build keeps rows as stored")
        for type in [GGMLType.q4_0, .q4_K, .q6_K] {
            for (rows, cols) in [(96, 4096), (16, type.blockSize == 32 ? 96 : 512)] {
                for tokens in [1, 3, 4, 5, 11] {
                    check(type, rows: rows, cols: cols, tokens: tokens, seed: UInt64(rows * 31 + tokens) &+ UInt64(type.rawValue), interleaved: true)
                }
            }
            XCTAssertNil(QuantizedMatrix(type: type, rows: 12, cols: 256, data: UnsafeRawPointer(bitPattern: 64)!, owner: nil)
                            .interleavedForIntegerProducts().interleaved, "rows not a multiple of 8 stay as stored")
        }
        XCTAssertNil(QuantizedMatrix(type: .q5_K, rows: 8, cols: 256, data: UnsafeRawPointer(bitPattern: 64)!, owner: nil)
                        .interleavedForIntegerProducts().interleaved, "types without interleaved kernels stay as stored")
    }

    private func check(_ type: GGMLType, rows: Int, cols: Int, tokens: Int, seed: UInt64, interleaved: Bool = false) {
        let blocks = QuantTests.randomBlocks(type, elements: rows * cols, seed: seed)
        var rng = SeededRandom(seed: seed &+ 1)
        // A few large channels, as real hidden states have, so the blocks' scales differ.
        let x = (0..<(tokens * cols)).map { i in (rng.nextUnit() * 2 - 1) * (i % 97 == 0 ? 20 : 1) }
        var y = [Float](repeating: .nan, count: tokens * rows), dense = [Float](repeating: 0, count: rows * cols)
        let rowBytes = type.byteCount(elements: cols)!, tokenBytes = IntegerDot.activationBytes(type, cols: cols)
        var activations = [UInt8](repeating: 0, count: tokenBytes)
        var worst = 0.0
        blocks.withUnsafeBytes { raw in
            QuantizedMatrix(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil).dequantize(into: &dense)
        }
        func referenceCheck(_ y: [Float], _ what: String) {
            blocks.withUnsafeBytes { raw in
                for t in 0..<tokens {
                    x.withUnsafeBufferPointer { xs in
                        activations.withUnsafeMutableBytes {
                            IntegerDot.quantizeActivations(type, xs.baseAddress! + t * cols, cols: cols, into: $0.baseAddress!, reference: true)
                        }
                    }
                    for r in 0..<rows {
                        let expected = activations.withUnsafeBytes {
                            IntegerDot.dot(type, raw.baseAddress! + r * rowBytes, $0.baseAddress!, cols: cols, reference: true)
                        }
                        var magnitude = 0.0
                        for c in 0..<cols { magnitude += Double(abs(dense[r * cols + c] * x[t * cols + c])) }
                        let diff = Double(abs(y[t * rows + r] - expected))
                        worst = max(worst, diff / max(magnitude, 1e-12))
                        XCTAssertLessThanOrEqual(diff, 1e-5 * magnitude + 1e-6,
                                                 "\(what) \(type.name) [\(rows), \(cols)] token \(t) row \(r): \(y[t * rows + r]) vs \(expected)")
                    }
                }
            }
        }
        blocks.withUnsafeBytes { raw in
            var m = QuantizedMatrix(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
            if interleaved {
                m = m.interleavedForIntegerProducts()
                guard let packed = m.interleaved?.pointer else { return XCTFail("\(type.name) [\(rows), \(cols)] was not interleaved") }
                // The scalar reference over the packed rows, then the vector kernels.
                let quantized = (0..<tokens).flatMap { t in
                    var a = [UInt8](repeating: 0, count: tokenBytes)
                    x.withUnsafeBufferPointer { xs in
                        a.withUnsafeMutableBytes { IntegerDot.quantizeActivations(type, xs.baseAddress! + t * cols, cols: cols, into: $0.baseAddress!) }
                    }
                    return a
                }
                quantized.withUnsafeBytes { vlm_mat_x8_ref(type.rawValue, Int32(cols), packed, 0, Int32(rows / 8), $0.baseAddress!, Int32(tokens), &y, rows) }
                referenceCheck(y, "reference over the interleaved rows")
                if tokens == 1 {
                    y = [Float](repeating: .nan, count: rows)
                    m.matVecInteger(x, &y)
                    referenceCheck(y, "matVecInteger")
                }
                y = [Float](repeating: .nan, count: tokens * rows)
            }
            m.matMulInteger(x, &y, tokens: tokens)
            referenceCheck(y, "matMulInteger")
        }
        XCTAssertLessThan(worst, 1e-5, "\(type.name): worst relative difference \(worst)")
    }
}

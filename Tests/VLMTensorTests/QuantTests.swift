import XCTest
import Foundation
import VLMTensor

final class QuantTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/quant")

    /// Every type the fixtures cover, by GGUF type name.
    static let fixtureTypes: [String: GGMLType] = [
        "F32": .f32, "F16": .f16, "BF16": .bf16, "Q8_0": .q8_0, "Q4_0": .q4_0, "Q4_1": .q4_1,
        "Q5_0": .q5_0, "Q5_1": .q5_1, "Q2_K": .q2_K, "Q3_K": .q3_K, "Q4_K": .q4_K, "Q5_K": .q5_K, "Q6_K": .q6_K,
    ]

    static func readFloats(_ url: URL) throws -> [Float] {
        let data = try Data(contentsOf: url)
        return data.withUnsafeBytes { raw in (0..<data.count / 4).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) } }
    }

    /// Largest |a - b| and whether every pair is within `rel * |b| + abs`.
    static func compare(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, rel: Float, abs: Float) -> (maxDiff: Float, ok: Bool) {
        var maxDiff: Float = 0, ok = true
        for i in 0..<count {
            let diff = Swift.abs(a[i] - b[i])
            maxDiff = max(maxDiff, diff)
            if !(diff <= rel * Swift.abs(b[i]) + abs) { ok = false }
        }
        return (maxDiff, ok)
    }

    func testReferenceMatchesGolden() throws {
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("index.json"))) as! [String: Any]
        let tensors = index["tensors"] as! [[String: Any]]
        XCTAssertEqual(tensors.count, Self.fixtureTypes.count)
        for t in tensors {
            let name = t["type"] as! String
            let type = try XCTUnwrap(Self.fixtureTypes[name], name)
            XCTAssertEqual(Int(type.rawValue), t["type_id"] as? Int)
            let blocks = try Data(contentsOf: Self.fixtures.appendingPathComponent(t["blocks"] as! String))
            let golden = try Self.readFloats(Self.fixtures.appendingPathComponent(t["golden"] as! String))
            XCTAssertEqual(type.byteCount(elements: golden.count), blocks.count, name)
            var out = [Float](repeating: .nan, count: golden.count)
            for decode in [Dequantize.reference, Dequantize.fast] {
                blocks.withUnsafeBytes { raw in
                    out.withUnsafeMutableBufferPointer { decode(type, raw.baseAddress!, $0.baseAddress!, golden.count) }
                }
                let (maxDiff, ok) = Self.compare(out, golden, count: golden.count, rel: 1e-6, abs: 1e-7)
                XCTAssertTrue(ok, "\(name): max diff \(maxDiff) vs gguf-py")
            }
        }
    }

    /// Random blocks for `type` with every scale field a small finite value, so decoding is finite.
    static func randomBlocks(_ type: GGMLType, elements: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix(seed: seed)
        let bytes = type.byteCount(elements: elements)!
        var out = (0..<bytes).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        func put16(_ at: Int, _ v: UInt16) { out[at] = UInt8(v & 0xFF); out[at + 1] = UInt8(v >> 8) }
        func scale() -> Float { Float(rng.next() % 1000 + 1) / 20000 }
        switch type {
        case .f32:
            for i in 0..<elements { withUnsafeBytes(of: (scale() - 0.025) * 40) { for k in 0..<4 { out[4 * i + k] = $0[k] } } }
        case .f16:
            for i in 0..<elements { put16(2 * i, Half.floatToF16((scale() - 0.025) * 40)) }
        case .bf16:
            for i in 0..<elements { put16(2 * i, Half.floatToBF16((scale() - 0.025) * 40)) }
        default:
            let offsets: [Int]
            switch type {
            case .q4_0, .q5_0, .q8_0: offsets = [0]
            case .q4_1, .q5_1, .q8_1, .q4_K, .q5_K: offsets = [0, 2]
            case .q2_K: offsets = [80, 82]
            case .q3_K: offsets = [108]
            case .q6_K: offsets = [208]
            default: offsets = []
            }
            for b in 0..<(bytes / type.blockBytes) {
                let base = b * type.blockBytes
                for o in offsets { put16(base + o, Half.floatToF16(scale())) }
                if type == .q8_K { withUnsafeBytes(of: scale()) { for k in 0..<4 { out[base + k] = $0[k] } } }
            }
        }
        return out
    }

    func testFastDequantizeMatchesReference() {
        for type in GGMLType.allCases {
            let n = 1024
            let blocks = Self.randomBlocks(type, elements: n, seed: UInt64(type.rawValue) + 1)
            var ref = [Float](repeating: .nan, count: n), fast = [Float](repeating: .nan, count: n)
            blocks.withUnsafeBytes { raw in
                Dequantize.reference(type, raw.baseAddress!, &ref, count: n)
                Dequantize.fast(type, raw.baseAddress!, &fast, count: n)
            }
            let (maxDiff, ok) = Self.compare(fast, ref, count: n, rel: 0, abs: 0)
            XCTAssertTrue(ok, "\(type.name): fast dequantize max diff \(maxDiff)")
            XCTAssertTrue(ref.allSatisfy(\.isFinite), "\(type.name): non-finite reference values")
        }
    }

    func checkMatVec(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64) {
        let blocks = Self.randomBlocks(type, elements: rows * cols, seed: seed)
        var rng = SplitMix(seed: seed &+ 99)
        let x = (0..<cols).map { _ in Float(Int(rng.next() % 2001) - 1000) / 1000 }
        var y = [Float](repeating: .nan, count: rows), yRef = [Float](repeating: .nan, count: rows)
        var yInteger = [Float](repeating: .nan, count: rows)
        var dense = [Float](repeating: 0, count: rows * cols), row = [Float](repeating: 0, count: cols)
        blocks.withUnsafeBytes { raw in
            let m = QuantizedMatrix(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
            m.matVec(x, &y)
            if IntegerDot.supports(type) { m.matVecInteger(x, &yInteger) }
            m.matVecReference(x, &yRef)
            m.dequantize(into: &dense)
            m.dequantizeRow(rows - 1, into: &row)
        }
        // Tolerance scaled by Σ|w·x| of each row: the two sums only differ in rounding order.
        // 8-bit activations (matVecInteger) add at most Σ |w_i|·d_b/2, d_b = max|x| / 127 over x's block b.
        let integer = IntegerDot.supports(type), per = integer ? IntegerDot.activationBlockElements(type) : 1
        let halfStep = (0..<cols).map { c in x[(c / per * per)..<(c / per * per + per)].map(Swift.abs).max()! / 127 / 2 }
        var worst: Float = 0, worstInteger: Float = 0, ok = true, okInteger = true
        for r in 0..<rows {
            var magnitude: Float = 0, activationBound: Float = 0
            for c in 0..<cols {
                magnitude += Swift.abs(dense[r * cols + c] * x[c])
                activationBound += Swift.abs(dense[r * cols + c]) * halfStep[c]
            }
            let diff = Swift.abs(y[r] - yRef[r])
            worst = max(worst, diff / max(magnitude, 1e-20))
            if !(diff <= 1e-5 * magnitude + 1e-6) { ok = false }
            guard integer else { continue }
            let diffInteger = Swift.abs(yInteger[r] - yRef[r])
            worstInteger = max(worstInteger, diffInteger / max(magnitude, 1e-20))
            if !(diffInteger <= (integer ? activationBound : 0) + 1e-5 * magnitude + 1e-6) { okInteger = false }
        }
        XCTAssertTrue(ok, "\(type.name) [\(rows), \(cols)]: matVec relative diff \(worst)")
        XCTAssertTrue(okInteger, "\(type.name) [\(rows), \(cols)]: matVecInteger relative diff \(worstInteger)")
        var refRow = [Float](repeating: 0, count: cols)
        blocks.withUnsafeBytes { raw in
            Dequantize.reference(type, raw.baseAddress! + (rows - 1) * type.byteCount(elements: cols)!, &refRow, count: cols)
        }
        XCTAssertEqual(row, refRow, "\(type.name): dequantizeRow")
        XCTAssertEqual(Array(dense[((rows - 1) * cols)..<(rows * cols)]), refRow, "\(type.name): dequantize")
    }

    func testFastMatVecMatchesReference() {
        for type in GGMLType.allCases {
            checkMatVec(type, rows: 37, cols: 512, seed: UInt64(type.rawValue) * 7 + 3)
            // Enough rows that the work is split over threads.
            checkMatVec(type, rows: 700, cols: 256, seed: UInt64(type.rawValue) * 7 + 4)
        }
        // Odd block counts exercise the kernels' tail blocks.
        for type in GGMLType.allCases where type.blockSize == 32 {
            for cols in [32, 96, 160] { checkMatVec(type, rows: 3, cols: cols, seed: UInt64(cols) + UInt64(type.rawValue)) }
        }
        for type in GGMLType.allCases where type.blockSize == 256 {
            checkMatVec(type, rows: 3, cols: 768, seed: 11 + UInt64(type.rawValue))
        }
        // Float types take any width, including tails shorter than a vector.
        for type in [GGMLType.f32, .f16, .bf16] {
            for cols in [1, 7, 9, 33, 515] { checkMatVec(type, rows: 5, cols: cols, seed: UInt64(cols)) }
        }
    }

    /// Decode-time matVec speed on the shapes of a 135M model. Prints only (no timing assertion):
    /// wall-clock GB/s over all threads, and single-thread GB/s per CPU-second (stable on a busy machine).
    func testMatVecBandwidth() {
        let shapes = [(GGMLType.q4_1, 1536, 576), (.q4_1, 576, 1536), (.q8_0, 49152, 576), (.q4_0, 1536, 576),
                      (.q6_K, 1536, 768), (.q4_K, 1536, 768), (.q5_K, 1536, 768), (.q5_0, 1536, 576), (.f16, 1536, 576), (.bf16, 1536, 576), (.f32, 1536, 576),
                      (.f32, 8192, 2048)]  // 64 MB of F32: a streaming-bandwidth yardstick
        for (type, rows, cols) in shapes {
            let blocks = Self.randomBlocks(type, elements: rows * cols, seed: 5)
            let x = [Float](repeating: 0.5, count: cols)
            var y = [Float](repeating: 0, count: rows)
            let bytes = Double(blocks.count)
            let iterations = max(3, Int(1e9 / bytes))
            blocks.withUnsafeBytes { raw in
                let m = QuantizedMatrix(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
                m.matVec(x, &y)
                let start = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<iterations { m.matVec(x, &y) }
                let wall = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9

                let saved = Parallel.threads
                Parallel.threads = 1
                let cpuStart = Self.threadCPUTime()
                for _ in 0..<iterations { m.matVec(x, &y) }
                let cpu = Self.threadCPUTime() - cpuStart
                Parallel.threads = saved
                print(String(format: "matVec %@ [%d, %d]: %.1f µs, %.1f GB/s wall (%d threads); %.1f GB/s per CPU-second on one thread",
                             type.name, rows, cols, wall / Double(iterations) * 1e6, bytes * Double(iterations) / wall / 1e9,
                             Parallel.threads, bytes * Double(iterations) / cpu / 1e9))
            }
        }
    }

    static func threadCPUTime() -> Double {
        var t = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
        return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
    }
}

/// Small deterministic generator so random blocks are the same on every run.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

import Foundation
import VLMFormats
import VLMTensor
import XCTest

/// The shared guards of every model file: the JSON reader (regular files only, bounded) and the
/// scan for NaN/Inf weights.
final class InputBoundsTests: XCTestCase {
    func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-small-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testSmallFileReadsRegularFilesOnlyAndBoundsTheirSize() throws {
        let dir = try scratch()
        try Data("{\"a\": 1}".utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertEqual(try SmallFile.read(dir + "/config.json"), Data("{\"a\": 1}".utf8))
        XCTAssertNil(try SmallFile.readIfPresent(dir + "/missing.json"))
        XCTAssertThrowsError(try SmallFile.read(dir + "/missing.json")) { XCTAssertTrue("\($0)".hasPrefix(dir + "/missing.json: ")) }
        XCTAssertThrowsError(try SmallFile.read(dir + "/config.json", maxBytes: 4)) {
            XCTAssertTrue("\($0)".contains("file is 8 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try SmallFile.readIfPresent(dir)) { XCTAssertEqual("\($0)", "\(dir): not a regular file") }
        XCTAssertEqual(mkfifo(dir + "/fifo.json", 0o644), 0)
        let start = Date()
        XCTAssertThrowsError(try SmallFile.readIfPresent(dir + "/fifo.json")) {
            XCTAssertEqual("\($0)", "\(dir)/fifo.json: not a regular file")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5, "a FIFO is refused, not waited on")
    }

    /// Every position of the first and a later block, for each plain float type.
    func testFiniteScanFindsTheFirstNaNOrInfinity() {
        let count = 3 * 4096 + 17
        for type in [GGMLType.f32, .f16, .bf16] {
            for bad in [Float.nan, .infinity, -.infinity] {
                for index in [0, 4095, 4096, 9000, count - 1] {
                    var values = (0..<count).map { Float($0 % 7) - 3 }
                    values[index] = bad
                    if index < count - 1 { values[count - 1] = .nan }   // a later one is not reported first
                    let found = Self.encoded(values, as: type).withUnsafeBytes {
                        FiniteScan.firstNonFinite($0.baseAddress!, type: type, count: count)
                    }
                    XCTAssertEqual(found?.index, index, "\(type) \(bad) at \(index)")
                    XCTAssertEqual(found.map { $0.value.isNaN ? "nan" : "\($0.value)" }, bad.isNaN ? "nan" : "\(bad)")
                }
            }
        }
    }

    /// In quantized types the F16 block scales are what can be non-finite: a NaN or infinite `d`
    /// (or min term) in any block is found and reported at that block's first element; random
    /// finite blocks pass.
    func testFiniteScanFindsNonFiniteScalesOfQuantizedBlocks() {
        var random = SeededRandom(seed: 7)
        let blocks = 5000
        let cases: [(GGMLType, [Int])] = [(.q4_0, [0]), (.q4_1, [0, 2]), (.q5_0, [0]), (.q5_1, [0, 2]), (.q8_0, [0]),
                                          (.q2_K, [80, 82]), (.q3_K, [108]), (.q4_K, [0, 2]), (.q5_K, [0, 2]), (.q6_K, [208])]
        for (type, offsets) in cases {
            var bytes = [UInt8](repeating: 0, count: blocks * type.blockBytes)
            for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: random.next()) }
            // Every scale finite (a random exponent field of all ones would be a NaN or Inf).
            for b in 0..<blocks { for o in offsets { bytes[b * type.blockBytes + o + 1] &= 0x3B } }
            let count = blocks * type.blockSize
            XCTAssertNil(bytes.withUnsafeBytes { FiniteScan.firstNonFinite($0.baseAddress!, type: type, count: count) }, "\(type)")
            for (block, bits) in [(4999, UInt16(0x7C00)), (4097, 0xFE00), (3, 0x7E01)] {
                var poisoned = bytes
                let at = block * type.blockBytes + offsets.last!
                poisoned[at] = UInt8(bits & 0xFF); poisoned[at + 1] = UInt8(bits >> 8)
                let found = poisoned.withUnsafeBytes { FiniteScan.firstNonFinite($0.baseAddress!, type: type, count: count) }
                XCTAssertEqual(found?.index, block * type.blockSize, "\(type) block \(block)")
                XCTAssertEqual(found?.value.isFinite, false)
            }
        }
    }

    /// The largest, smallest and subnormal finite values of each type, and zeros, pass.
    func testFiniteScanPassesEveryFiniteExtreme() {
        let extremes: [GGMLType: [Float]] = [
            .f32: [Float.greatestFiniteMagnitude, -Float.greatestFiniteMagnitude, Float.leastNonzeroMagnitude, -0.0, 0],
            .f16: [65504, -65504, Float(Float16.leastNonzeroMagnitude), -0.0, 0],
            .bf16: [Float(bitPattern: 0x7F7F_0000), -Float(bitPattern: 0x7F7F_0000), Float(bitPattern: 0x0001_0000), -0.0, 0],
        ]
        for (type, values) in extremes {
            let many = Array(repeating: values, count: 2000).flatMap { $0 }
            let found = Self.encoded(many, as: type).withUnsafeBytes {
                FiniteScan.firstNonFinite($0.baseAddress!, type: type, count: many.count)
            }
            XCTAssertNil(found, "\(type)")
        }
    }

    /// The scan runs on every plain float weight at load, so it has to be memory-bound.
    func testFiniteScanIsFast() {
        let count = 64 << 20   // 256 MB of F32, 128 MB of F16
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4 * count, alignment: 64)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: Float.self, repeating: 0.5, count: count)
        var report: [String] = []
        for (type, elements) in [(GGMLType.f32, count), (.f16, 2 * count)] {
            _ = FiniteScan.firstNonFinite(buffer, type: type, count: elements)
            let start = Date()
            XCTAssertNil(FiniteScan.firstNonFinite(buffer, type: type, count: elements))
            let seconds = Date().timeIntervalSince(start)
            report.append(String(format: "%@ %.2f GB/s", "\(type)", Double(4 * count) / seconds / 1e9))
            XCTAssertLessThan(seconds, 1, "\(type)")   // loose: shared CI machines; ~0.05 s in release
        }
        print("finite scan of 256 MB: " + report.joined(separator: ", "))
    }

    static func encoded(_ values: [Float], as type: GGMLType) -> Data {
        switch type {
        case .f16: return values.map { Half.floatToF16($0) }.withUnsafeBytes { Data($0) }
        case .bf16: return values.map { Half.floatToBF16($0) }.withUnsafeBytes { Data($0) }
        default: return values.withUnsafeBytes { Data($0) }
        }
    }
}

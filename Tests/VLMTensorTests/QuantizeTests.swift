import Foundation
import VLMTensor
import XCTest

/// The encoders vlmsh writes GGUF tensors with, against gguf-py's `quants.quantize` (goldens from
/// Tests/Fixtures/gen_export_gguf.py: random rows at three scales and a row of edge cases — an
/// all-zero block, exact ties, tiny, negative, near-f16-limit and constant blocks).
final class QuantizeTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/export_gguf")

    func input() throws -> [Float] { try QuantTests.readFloats(Self.fixtures.appendingPathComponent("q8_input.f32")) }

    func golden(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: Self.fixtures.appendingPathComponent(name))) }

    func testQ8_0MatchesGGUFPyBitForBit() throws {
        let x = try input()
        XCTAssertEqual(x.count, 4 * 256)
        let ours = Quantize.encode(.q8_0, x, count: x.count)
        let theirs = try golden("q8_0.bin")
        XCTAssertEqual(ours.count, theirs.count)
        let differing = zip(ours, theirs).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
        XCTAssertEqual(differing.count, 0, "first differing byte offsets \(differing.prefix(8))")
        // And it decodes back within half a step of every value, plus what storing the step as
        // f16 moves the largest quant by.
        var back = [Float](repeating: 0, count: x.count)
        ours.withUnsafeBytes { Dequantize.reference(.q8_0, $0.baseAddress!, &back, count: x.count) }
        for b in 0..<x.count / 32 {
            let block = x[32 * b..<32 * b + 32]
            let step = block.map(abs).max()! / 127
            let stored = Half.f16ToFloat(Half.floatToF16(step))
            let bound = max(stored, step) / 2 + 127 * abs(stored - step)
            for i in block.indices { XCTAssertLessThanOrEqual(abs(back[i] - x[i]), bound * 1.001, "element \(i)") }
        }
    }

    func testF16MatchesGGUFPy() throws {
        let x = try input()
        XCTAssertEqual(Quantize.encode(.f16, x, count: x.count), try golden("f16.bin"))
    }

    func testF32AndBF16AreTheReadersInverse() throws {
        let x = try input()
        for type in [GGMLType.f32, .bf16] {
            let bytes = Quantize.encode(type, x, count: x.count)
            XCTAssertEqual(bytes.count, type.byteCount(elements: x.count))
            var back = [Float](repeating: 0, count: x.count)
            bytes.withUnsafeBytes { Dequantize.reference(type, $0.baseAddress!, &back, count: x.count) }
            for i in x.indices where type == .f32 { XCTAssertEqual(back[i].bitPattern, x[i].bitPattern) }
            for i in x.indices where type == .bf16 { XCTAssertEqual(Half.floatToBF16(x[i]), Half.floatToBF16(back[i])) }
        }
    }
}

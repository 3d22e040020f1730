import Foundation
import VLMFormats
import VLMTensor
import XCTest

/// GGUFWriter against gguf-py's writer: the quant fixtures (every metadata value type, nested
/// arrays, every tensor type, a 64-byte alignment) read with vlmsh's reader and written back come
/// out byte for byte as gguf-py wrote them.
final class GGUFWriterTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        folder = NSTemporaryDirectory() + "vlmsh-gguf-writer-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: folder) }

    /// Writes `source`'s metadata and tensors (as stored) to a new file; returns its path.
    func rewrite(_ source: GGUFFile, as name: String) throws -> String {
        let path = folder + "/" + name
        let entries = source.tensorInfos.map { GGUFTensorEntry(name: $0.name, shape: $0.shape, type: $0.type) }
        let bytes = try GGUFWriter.write(metadata: source.metadataKeys.map { ($0, source.metadata[$0]!) }, tensors: entries, to: path) { i in
            let t = source.tensorInfos[i]
            return .encoded(Array(UnsafeRawBufferPointer(start: try source.matrix(t.name).data, count: t.byteCount)))
        }
        XCTAssertEqual(bytes, try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int)
        return path
    }

    func testRewritesGGUFPyFilesByteForByte() throws {
        for name in ["types.gguf", "align64.gguf"] {
            let original = GGUFTests.fixtures.appendingPathComponent(name).path
            let source = try GGUFFile(path: original)
            let path = try rewrite(source, as: name)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), try Data(contentsOf: URL(fileURLWithPath: original)), name)
            let back = try GGUFFile(path: path)
            XCTAssertEqual(back.metadataKeys, source.metadataKeys)
            XCTAssertEqual(back.tensorInfos, source.tensorInfos)
        }
    }

    func testEncodesFloatsAsTheEntryType() throws {
        let values = Tensor(shape: [2, 64], zeroed: false)
        for i in 0..<values.count { values.data[i] = Float(i) * 0.37 - 11 }
        let path = folder + "/floats.gguf"
        let types: [GGMLType] = [.f32, .f16, .bf16, .q8_0]
        try GGUFWriter.write(metadata: [("general.architecture", .string("test")), ("general.alignment", .uint32(64))],
                             tensors: types.map { GGUFTensorEntry(name: "t.\($0.name)", shape: [2, 64], type: $0) }, to: path) { _ in .floats(values) }
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.alignment, 64)
        for type in types {
            let info = try XCTUnwrap(g.tensorInfo("t.\(type.name)"))
            XCTAssertEqual(info.dims, [64, 2])
            XCTAssertEqual(info.type, type)
            XCTAssertEqual((info.offset - g.dataOffset) % 64, 0)
            let stored = Array(UnsafeRawBufferPointer(start: try g.matrix(info.name).data, count: info.byteCount))
            XCTAssertEqual(stored, Quantize.encode(type, values.data, count: values.count), type.name)
        }
    }

    func testRefusesWhatNoReaderTakes() throws {
        let path = folder + "/bad.gguf"
        func attempt(_ entry: GGUFTensorEntry, metadata: [(key: String, value: GGUFValue)] = []) -> String {
            do {
                try GGUFWriter.write(metadata: metadata, tensors: [entry], to: path) { _ in .encoded([]) }
                return "written"
            } catch { return "\(error)" }
        }
        let ok = GGUFTensorEntry(name: "t", shape: [32], type: .f32)
        XCTAssertTrue(attempt(GGUFTensorEntry(name: "t", shape: [2, 31], type: .q8_0)).contains("not whole Q8_0 blocks"))
        XCTAssertTrue(attempt(ok, metadata: [("a", .uint8(1)), ("a", .uint8(2))]).contains("written twice"))
        XCTAssertTrue(attempt(ok, metadata: [("general.alignment", .uint32(48))]).contains("power of two"))
        XCTAssertTrue(attempt(ok, metadata: [("k", .array([.uint8(1), .string("x")]))]).contains("mixes value types"))
        XCTAssertTrue(attempt(ok).contains("has 0 bytes of F32, expected 128"))
        XCTAssertTrue(attempt(GGUFTensorEntry(name: "t", shape: [1, 1, 1, 1, 1], type: .f32)).contains("positive dimensions"))
        // Nothing is left behind by a failed write.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder), [])
    }
}

import Foundation
import VLMFormats
import VLMTensor
import XCTest

/// Fixtures come from Tests/Fixtures/gen_safetensors.py.
private let fixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/data/safetensors")

private func fixture(_ name: String) -> String { fixtures.appendingPathComponent(name).path }

private struct GoldenTensor: Decodable {
    let dtype: String
    let shape: [Int]
    let values: [Double]
}

private struct Golden: Decodable {
    let metadata: [String: String]
    let basic: [String: GoldenTensor]
    let sharded: [String: GoldenTensor]
    let shards: [String: String]
}

final class SafetensorsTests: XCTestCase {
    private func golden() throws -> Golden {
        try JSONDecoder().decode(Golden.self, from: Data(contentsOf: fixtures.appendingPathComponent("golden.json")))
    }

    /// Every golden tensor has the right info, matrix view and values (bit-exact after widening).
    private func check(_ source: WeightSource, _ expected: [String: GoldenTensor], file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(source.weightNames, expected.keys.sorted(), file: file, line: line)
        let types: [String: GGMLType] = ["F32": .f32, "F16": .f16, "BF16": .bf16]
        for (name, g) in expected {
            XCTAssertEqual(source.info(name), WeightInfo(shape: g.shape, type: types[g.dtype]!), name, file: file, line: line)
            let t = try source.floats(name)
            XCTAssertEqual(t.shape, g.shape, name, file: file, line: line)
            XCTAssertEqual(t.array, g.values.map { Float($0) }, name, file: file, line: line)

            let m = try source.matrix(name)
            let count = g.shape.reduce(1, *)
            XCTAssertEqual(m.type, types[g.dtype]!, name, file: file, line: line)
            XCTAssertEqual(m.rows, g.shape.count >= 2 ? g.shape[0] : 1, name, file: file, line: line)
            XCTAssertEqual(m.rows * m.cols, count, name, file: file, line: line)
            // The matrix points at the stored encoding: its last element decodes to the last value.
            let last = m.row(m.rows - 1)
            let lastValue: Float
            switch m.type {
            case .f32: lastValue = last.loadUnaligned(fromByteOffset: 4 * (m.cols - 1), as: Float.self)
            case .f16: lastValue = Half.f16ToFloat(last.loadUnaligned(fromByteOffset: 2 * (m.cols - 1), as: UInt16.self))
            default: lastValue = Half.bf16ToFloat(last.loadUnaligned(fromByteOffset: 2 * (m.cols - 1), as: UInt16.self))
            }
            XCTAssertEqual(lastValue, Float(g.values[count - 1]), name, file: file, line: line)
        }
    }

    func testSingleFileValues() throws {
        let g = try golden()
        let f = try SafetensorsFile(path: fixture("basic.safetensors"))
        try check(f, g.basic)
        XCTAssertEqual(f.metadata, g.metadata)
    }

    func testUnsupportedDtypeIsListedButNotLoadable() throws {
        let path = fixture("basic.safetensors")
        let f = try SafetensorsFile(path: path)
        XCTAssertTrue(f.allTensorNames.contains("model.position_ids"))
        XCTAssertFalse(f.weightNames.contains("model.position_ids"))
        XCTAssertEqual(f.dtype("model.position_ids"), "I64")
        XCTAssertNil(f.info("model.position_ids"))
        let e = expectFormatError(path) { _ = try f.floats("model.position_ids") }
        XCTAssertTrue(e.contains("model.position_ids") && e.contains("I64"), e)
        let missing = expectFormatError(path) { _ = try f.matrix("no.such.tensor") }
        XCTAssertTrue(missing.contains("no.such.tensor"), missing)
    }

    func testShardedWithIndex() throws {
        let g = try golden()
        let index = fixture("sharded/model.safetensors.index.json")
        let c = try ShardedCheckpoint(index: index)
        try check(c, g.sharded)
        XCTAssertEqual(c.shards.count, 2)
        XCTAssertEqual(c.metadata["format"], "pt")
    }

    func testOpenCheckpointFolders() throws {
        let g = try golden()
        let single = try openCheckpoint(folder: fixture("single"))
        XCTAssertTrue(single is SafetensorsFile)
        try check(single, g.basic)

        let sharded = try openCheckpoint(folder: fixture("sharded"))
        XCTAssertTrue(sharded is ShardedCheckpoint)
        try check(sharded, g.sharded)

        // Several *.safetensors without an index.
        let loose = try openCheckpoint(folder: fixture("noindex"))
        XCTAssertTrue(loose is ShardedCheckpoint)
        try check(loose, g.sharded)

        let empty = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-empty-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: empty) }
        _ = expectFormatError(empty.path) { _ = try openCheckpoint(folder: empty.path) }
    }

    func testBadFilesNameTheFile() throws {
        let cases: [(String, String)] = [
            ("short.safetensors", "too short"),
            ("truncated.safetensors", "past the end"),
            ("header_past_end.safetensors", "past the end"),
            ("huge_header.safetensors", "not sane"),
            ("bad_json.safetensors", "JSON"),
            ("offsets_past_end.safetensors", "past the end"),
            ("size_mismatch.safetensors", "needs 24"),
            ("unknown_dtype.safetensors", "Q7"),
            ("bad_metadata.safetensors", "__metadata__"),
        ]
        for (name, phrase) in cases {
            let path = fixture("bad/" + name)
            let message = expectFormatError(path) { _ = try SafetensorsFile(path: path) }
            XCTAssertTrue(message.contains(phrase), "\(name): \(message)")
        }
        // The unknown dtype error also names the tensor.
        let path = fixture("bad/unknown_dtype.safetensors")
        let message = expectFormatError(path) { _ = try SafetensorsFile(path: path) }
        XCTAssertTrue(message.contains("'w'"), message)
    }

    func testMissingFile() {
        let path = fixture("bad/does-not-exist.safetensors")
        _ = expectFormatError(path) { _ = try SafetensorsFile(path: path) }
    }

    func testBrokenShardedCheckpoints() {
        let missing = fixture("bad/missing_shard/model.safetensors.index.json")
        let m = expectFormatError(missing) { _ = try ShardedCheckpoint(index: missing) }
        XCTAssertTrue(m.contains("model-00002-of-00002.safetensors"), m)
        _ = expectFormatError(missing) { _ = try openCheckpoint(folder: fixture("bad/missing_shard")) }

        let absent = fixture("bad/absent_tensor/model.safetensors.index.json")
        let a = expectFormatError(absent) { _ = try ShardedCheckpoint(index: absent) }
        XCTAssertTrue(a.contains("model.ghost.weight") && a.contains("model-00001-of-00002.safetensors"), a)
    }
}

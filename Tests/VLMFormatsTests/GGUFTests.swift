import VLMTestSupport
import XCTest
import Foundation
import VLMFormats
import VLMHome
import VLMTensor

final class GGUFTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/quant")
    static let typesFile = fixtures.appendingPathComponent("types.gguf").path

    static let typeNames: [String: GGMLType] = [
        "F32": .f32, "F16": .f16, "BF16": .bf16, "Q8_0": .q8_0, "Q4_0": .q4_0, "Q4_1": .q4_1,
        "Q5_0": .q5_0, "Q5_1": .q5_1, "Q2_K": .q2_K, "Q3_K": .q3_K, "Q4_K": .q4_K, "Q5_K": .q5_K, "Q6_K": .q6_K,
    ]

    // MARK: Reading the fixtures

    func testMetadataValues() throws {
        let g = try GGUFFile(path: Self.typesFile)
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.alignment, 32)
        let m = g.metadata
        XCTAssertEqual(m["general.architecture"]?.string, "llama")
        XCTAssertEqual(m["general.name"], .string("vlmsh quant fixture"))
        XCTAssertEqual(m["test.u8"], .uint8(200))
        XCTAssertEqual(m["test.i8"], .int8(-100))
        XCTAssertEqual(m["test.u16"], .uint16(60000))
        XCTAssertEqual(m["test.i16"], .int16(-30000))
        XCTAssertEqual(m["test.u32"], .uint32(4_000_000_000))
        XCTAssertEqual(m["test.i32"], .int32(-2_000_000_000))
        XCTAssertEqual(m["test.u64"], .uint64(18_000_000_000_000_000_000))
        XCTAssertEqual(m["test.i64"], .int64(-9_000_000_000_000_000_000))
        XCTAssertEqual(m["test.f32"], .float32(1.5))
        XCTAssertEqual(m["test.f64"], .float64(-2.25))
        XCTAssertEqual(m["test.true"], .bool(true))
        XCTAssertEqual(m["test.false"], .bool(false))
        XCTAssertEqual(m["test.string"]?.string, "héllo ✓")
        XCTAssertEqual(m["test.ints"]?.array?.compactMap(\.int), [1, -2, 3])
        XCTAssertEqual(m["test.u8s"], .array([.uint8(1), .uint8(2), .uint8(255)]))
        XCTAssertEqual(m["test.floats"]?.array?.compactMap(\.double), [0.5, -1.0])
        XCTAssertEqual(m["test.strings"]?.strings, ["a", "", "ü"])
        XCTAssertEqual(m["test.bools"], .array([.bool(true), .bool(false), .bool(true)]))
        XCTAssertEqual(m["test.nested"]?.array?.map { $0.array?.compactMap(\.int) ?? [] }, [[1, 2], [3]])
        XCTAssertEqual(m["test.nested_strings"]?.array?.map { $0.strings ?? [] }, [["x"], ["y", "z"]])
        XCTAssertEqual(m["llama.block_count"]?.int, 2)
        XCTAssertEqual(g.metadataKeys.first, "general.architecture")
        XCTAssertEqual(g.metadataKeys.count, m.count)
    }

    func testTensorInfosAndValues() throws {
        let g = try GGUFFile(path: Self.typesFile)
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("index.json"))) as! [String: Any]
        let tensors = index["tensors"] as! [[String: Any]]
        XCTAssertEqual(g.tensorInfos.map(\.name), tensors.map { $0["name"] as! String })
        XCTAssertEqual(g.weightNames.count, tensors.count)
        for t in tensors {
            let name = t["name"] as! String
            let type = try XCTUnwrap(Self.typeNames[t["type"] as! String])
            let shape = t["shape"] as! [Int]
            let info = try XCTUnwrap(g.tensorInfo(name))
            XCTAssertEqual(info.dims, shape.reversed(), name)
            XCTAssertEqual(info.type, type, name)
            XCTAssertEqual(info.offset % g.alignment, 0, name)
            XCTAssertEqual(info.byteCount, type.byteCount(elements: shape.reduce(1, *)), name)
            XCTAssertEqual(g.info(name), WeightInfo(shape: shape, type: type))

            let matrix = try g.matrix(name)
            XCTAssertEqual(matrix.rows, shape[0]); XCTAssertEqual(matrix.cols, shape[1]); XCTAssertEqual(matrix.type, type)
            // The matrix points at the same bytes the fixture saved separately.
            let blocks = try Data(contentsOf: Self.fixtures.appendingPathComponent(t["blocks"] as! String))
            XCTAssertTrue(blocks.withUnsafeBytes { memcmp($0.baseAddress!, matrix.data, blocks.count) == 0 }, name)

            let golden = try Data(contentsOf: Self.fixtures.appendingPathComponent(t["golden"] as! String))
            let floats = try g.floats(name)
            XCTAssertEqual(floats.shape, shape)
            var maxDiff: Float = 0
            golden.withUnsafeBytes { raw in
                for i in 0..<floats.count {
                    let want = raw.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
                    maxDiff = max(maxDiff, abs(floats.data[i] - want) / max(1, abs(want)))
                }
            }
            XCTAssertLessThanOrEqual(maxDiff, 1e-6, "\(name): max diff \(maxDiff)")
        }
        XCTAssertNil(g.info("missing"))
        XCTAssertThrowsError(try g.matrix("missing")) { XCTAssertTrue("\($0)".contains("no tensor named 'missing'")) }
    }

    func testCustomAlignmentAndShapes() throws {
        let g = try GGUFFile(path: Self.fixtures.appendingPathComponent("align64.gguf").path)
        XCTAssertEqual(g.alignment, 64)
        XCTAssertEqual(g.metadata["general.alignment"]?.int, 64)
        XCTAssertEqual(g.dataOffset % 64, 0)
        XCTAssertTrue(g.tensorInfos.allSatisfy { $0.offset % 64 == 0 })
        XCTAssertEqual(try g.floats("vec").array, [0, 1, 2, 3, 4])
        XCTAssertEqual(g.tensorInfo("cube")?.dims, [64, 3, 2])
        XCTAssertEqual(g.info("cube")?.shape, [2, 3, 64])
        let cube = try g.floats("cube")
        XCTAssertEqual(cube.shape, [2, 3, 64])
        XCTAssertEqual(cube.array, (0..<384).map(Float.init))
        // Viewed as [shape[0], product(rest)], as the WeightSource protocol specifies.
        let m = try g.matrix("cube")
        XCTAssertEqual([m.rows, m.cols], [2, 192])
        let vec = try g.matrix("vec")
        XCTAssertEqual([vec.rows, vec.cols], [5, 1])
    }

    func testVersion2ReadsTheSame() throws {
        let g = try load(patching: { $0.put32(at: 4, 2) })
        XCTAssertEqual(g.version, 2)
        XCTAssertEqual(g.tensorInfos.count, 13)
    }

    /// Opens the real model when it has been fetched (`scripts/fetch-model.sh`).
    func testSmolLM2Model() throws {
        let path = try installedDefaultModel()
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.tensorInfos.count, 272)
        XCTAssertEqual(g.metadata["general.architecture"]?.string, "llama")
        XCTAssertEqual(g.metadata["llama.block_count"]?.int, 30)
        XCTAssertEqual(g.metadata["llama.embedding_length"]?.int, 576)
        XCTAssertEqual(g.metadata["tokenizer.ggml.tokens"]?.array?.count, 49152)
        let embed = try XCTUnwrap(g.tensorInfo("token_embd.weight"))
        XCTAssertEqual(embed.type, .q8_0)
        XCTAssertEqual(embed.dims, [576, 49152])
        XCTAssertEqual(Set(g.tensorInfos.map(\.type)), [.q4_1, .f32, .q8_0])

        // matVec on real weights agrees with the plain path; matVecInteger (8-bit activations)
        // within Σ |w_i|·d_b/2, d_b = max|x| / 127 of x's block.
        for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"] {
            let m = try g.matrix(name)
            let x = (0..<m.cols).map { Float(($0 * 37) % 101) / 50 - 1 }
            var y = [Float](repeating: 0, count: m.rows), yInteger = y, yRef = y
            m.matVec(x, &y)
            m.matVecInteger(x, &yInteger)
            m.matVecReference(x, &yRef)
            let worst = zip(y, yRef).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-4, name)

            XCTAssertTrue(IntegerDot.supports(m.type))
            let per = IntegerDot.activationBlockElements(m.type)
            let halfStep = (0..<m.cols).map { c in x[(c / per * per)..<(c / per * per + per)].map(abs).max()! / 127 / 2 }
            var row = [Float](repeating: 0, count: m.cols), worstShare: Float = 0
            for r in 0..<m.rows {
                m.dequantizeRow(r, into: &row)
                let bound = zip(row, halfStep).reduce(Float(0)) { $0 + abs($1.0) * $1.1 }
                let error = abs(yInteger[r] - yRef[r])
                XCTAssertLessThanOrEqual(error, bound + 1e-4 * max(1, abs(yRef[r])), "\(name) row \(r)")
                worstShare = max(worstShare, error / bound)
            }
            print(String(format: "%@: 8-bit activations use %.1f%% of their error bound at most", name, 100 * worstShare))
        }
    }

    /// One decode step's worth of matVecs over every matrix of the real model (token_embd doubles
    /// as the tied output projection). Prints GB/s only.
    func testSmolLM2MatVecSweep() throws {
        let path = try installedDefaultModel()
        let g = try GGUFFile(path: path)
        let matrices = try g.tensorInfos.filter { $0.dims.count == 2 }.map { try g.matrix($0.name) }
        let x = [Float](repeating: 0.25, count: matrices.map(\.cols).max()!)
        var y = [Float](repeating: 0, count: matrices.map(\.rows).max()!)
        let bytes = Double(matrices.reduce(0) { $0 + $1.rows * $1.rowBytes })
        for m in matrices { m.matVec(x, &y) }
        let steps = 10
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<steps { for m in matrices { m.matVec(x, &y) } }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        print(String(format: "SmolLM2 matVec sweep: %d matrices, %.1f MB, %.2f ms per step, %.1f GB/s",
                     matrices.count, bytes / 1e6, seconds / Double(steps) * 1e3, bytes * Double(steps) / seconds / 1e9))
    }

    // MARK: Corrupt inputs: each must fail with one FormatError naming the file and the problem

    func testTruncatedHeader() {
        expectError(containing: "truncated") { $0.bytes.removeSubrange(100...) }
        expectError(containing: "truncated") { $0.bytes.removeSubrange(10...) }
        expectError(containing: "truncated file") { $0.bytes.removeSubrange(700...) }
    }

    func testTruncatedData() {
        // The writer pads after the last tensor too, so cut into its data.
        expectError(containing: "tensor 't.q6_k' data (1260 bytes at offset 22528) runs past end of file") { $0.bytes.removeLast(40) }
    }

    func testEmptyFile() {
        expectError(containing: "empty") { $0.bytes.removeAll() }
    }

    func testWrongMagic() {
        expectError(containing: "bad magic") { $0.bytes[0] = UInt8(ascii: "X") }
    }

    func testUnsupportedVersions() {
        expectError(containing: "unsupported GGUF version 7") { $0.put32(at: 4, 7) }
        expectError(containing: "version 1 is not supported") { $0.put32(at: 4, 1) }
        expectError(containing: "big-endian GGUF files are not supported") { $0.put32(at: 4, UInt32(3).byteSwapped) }
    }

    func testAbsurdCounts() {
        expectError(containing: "tensor count") { $0.put64(at: 8, 1 << 40) }
        expectError(containing: "metadata count") { $0.put64(at: 16, UInt64.max) }
    }

    func testAbsurdStringLength() {
        // The first metadata key's length.
        expectError(containing: "metadata key length") { $0.put64(at: 24, 1 << 50) }
        // A corrupt key length inside the file (14 MB) used to become a 14 MB key quoted in the
        // message; names are short, so it is caught at the length.
        expectError(containing: "metadata key length 14000000 at offset 24 is longer than any name (at most 1024 bytes)") {
            $0.put64(at: 24, 14_000_000)
        }
        // Names are printable: a control character means the length or the bytes are wrong.
        expectError(containing: "metadata key at offset 24 holds control characters") { $0.put64(at: 24, 40) }
        expectError(containing: "string value of 'test.string' length") { f in
            f.put64(at: f.endOfKey("test.string") + 4, UInt64.max)
        }
    }

    func testAbsurdArrayLength() {
        expectError(containing: "array length of 'test.ints'") { f in
            f.put64(at: f.endOfKey("test.ints") + 8, 1 << 60)
        }
    }

    func testUnknownValueType() {
        expectError(containing: "unknown metadata value type 99 for key 'test.u8'") { f in
            f.put32(at: f.endOfKey("test.u8"), 99)
        }
        expectError(containing: "unknown metadata value type 77 in array 'test.ints'") { f in
            f.put32(at: f.endOfKey("test.ints") + 4, 77)
        }
    }

    func testUnknownTensorType() {
        // Tensor record: name, n_dims (u32), dims (2 × u64), type (u32), offset (u64).
        expectError(containing: "unknown tensor type 99 for tensor 't.f32'") { f in
            f.put32(at: f.endOfKey("t.f32") + 4 + 16, 99)
        }
    }

    func testOffsetPastEnd() {
        expectError(containing: "tensor 't.q6_k' data") { f in
            f.put64(at: f.endOfKey("t.q6_k") + 4 + 16 + 4, 1 << 40)
        }
        expectError(containing: "past end of file") { f in
            f.put64(at: f.endOfKey("t.q6_k") + 4 + 16 + 4, UInt64.max)
        }
    }

    func testMisalignedOffset() {
        expectError(containing: "tensor 't.f16' offset 6148 is misaligned (alignment 32)") { f in
            f.put64(at: f.endOfKey("t.f16") + 4 + 16 + 4, 6148)
        }
    }

    func testDuplicateTensorName() {
        expectError(containing: "duplicate tensor name 't.f32'") { f in
            let end = f.endOfKey("t.f16")
            f.bytes.replaceSubrange((end - 5)..<end, with: Array("t.f32".utf8))
        }
    }

    func testDimsNotWholeBlocks() {
        expectError(containing: "tensor 't.q4_0' has ne0 = 500, not a whole number of Q4_0 blocks") { f in
            f.put64(at: f.endOfKey("t.q4_0") + 4, 500)
        }
    }

    func testTooManyDims() {
        expectError(containing: "tensor 't.f32' has 9 dimensions") { f in
            f.put32(at: f.endOfKey("t.f32"), 9)
        }
    }

    func testBadAlignmentValue() throws {
        // align64.gguf stores general.alignment as a u32; zero is not a power of two.
        let url = Self.fixtures.appendingPathComponent("align64.gguf")
        var f = Bytes(bytes: Array(try Data(contentsOf: url)))
        f.put32(at: f.endOfKey("general.alignment") + 4, 0)
        let path = try write(f)
        XCTAssertThrowsError(try GGUFFile(path: path)) { error in
            XCTAssertEqual((error as? FormatError)?.file, path)
            XCTAssertTrue("\(error)".contains("general.alignment must be a power of two"), "\(error)")
        }
    }

    /// Random byte damage anywhere in the header must give a FormatError or a file whose every
    /// tensor decodes within bounds; never a crash or a hang.
    func testRandomCorruptionNeverCrashes() throws {
        let original = Array(try Data(contentsOf: URL(fileURLWithPath: Self.typesFile)))
        let headerEnd = try GGUFFile(path: Self.typesFile).dataOffset
        var rng = SystemRandomNumberGenerator()
        var failures = 0, successes = 0
        for _ in 0..<300 {
            var f = Bytes(bytes: original)
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let at = Int.random(in: 0..<headerEnd, using: &rng)
                f.bytes[at] = Bool.random(using: &rng) ? UInt8.random(in: 0...255, using: &rng) : [0, 0xFF, 0x7F, 0x80].randomElement(using: &rng)!
            }
            if Bool.random(using: &rng) { f.bytes.removeLast(Int.random(in: 0..<original.count, using: &rng)) }
            let path = try write(f)
            do {
                let g = try GGUFFile(path: path)
                for name in g.weightNames { _ = try g.floats(name) }
                successes += 1
            } catch let e as FormatError {
                XCTAssertEqual(e.file, path)
                failures += 1
            }
        }
        XCTAssertEqual(failures + successes, 300)
    }

    // MARK: Helpers

    struct Bytes {
        var bytes: [UInt8]
        mutating func put32(at offset: Int, _ v: UInt32) {
            withUnsafeBytes(of: v.littleEndian) { bytes.replaceSubrange(offset..<(offset + 4), with: $0) }
        }
        mutating func put64(at offset: Int, _ v: UInt64) {
            withUnsafeBytes(of: v.littleEndian) { bytes.replaceSubrange(offset..<(offset + 8), with: $0) }
        }
        /// Offset just past a length-prefixed string (a metadata key or tensor name).
        func endOfKey(_ key: String) -> Int {
            var needle: [UInt8] = []
            withUnsafeBytes(of: UInt64(key.utf8.count).littleEndian) { needle += $0 }
            needle += Array(key.utf8)
            for i in 0...(bytes.count - needle.count) where bytes[i..<(i + needle.count)].elementsEqual(needle) {
                return i + needle.count
            }
            XCTFail("key \(key) not found")
            return 0
        }
    }

    func write(_ f: Bytes) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-gguf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("corrupt.gguf")
        try Data(f.bytes).write(to: url)
        return url.path
    }

    func load(patching patch: (inout Bytes) -> Void) throws -> GGUFFile {
        var f = Bytes(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: Self.typesFile))))
        patch(&f)
        return try GGUFFile(path: try write(f))
    }

    func expectError(containing message: String, file: StaticString = #filePath, line: UInt = #line, _ patch: (inout Bytes) -> Void) {
        do {
            var f = Bytes(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: Self.typesFile))))
            patch(&f)
            let path = try write(f)
            XCTAssertThrowsError(try GGUFFile(path: path), file: file, line: line) { error in
                guard let e = error as? FormatError else { return XCTFail("not a FormatError: \(error)", file: file, line: line) }
                XCTAssertEqual(e.file, path, file: file, line: line)
                XCTAssertTrue(e.description.hasPrefix(path + ": "), e.description, file: file, line: line)
                XCTAssertTrue(e.description.contains(message), "\(e.description) does not mention '\(message)'", file: file, line: line)
            }
        } catch {
            XCTFail("\(error)", file: file, line: line)
        }
    }
}

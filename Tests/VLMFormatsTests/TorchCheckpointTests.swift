import Foundation
@testable import VLMFormats
import VLMTensor
import XCTest

/// Fixtures come from Tests/Fixtures/gen_torch_bin.py (torch.save's own output, and hand-made
/// archives whose pickle lies or would run a command).
private let fixtures = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/data")

private func fixture(_ name: String) -> String { fixtures.appendingPathComponent("torch_bin/" + name).path }

/// What the hostile pickles would create if anything in them ran.
private let marker = "/tmp/vlmsh-torch-pickle-ran"

final class TorchCheckpointTests: XCTestCase {
    private struct GoldenTensor: Decodable { let shape: [Int]; let values: [Double] }

    /// Views of one storage (a transpose, slices at offsets), float16, bfloat16, a 0-d tensor and a
    /// Parameter read back as torch holds them; the int64 buffer is listed but not loadable and
    /// the non-tensor value is no weight. Protocol 2 and protocol 4 pickles alike, and the same
    /// records in a zip64 archive (unaligned there, so read through copies).
    func testViewsReadLikeTorch() throws {
        let golden = try JSONDecoder().decode([String: GoldenTensor].self, from: Data(contentsOf: URL(fileURLWithPath: fixture("views.json"))))
        for name in ["views.bin", "views-p4.bin", "views-zip64.bin"] {
            let file = try TorchCheckpointFile(path: fixture(name))
            XCTAssertEqual(file.weightNames, golden.keys.sorted(), name)
            XCTAssertEqual(file.allTensorNames, (golden.keys + ["position_ids"]).sorted(), name)
            XCTAssertEqual(file.dtype("position_ids"), "I64")
            XCTAssertEqual(file.dtype("half"), "F16")
            XCTAssertEqual(file.dtype("bf16"), "BF16")
            XCTAssertNil(file.info("position_ids"))
            XCTAssertThrowsError(try file.floats("position_ids"))
            for (tensor, g) in golden {
                let t = try file.floats(tensor)
                XCTAssertEqual(t.shape, g.shape, "\(name) \(tensor)")
                XCTAssertEqual(t.array, g.values.map { Float($0) }, "\(name) \(tensor)")
                let m = try file.matrix(tensor)
                XCTAssertEqual(m.rows * m.cols, g.values.count, "\(name) \(tensor)")
            }
            // Stored row-major and aligned (torch aligns records to 64 bytes): the matrix is the
            // mapping itself; a transpose is gathered into a copy.
            if name != "views-zip64.bin" { XCTAssertTrue(try file.matrix("rows").owner is MappedFile, name) }
            XCTAssertFalse(try file.matrix("transposed").owner is MappedFile)
            let transposed = try file.matrix("transposed")
            XCTAssertEqual(transposed.data.load(fromByteOffset: 4, as: Float.self), Float(6) / 7)   // base[1][0]
        }
    }

    /// transformers' sharded `.bin` checkpoint holds the same tensors as the safetensors copy.
    func testShardedBinHoldsTheSafetensorsTensors() throws {
        let bin = try openCheckpoint(folder: fixture("clip-llama-bin"))
        XCTAssertTrue(bin is ShardedCheckpoint)
        XCTAssertGreaterThan((bin as! ShardedCheckpoint).shards.count, 1)
        let safetensors = try openCheckpoint(folder: fixtures.appendingPathComponent("llava/clip-llama").path)
        XCTAssertEqual(bin.weightNames, safetensors.weightNames)
        for name in safetensors.weightNames {
            XCTAssertEqual(bin.info(name), safetensors.info(name), name)
            XCTAssertEqual(try bin.floats(name).array, try safetensors.floats(name).array, name)
        }
        let single = try openCheckpoint(folder: fixture("llama-bin"))
        XCTAssertTrue(single is TorchCheckpointFile)
    }

    /// What vlmsh writes, torch.save's layout: read back equal, data 64-byte aligned in the file.
    func testWriterRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-torch-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = Tensor(shape: [3, 5], zeroed: false), b = Tensor(shape: [7], zeroed: false), c = Tensor(shape: [300, 2], zeroed: false)
        for (i, t) in [a, b, c].enumerated() { for j in 0..<t.count { t.data[j] = Float(j) * 0.37 - Float(i) * 11 } }
        let path = dir + "/mm_projector.bin"
        try TorchCheckpointWriter.write([("model.mm_projector.0.weight", a), ("model.mm_projector.0.bias", b), ("model.mm_projector.2.weight", c)], to: path)
        let file = try TorchCheckpointFile(path: path)
        XCTAssertEqual(file.weightNames, ["model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.weight"])
        for (name, t) in [("model.mm_projector.0.weight", a), ("model.mm_projector.0.bias", b), ("model.mm_projector.2.weight", c)] {
            XCTAssertEqual(try file.floats(name).array, t.array, name)
            XCTAssertEqual(try file.floats(name).shape, t.shape, name)
            let m = try file.matrix(name)
            XCTAssertTrue(m.owner is MappedFile, name)
            XCTAssertEqual(Int(bitPattern: m.data) % 64, 0, "\(name): data not 64-byte aligned")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["mm_projector.bin"])
        _ = expectFormatError(path) { try TorchCheckpointWriter.write([("x", a), ("x", b)], to: path) }
        XCTAssertEqual(try TorchCheckpointFile(path: path).weightNames.count, 3, "a failed write leaves the old file")
    }

    /// Pickles that would run a command name the refused global, and nothing runs.
    func testHostilePicklesAreRefusedByName() throws {
        try? FileManager.default.removeItem(atPath: marker)
        for (name, global) in [("evil-system.bin", "posix.system"), ("evil-p4.bin", "posix.system"), ("evil-eval.bin", "builtins.eval")] {
            let path = fixture(name)
            let message = expectFormatError(path) { _ = try TorchCheckpointFile(path: path) }
            XCTAssertTrue(message.contains("refusing global '\(global)'"), message)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }

    /// Archives whose pickle lies about its tensors, or that are not what vlmsh reads: one error each.
    func testLyingArchivesAreRefused() throws {
        let cases = [
            ("lie-stride.bin", "reaches element"),
            ("lie-offset.bin", "reaches element"),
            ("lie-count.bin", "holds 24 bytes but 1000 F32 elements need 4000"),
            ("lie-record.bin", "data/9 is missing"),
            ("lie-storage-type.bin", "refusing global 'torch.ComplexFloatStorage'"),
            ("lie-broadcast.bin", "more elements than its storage"),
            ("lie-cut-pickle.bin", "truncated"),
            ("compressed.bin", "compressed"),
            ("legacy.bin", "legacy torch.save format"),
        ]
        for (name, needle) in cases {
            let path = fixture(name)
            let message = expectFormatError(path) { _ = try TorchCheckpointFile(path: path) }
            XCTAssertTrue(message.contains(needle), "\(name): \(message)")
        }
        let safetensors = fixtures.appendingPathComponent("llava/clip-llama/model.safetensors").path
        XCTAssertTrue(expectFormatError(safetensors) { _ = try TorchCheckpointFile(path: safetensors) }.contains("not a PyTorch checkpoint"))
    }

    /// The unpickler alone on hand-written opcodes: what it refuses, and that nesting a hostile
    /// pickle piles up (tuples, lists chained a million deep, a list holding itself) is an error or
    /// is freed without recursion.
    func testUnpicklerRefusesMalformedOpcodes() throws {
        func load(_ bytes: [UInt8]) throws -> String {
            try bytes.withUnsafeBytes { raw in try TorchUnpickler.load(raw) { $0.kind } }
        }
        func refusal(_ bytes: [UInt8], line: UInt = #line) -> String {
            do { _ = try load(bytes); XCTFail("accepted", line: line) } catch { return "\(error)" }
            return ""
        }
        XCTAssertEqual(try load([0x80, 0x02, 0x7D, 0x2E]), "dict")
        XCTAssertTrue(refusal([0x80, 0x02, 0x7D]).contains("truncated"))
        XCTAssertTrue(refusal([0x80, 0x02, 0x2E]).contains("stack"))
        XCTAssertTrue(refusal([0x80, 0x02, 0x85, 0x2E]).contains("underflow"))
        XCTAssertTrue(refusal([0x80, 0x02, 0x68, 0x05, 0x2E]).contains("memo slot 5"))
        XCTAssertTrue(refusal([0x80, 0x02, 0x69, 0x2E]).contains("opcode 0x69"))   // INST
        XCTAssertTrue(refusal([0x80, 0x02, 0x81, 0x2E]).contains("opcode 0x81"))   // NEWOBJ
        XCTAssertTrue(refusal([0x80, 0x02, 0x28, 0x4B, 0x01, 0x4B, 0x02, 0x75, 0x2E]).contains("SETITEM"))   // no dict below
        XCTAssertTrue(refusal([0x80, 0x02, 0x63] + Array("os\nsystem\n".utf8) + [0x2E]).contains("refusing global 'os.system'"))
        var global: [UInt8] = [0x80, 0x02, 0x63]
        global += Array("collections\nOrderedDict\n".utf8) + [0x4B, 0x01, 0x85, 0x52, 0x2E]
        XCTAssertTrue(refusal(global).contains("OrderedDict with arguments"))

        let depth = 1_000_000
        let tuples: [UInt8] = [0x80, 0x02, 0x29] + [UInt8](repeating: 0x85, count: depth) + [0x2E]
        XCTAssertTrue(refusal(tuples).contains("nests tuples"))
        var lists: [UInt8] = [0x80, 0x02, 0x5D]
        for _ in 0..<depth { lists += [0x5D, 0x71, 0x01, 0x61, 0x30, 0x68, 0x01] }   // ] put1 append pop get1
        XCTAssertEqual(try load(lists + [0x2E]), "list")
        XCTAssertEqual(try load([0x80, 0x02, 0x5D, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2E]), "list")   // holds itself
        var marks: [UInt8] = [0x80, 0x02] + [UInt8](repeating: 0x28, count: depth)
        marks.append(0x2E)
        XCTAssertTrue(refusal(marks).contains("nests more than"))
    }

    /// A checkpoint cut anywhere, or with a byte of its pickle or directory flipped, is one error
    /// (or, when the damage misses everything read, the same tensors) — never a trap.
    func testDamagedCheckpointsNeverTrap() throws {
        let good = try Data(contentsOf: URL(fileURLWithPath: fixture("views.bin")))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-torch-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/damaged.bin"
        for cut in Set((0..<64).map { $0 } + (1...64).map { good.count * $0 / 65 }) where cut < good.count {
            try good.prefix(cut).write(to: URL(fileURLWithPath: path))
            _ = expectFormatError(path) { _ = try TorchCheckpointFile(path: path) }
        }
        for offset in stride(from: 0, to: good.count, by: max(1, good.count / 500)) {
            var bytes = good
            bytes[offset] ^= 0xFF
            try bytes.write(to: URL(fileURLWithPath: path))
            do {
                let f = try TorchCheckpointFile(path: path)
                for name in f.weightNames { _ = try f.floats(name) }
            } catch is FormatError {
            } catch {
                XCTFail("flip at \(offset): \(error)")
            }
        }
    }
}

import Foundation
import VLMFormats
import VLMTensor
import XCTest

final class SafetensorsWriterTests: XCTestCase {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-stw-\(getpid())")

    override func setUp() {
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    func testRoundTrip() throws {
        let a = Tensor(shape: [2, 3], values: [1, -2.5, 3.25, 0, 65504, -1e-3])
        let b = Tensor(shape: [5], values: [0.1, 0.2, 0.3, -7, 1.5])
        let c = Tensor(shape: [1, 1, 3], values: [3.140625, -2, 100])
        let path = folder.appendingPathComponent("round.safetensors").path
        try SafetensorsWriter.write([("a", a, .f32), ("b", b, .f16), ("c", c, .bf16)],
                                    metadata: ["format": "pt", "note": "vlmsh"], to: path)
        let raw = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = raw.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self).littleEndian }
        XCTAssertEqual((8 + headerLength) % 8, 0, "data must start 8-byte aligned")

        let file = try SafetensorsFile(path: path)
        XCTAssertEqual(file.metadata, ["format": "pt", "note": "vlmsh"])
        XCTAssertEqual(file.allTensorNames, ["a", "b", "c"])
        XCTAssertEqual(file.dtype("a"), "F32"); XCTAssertEqual(file.dtype("b"), "F16"); XCTAssertEqual(file.dtype("c"), "BF16")
        XCTAssertEqual(try file.floats("a").array, a.array)
        XCTAssertEqual(try file.floats("a").shape, [2, 3])
        XCTAssertEqual(try file.floats("b").array, b.array.map { Float(Float16($0)) })
        XCTAssertEqual(try file.floats("c").array, [3.140625, -2, 100])
        XCTAssertEqual(try file.floats("c").shape, [1, 1, 3])
    }

    func testFailedWriteLeavesNothingAtTarget() throws {
        let path = folder.appendingPathComponent("failed.safetensors").path
        let t = Tensor(shape: [2], values: [1, 2])
        // Duplicate names and unsupported dtypes are refused before anything is written.
        XCTAssertThrowsError(try SafetensorsWriter.write([("x", t, .f32), ("x", t, .f32)], metadata: [:], to: path))
        XCTAssertThrowsError(try SafetensorsWriter.write([("q", t, .q4_0)], metadata: [:], to: path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        // A write that fails midway (no room on /dev/full is not portable, so: target is a folder)
        // must not leave a temp file behind nor touch the target.
        let dirTarget = folder.appendingPathComponent("is-a-folder").path
        try FileManager.default.createDirectory(atPath: dirTarget, withIntermediateDirectories: true)
        XCTAssertThrowsError(try SafetensorsWriter.write([("x", t, .f32)], metadata: [:], to: dirTarget)) {
            XCTAssertTrue($0 is FormatError)
        }
        var isDir: ObjCBool = false
        XCTAssertTrue(FileManager.default.fileExists(atPath: dirTarget, isDirectory: &isDir) && isDir.boolValue)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: folder.path).filter { $0.hasSuffix(".tmp") }
        XCTAssertEqual(leftovers, [])
        // Replacing an existing file is all-or-nothing too: the old one survives a refused write.
        let existing = folder.appendingPathComponent("keep.safetensors").path
        try SafetensorsWriter.write([("old", t, .f32)], metadata: [:], to: existing)
        XCTAssertThrowsError(try SafetensorsWriter.write([("y", t, .q8_0)], metadata: [:], to: existing))
        XCTAssertEqual(try SafetensorsFile(path: existing).allTensorNames, ["old"])
    }
}

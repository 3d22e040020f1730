import Foundation
@testable import VLMFormats
import VLMTensor
import XCTest

/// The interleaved rows of a large weights file kept in `$VLMSH_HOME/cache`: the first load
/// writes them, a later one maps them, and both multiply as freshly interleaved rows do.
final class InterleavedRowsCacheTests: XCTestCase {
    var dir = ""
    let rows = 64, cols = 512, offset = 4096
    var saved: (minimum: Int, environment: [String: String], activations: ActivationPrecision) = (0, [:], .f32)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-interleaved-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        saved = (InterleavedRowsCache.minimumFileBytes, InterleavedRowsCache.environment, QuantizedMatrix.activations)
        InterleavedRowsCache.minimumFileBytes = 0
        InterleavedRowsCache.environment = ["VLMSH_HOME": dir + "/home"]
        QuantizedMatrix.activations = .int8
    }

    override func tearDownWithError() throws {
        (InterleavedRowsCache.minimumFileBytes, InterleavedRowsCache.environment, QuantizedMatrix.activations) = saved
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// A file with `rows` Q4_0 rows of `cols` at `offset`: random quants, small finite scales.
    func writeWeights(_ path: String, seed: UInt64) throws {
        var state = seed
        func next() -> UInt64 { state = state &* 6364136223846793005 &+ 1442695040888963407; return state >> 33 }
        var bytes = [UInt8](repeating: 0, count: offset)
        for _ in 0..<(rows * cols / 32) {
            let scale = Float16(Float(next() % 1000 + 1) / 100_000).bitPattern
            bytes += [UInt8(scale & 0xff), UInt8(scale >> 8)] + (0..<16).map { _ in UInt8(next() & 0xff) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func matrix(_ file: MappedFile) -> QuantizedMatrix {
        QuantizedMatrix(type: .q4_0, rows: rows, cols: cols, data: file.base + offset, owner: file)
    }

    /// The product through rows interleaved into anonymous memory (no owner to ask).
    func fresh(_ file: MappedFile) -> [Float] {
        product(QuantizedMatrix(type: .q4_0, rows: rows, cols: cols, data: file.base + offset, owner: nil).interleavedForIntegerProducts())
    }

    /// y = W·x through the integer kernels on `m` (interleaved when it is).
    func product(_ m: QuantizedMatrix) -> [Float] {
        let x = (0..<cols).map { Float(($0 * 7919) % 97) / 50 - 1 }
        var y = [Float](repeating: 0, count: rows)
        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { m.matVecInteger(xp.baseAddress!, $0.baseAddress!) } }
        return y
    }

    func cacheFiles() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: dir + "/home/cache")) ?? []).sorted()
    }

    /// A load of `path` that interleaves the matrix and commits (waiting for the write).
    func loadAndCommit(_ path: String) throws -> [Float] {
        let file = try MappedFile(path: path)
        let product = product(matrix(file).interleavedForIntegerProducts())
        file.commitInterleavedRows()
        InterleavedRowsCache.waitForWrites()
        return product
    }

    func testFirstLoadWritesTheCacheAndLaterLoadsMapIt() throws {
        let path = dir + "/model.gguf"
        try writeWeights(path, seed: 1)
        let expected = fresh(try MappedFile(path: path))

        // First load: interleaved in memory; the cache is written only once the model is built.
        let file = try MappedFile(path: path)
        let built = matrix(file).interleavedForIntegerProducts()
        XCTAssertNotNil(built.interleaved)
        XCTAssertEqual(product(built), expected)
        XCTAssertEqual(cacheFiles(), [])
        file.commitInterleavedRows()
        InterleavedRowsCache.waitForWrites()
        XCTAssertEqual(cacheFiles().map { ($0 as NSString).pathExtension }, ["json", "rows"])

        // A later load maps the copies: the same products.
        let again = try MappedFile(path: path)
        let m = matrix(again)
        XCTAssertNotNil(again.interleavedRows(of: m.data, bytes: rows * m.rowBytes))
        XCTAssertEqual(product(m.interleavedForIntegerProducts()), expected)
        XCTAssertNil(again.interleavedRows(of: m.data + m.rowBytes, bytes: m.rowBytes), "rows the cache does not hold")

        // Off, the copy is made in anonymous memory as before.
        InterleavedRowsCache.environment["VLMSH_CACHE"] = "off"
        let off = try MappedFile(path: path)
        XCTAssertNil(off.interleavedRows(of: off.base + offset, bytes: rows * m.rowBytes))
        XCTAssertEqual(product(matrix(off).interleavedForIntegerProducts()), expected)
    }

    func testAChangedFileIsRebuiltAndTheOldCacheRemoved() throws {
        let path = dir + "/model.gguf"
        try writeWeights(path, seed: 1)
        _ = try loadAndCommit(path)
        let first = cacheFiles()
        XCTAssertEqual(first.count, 2)

        // Rewritten with other weights of the same size, at another modification time.
        try writeWeights(path, seed: 2)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000_000_000)], ofItemAtPath: path)
        let changed = try MappedFile(path: path)
        XCTAssertNil(changed.interleavedRows(of: changed.base + offset, bytes: rows * matrix(changed).rowBytes), "not the old file's rows")
        XCTAssertEqual(try loadAndCommit(path), fresh(changed))
        XCTAssertEqual(cacheFiles().count, 2)
        XCTAssertTrue(Set(cacheFiles()).isDisjoint(with: first), "the old cache is gone: \(cacheFiles())")
    }

    /// An index naming rows past the end of the rows file is not used; the next commit rewrites it.
    func testABadIndexIsNotRead() throws {
        let path = dir + "/model.gguf"
        try writeWeights(path, seed: 3)
        let expected = try loadAndCommit(path)
        let index = try XCTUnwrap(cacheFiles().first { $0.hasSuffix(".json") })
        let indexPath = dir + "/home/cache/" + index
        var object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: indexPath))) as? [String: Any])
        var entries = try XCTUnwrap(object["entries"] as? [[Int]])
        entries[0][1] = 1 << 40
        object["entries"] = entries
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: indexPath))
        let reopened = try MappedFile(path: path)
        XCTAssertNil(reopened.interleavedRows(of: reopened.base + offset, bytes: rows * matrix(reopened).rowBytes))
        XCTAssertEqual(try loadAndCommit(path), expected)
        let again = try MappedFile(path: path)
        XCTAssertNotNil(again.interleavedRows(of: again.base + offset, bytes: rows * matrix(again).rowBytes), "rewritten")
    }

    /// A load that never commits (the model failed to build) writes nothing.
    func testAnUncommittedLoadWritesNothing() throws {
        let path = dir + "/model.gguf"
        try writeWeights(path, seed: 4)
        var file: MappedFile? = try MappedFile(path: path)
        XCTAssertNotNil(matrix(file!).interleavedForIntegerProducts().interleaved)
        file = nil
        InterleavedRowsCache.waitForWrites()
        XCTAssertEqual(cacheFiles(), [])
    }
}

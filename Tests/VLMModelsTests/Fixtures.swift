import Foundation
import VLMAutodiff
import VLMHome
import VLMModels
import VLMTestSupport
import XCTest

/// Paths of committed fixtures and the real default model.
enum Fixtures {
    static let data = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data")

    static func json(_ relative: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Fixtures.data.appendingPathComponent(relative))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The default model from the store; `make test` fetches it and sets VLMSH_REQUIRE_MODEL so
    /// its absence fails there, while a bare `swift test` skips.
    static func defaultModel() throws -> String { try installedDefaultModel() }

    /// A golden array reference (`{"offset": bytes, "shape": […]}` into a little-endian Float32
    /// file the generators write) → its shape and values.
    static func array(_ ref: Any?, in data: Data) throws -> (shape: [Int], values: [Float]) {
        let r = try XCTUnwrap(ref as? [String: Any])
        let offset = try XCTUnwrap(r["offset"] as? Int), shape = try XCTUnwrap(r["shape"] as? [Int])
        let count = shape.reduce(1, *)
        var values = [Float](repeating: 0, count: count)
        _ = values.withUnsafeMutableBytes { data.copyBytes(to: $0, from: offset..<(offset + count * 4)) }
        return (shape, values)
    }
}

/// Largest difference relative to the largest reference magnitude.
func relativeDifference(_ a: [Float], _ b: [Float]) -> Float {
    maxDifference(a, b) / max(b.map(abs).max() ?? 0, 1e-12)
}

/// The first index of the largest value.
func argmax(_ x: UnsafeBufferPointer<Float>) -> Int {
    var best = 0
    for i in 1..<x.count where x[i] > x[best] { best = i }
    return best
}

/// `count` greedy ids after a prompt whose last logits are `logits`, each fed back through `decoder`.
func greedyIDs(after logits: UnsafeBufferPointer<Float>, decoder: LlamaModel, cache: KVCache, count: Int) throws -> [Int] {
    var logits = logits, ids: [Int] = []
    for _ in 0..<count {
        ids.append(argmax(logits))
        logits = try decoder.forward(tokens: [ids.last!], cache: cache)
    }
    return ids
}

/// Largest absolute difference, for failure messages.
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

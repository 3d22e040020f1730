import Foundation
import VLMHome
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
}

/// Largest absolute difference, for failure messages.
func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

import Foundation
import VLMHome
import XCTest

/// Helpers every test target shares.

/// SmolLM2 from the model store (`$VLMSH_HOME/models`). `make test` sets VLMSH_REQUIRE_MODEL, so a
/// missing model fails there, while a bare `swift test` skips.
public func installedDefaultModel() throws -> String {
    let path = VLMHome.models() + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    if FileManager.default.fileExists(atPath: path) { return path }
    if ProcessInfo.processInfo.environment["VLMSH_REQUIRE_MODEL"] == "1" {
        XCTFail("default model missing at \(path) (make model)")
    }
    throw XCTSkip("default model not installed at \(path); run `make model`")
}

import Foundation
import VLMFormats
import VLMHome
import VLMTestSupport
import XCTest

/// `--max-memory`: what a model, a sequence and a training batch need is computed before it is
/// allocated and refused in one line when it would not fit; quantized weights with a broken
/// block scale are refused at load like broken float weights.
extension HostileInputTests {
    func testMaxMemoryRefusesAModelThatDoesNotFit() throws {
        let model = try installedDefaultModel()
        // SmolLM2's tensors are about 90 MB.
        try assertRefused(model: model, extra: ["--max-memory", "60M"],
                          mentions: ["the weights in \(model) (", "tensors) would need about 9", "MB, more than the 63 MB limit", "(--max-memory)"])
    }

    func testMaxMemoryRefusesAPromptWhoseActivationsDoNotFit() throws {
        let model = try installedDefaultModel()
        let long = String(repeating: "hello ", count: 4000)
        // The weights fit in 400 MB; 4000 positions of activations, scores and cache do not.
        try assertRefused(model: model, extra: ["--max-memory", "400M", "--raw", "--prompt", long],
                          mentions: ["a forward pass over 400", "positions after 0 would need about", "(--max-memory)"])
        // The environment sets the same limit for every command (the REPL and scripts too).
        let r = try run(["generate", "--model", model, "--raw", "--prompt", long, "--max-tokens", "1"],
                        environment: ["VLMSH_MAX_MEMORY": "400M"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("a forward pass over 400"), r.stderr)
        // And a short prompt under the same limit runs.
        let ok = try run(["generate", "--model", model, "--prompt", "hi", "--max-tokens", "2", "--max-memory", "400M"])
        XCTAssertEqual(ok.status, 0, ok.stderr)
    }

    func testMaxMemoryIsAUsageErrorWhenUnreadable() throws {
        let r = try run(["generate", "--prompt", "hi", "--max-memory", "lots"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--max-memory"), r.stderr)
        let env = try run(["generate", "--prompt", "hi"], environment: ["VLMSH_MAX_MEMORY": "lots"])
        XCTAssertEqual(env.status, 1)
        XCTAssertTrue(env.stderr.contains("VLMSH_MAX_MEMORY=lots is not a size"), env.stderr)
        XCTAssertEqual(env.stderr.split(separator: "\n").count, 1, env.stderr)
    }

    func testNonFiniteBlockScaleOfAQuantizedWeightIsRefusedByName() throws {
        let name = "blk.3.ffn_up.weight"
        let path = try patchedModel { bytes in
            let scratch = try scratchDirectory("vlmsh-scale") + "/model.gguf"
            try bytes.write(to: URL(fileURLWithPath: scratch))
            let gguf = try GGUFFile(path: scratch)
            let info = try XCTUnwrap(gguf.tensorInfo(name))
            XCTAssertEqual(info.type, .q4_1)
            // Block 10's d becomes an F16 NaN.
            let at = info.offset + 10 * info.type.blockBytes
            bytes[at] = 0x00; bytes[at + 1] = 0x7E
        }
        try assertRefused(model: path, mentions: [path, "weight '\(name)' holds a non-finite value (nan) at element 320"])
    }
}

import Foundation
import XCTest

/// Options with a fixed set of values: --help lists the values, and any other value is a usage
/// error naming them (never a silent fallback).
final class OptionTests: XCTestCase {
    func vlmsh(_ arguments: [String]) throws -> CLITests.Result {
        try CLITests.vlmsh(arguments, home: try scratchDirectory("vlmsh-options"))
    }

    func assertUsageError(_ arguments: [String], mentions needles: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try vlmsh(arguments)
        XCTAssertEqual(r.status, 64, "usage errors exit with 64; stderr: \(r.stderr)", file: file, line: line)
        for n in needles { XCTAssertTrue(r.stderr.contains(n), "'\(n)' not in: \(r.stderr)", file: file, line: line) }
    }

    func testHelpListsTheAllowedValues() throws {
        let finetune = try vlmsh(["finetune", "--help"]).stdout.replacingOccurrences(of: "\n", with: " ")
            .replacingOccurrences(of: " +", with: " ", options: .regularExpression)
        XCTAssertTrue(finetune.contains("(values: lora, projector, lora+projector, vision+projector, vision+lora+projector; default: lora)"), finetune)
        XCTAssertTrue(finetune.contains("(values: next-token, image-token-embeddings; default: next-token)"), finetune)
        XCTAssertTrue(finetune.contains("(values: constant, linear, cosine; default: cosine)"), finetune)
        let demo = try vlmsh(["make-demo-data", "--help"]).stdout.replacingOccurrences(of: "\n", with: " ")
            .replacingOccurrences(of: " +", with: " ", options: .regularExpression)
        XCTAssertTrue(demo.contains("(values: scattered, tiles, copies, free; default: scattered)"), demo)
        XCTAssertTrue(demo.contains("(values: caption, colour, shape, count, where, exists, size)"), demo)
        XCTAssertTrue(try vlmsh(["merge", "--help"]).stdout.contains("(values: f32,"))
        XCTAssertTrue(try vlmsh(["export", "--help"]).stdout.contains("(values: md, jsonl, llava; default: md)"))
    }

    func testUnknownValuesAreUsageErrors() throws {
        let out = try scratchDirectory("vlmsh-options") + "/demo"
        try assertUsageError(["make-demo-data", "--out", out, "--train", "1", "--layout", "grid"],
                             mentions: ["'grid' is invalid for '--layout", "'scattered', 'tiles', 'copies' or 'free'"])
        try assertUsageError(["make-demo-data", "--out", out, "--train", "1", "--two-pictures", "0.3"], mentions: ["--two-pictures needs --multi-turn"])
        try assertUsageError(["make-demo-data", "--out", out, "--train", "1", "--multi-turn", "--two-pictures", "2"], mentions: ["--two-pictures must be in 0...1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing is written after a usage error")
        try assertUsageError(["make-demo-data", "--out", out, "--kinds", "colour,smell"], mentions: ["'colour,smell' is invalid for '--kinds"])
        let data = CLITests.fixtures.path + "/train/examples.jsonl"
        try assertUsageError(["finetune", "--data", data, "--out", out, "--mode", "everything"], mentions: ["'everything' is invalid for '--mode"])
        try assertUsageError(["finetune", "--data", data, "--out", out, "--objective", "mse"], mentions: ["'mse' is invalid for '--objective"])
        try assertUsageError(["finetune", "--data", data, "--out", out, "--scheduler", "step"], mentions: ["'step' is invalid for '--scheduler"])
        try assertUsageError(["merge", "--model", "m", "--adapter", "a", "--out", out, "--dtype", "f64"], mentions: ["'f64' is invalid for '--dtype"])
        try assertUsageError(["export", "1", "--format", "xml"], mentions: ["'md', 'jsonl' or 'llava'"])
    }
}

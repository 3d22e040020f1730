import Foundation
import XCTest

/// `--adapter DIR` on the commands that run a model (generate, logits, eval: one shared option
/// group): a fine-tune's output applied at load gives the merged model's logits and replies.
final class AdapterOptionTests: XCTestCase {
    static let base = EvalMergeCLITests.base
    var home = ""

    override func setUpWithError() throws { home = try scratchDirectory("vlmsh-adapter") }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result { try CLITests.vlmsh(arguments, home: home, timeout: 300) }

    func json(_ r: CLITests.Result, file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr, file: file, line: line)
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout, file: file, line: line)
    }

    /// Every logit after example A with the square, by token id.
    func logits(_ extra: [String]) throws -> [Int: Double] {
        let j = try json(vlmsh(["logits", "--ids", EvalMergeCLITests.exampleA, "--image", EvalMergeCLITests.square,
                                "--top-k", "701", "--json"] + extra))
        let top = try XCTUnwrap(j["top"] as? [[Any]])
        return Dictionary(uniqueKeysWithValues: top.map { ($0[0] as! Int, $0[1] as! Double) })
    }

    func greedyIDs(_ extra: [String]) throws -> [Int] {
        let j = try json(vlmsh(["generate", "--ids", EvalMergeCLITests.exampleA, "--image", EvalMergeCLITests.square,
                                "--temperature", "0", "--max-tokens", "6", "--json"] + extra))
        return try XCTUnwrap(j["ids"] as? [Int])
    }

    func testAFineTunesAdapterChangesLogitsAndEqualsTheMergedModel() throws {
        let run = home + "/run"
        let trained = try vlmsh(["finetune", "--model", Self.base, "--data", EvalMergeCLITests.examples, "--mode", "lora+projector",
                                 "--lr", "1e-2", "--steps", "3", "--out", run, "--json"])
        XCTAssertEqual(trained.status, 0, trained.stderr)
        let merged = home + "/merged"
        XCTAssertEqual(try vlmsh(["merge", "--model", Self.base, "--adapter", run, "--out", merged]).status, 0)

        let base = try logits(["--model", Self.base])
        let adapted = try logits(["--model", Self.base, "--adapter", run])
        let fused = try logits(["--model", merged])
        XCTAssertEqual(Set(adapted.keys), Set(base.keys))
        XCTAssertGreaterThan(base.keys.map { abs(adapted[$0]! - base[$0]!) }.max()!, 1e-3, "the adapter changes the logits")
        XCTAssertLessThan(base.keys.map { abs(adapted[$0]! - fused[$0]!) }.max()!, 1e-4, "base + adapter = merged")

        XCTAssertEqual(try greedyIDs(["--model", Self.base, "--adapter", run]), try greedyIDs(["--model", merged]))
    }

    func testCommandsThatTakeNoAdapterSaySoAndABadFolderIsOneLine() throws {
        let finetune = try vlmsh(["finetune", "--model", Self.base, "--adapter", home, "--data", EvalMergeCLITests.examples, "--out", home + "/x"])
        XCTAssertEqual(finetune.status, 64)
        XCTAssertTrue(finetune.stderr.contains("--adapter-init"), finetune.stderr)
        let tokenize = try vlmsh(["tokenize", "--model", Self.base, "--adapter", home, "--text", "hi"])
        XCTAssertEqual(tokenize.status, 64)
        let r = try vlmsh(["logits", "--model", Self.base, "--adapter", home, "--ids", "1,2"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains(home + "/adapter_config.json"), r.stderr)
    }
}

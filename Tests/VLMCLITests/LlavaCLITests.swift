import Foundation
import XCTest

/// `--image` on generate / logits and the `preprocess` command, against the LLaVA goldens.
final class LlavaCLITests: XCTestCase {
    /// Runs the built binary (CLITests' runner, inline: a test case cannot host another).
    struct Runner {
        func vlmsh(_ arguments: [String]) throws -> CLITests.Result {
            let process = Process()
            process.executableURL = CLITests.binary
            process.arguments = arguments
            let outURL = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-out-\(UUID().uuidString)")
            let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-err-\(UUID().uuidString)")
            FileManager.default.createFile(atPath: outURL.path, contents: nil)
            FileManager.default.createFile(atPath: errURL.path, contents: nil)
            defer { try? FileManager.default.removeItem(at: outURL); try? FileManager.default.removeItem(at: errURL) }
            process.standardOutput = try FileHandle(forWritingTo: outURL)
            process.standardError = try FileHandle(forWritingTo: errURL)
            try process.run()
            process.waitUntilExit()
            return CLITests.Result(status: process.terminationStatus,
                                   stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                                   stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self))
        }

        func json(_ r: CLITests.Result) throws -> [String: Any] {
            XCTAssertEqual(r.status, 0, r.stderr)
            return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        }
    }
    let cli = Runner()
    static let llava = CLITests.fixtures.appendingPathComponent("llava")

    func golden(_ checkpoint: String, _ index: Int) throws -> [String: Any] {
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: Self.llava.appendingPathComponent("golden.json"))) as? [String: Any])
        let cps = try XCTUnwrap(root["checkpoints"] as? [String: [String: Any]])
        return try XCTUnwrap((cps[checkpoint]?["cases"] as? [[String: Any]])?[index])
    }

    func testLogitsAndGreedyIDsWithAnImageMatchTransformers() throws {
        for checkpoint in ["clip-llama", "original-llava"] {
            let c = try golden(checkpoint, 0)
            let ids = try XCTUnwrap(c["prompt_ids"] as? [Int]).map(String.init).joined(separator: ",")
            let image = Self.llava.appendingPathComponent("images/square.png").path
            let model = Self.llava.appendingPathComponent(checkpoint).path
            let logits = try cli.json(try cli.vlmsh(["logits", "--model", model, "--ids", ids, "--image", image, "--top-k", "1", "--json"]))
            let top = try XCTUnwrap((logits["top"] as? [[Any]])?.first)
            let expected = try XCTUnwrap(c["last_logits"] as? [Double])
            let best = expected.indices.max { expected[$0] < expected[$1] }!
            XCTAssertEqual(top[0] as? Int, best, checkpoint)
            XCTAssertEqual(try XCTUnwrap(top[1] as? Double), expected[best], accuracy: 1e-3, checkpoint)

            let gen = try cli.json(try cli.vlmsh(["generate", "--model", model, "--ids", ids, "--image", image,
                                                  "--temperature", "0", "--max-tokens", "12", "--json"]))
            let greedy = try XCTUnwrap(c["greedy_ids"] as? [Int])
            let got = try XCTUnwrap(gen["ids"] as? [Int])
            // Generation stops at EOS; the goldens never stop.
            XCTAssertEqual(got, Array(greedy.prefix(got.count)), checkpoint)
        }
    }

    func testChatPromptGetsTheImagePlaceholder() throws {
        let model = Self.llava.appendingPathComponent("siglip-qwen2").path
        let image = Self.llava.appendingPathComponent("images/wide.png").path
        let r = try cli.json(try cli.vlmsh(["generate", "--model", model, "--prompt", "Describe the picture.", "--image", image,
                                            "--temperature", "0", "--max-tokens", "3", "--json"]))
        let ids = try XCTUnwrap(r["prompt_ids"] as? [Int])
        XCTAssertEqual(ids.filter { $0 == 600 }.count, 1, "one <image> token in \(ids)")
    }

    func testPreprocessWritesPixelValues() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("pv-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: out) }
        let r = try cli.vlmsh(["preprocess", "--model", Self.llava.appendingPathComponent("original-llava").path,
                               "--image", Self.llava.appendingPathComponent("images/tall.png").path, "--out", out.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let data = try Data(contentsOf: out)
        let n = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + Int(n)))) as? [String: Any])
        let pv = try XCTUnwrap(header["pixel_values"] as? [String: Any])
        XCTAssertEqual(pv["dtype"] as? String, "F32")
        XCTAssertEqual(pv["shape"] as? [Int], [1, 3, 28, 28])
        XCTAssertEqual(data.count, 8 + Int(n) + 3 * 28 * 28 * 4)
    }

    func testMissingImageIsNamed() throws {
        let r = try cli.vlmsh(["logits", "--model", Self.llava.appendingPathComponent("clip-llama").path, "--prompt", "hi",
                               "--image", "/nonexistent.png"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("nonexistent.png"), r.stderr)
    }
}

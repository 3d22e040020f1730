import Foundation
import VLMHome
import VLMTestSupport
import XCTest

/// Runs the built `vlmsh` binary as a user would and checks the `--json` contract and the
/// one-line errors for bad input.
final class CLITests: XCTestCase {
    struct Result { let status: Int32; let stdout: String; let stderr: String }

    static let binary: URL = {
        let dir = Bundle.main.executableURL?.deletingLastPathComponent()
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The test bundle sits next to the executable in the build folder.
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let url = candidate.appendingPathComponent("vlmsh")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return dir.appendingPathComponent("vlmsh")
    }()

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data")

    func vlmsh(_ arguments: [String], timeout: TimeInterval = 120) throws -> Result {
        try Self.vlmsh(arguments, timeout: timeout)
    }

    /// Runs the built binary; `home` becomes its VLMSH_HOME (a test's private store and models),
    /// `environment` adds variables.
    static func vlmsh(_ arguments: [String], home: String? = nil, environment: [String: String] = [:],
                      timeout: TimeInterval = 120) throws -> Result {
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = arguments
        if home != nil || !environment.isEmpty {
            var env = ProcessInfo.processInfo.environment.merging(environment) { $1 }
            if let home { env["VLMSH_HOME"] = home }
            process.environment = env
        }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        // Read while running so a full pipe cannot stall the child.
        final class Box: @unchecked Sendable { var data = Data() }
        let stdout = Box(), stderr = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { stdout.data = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { stderr.data = err.fileHandleForReading.readDataToEndOfFile() }
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate(); XCTFail("vlmsh \(arguments) hung") }
        process.waitUntilExit()
        group.wait()
        return Result(status: process.terminationStatus, stdout: String(decoding: stdout.data, as: UTF8.self),
                      stderr: String(decoding: stderr.data, as: UTF8.self))
    }

    func defaultModel() throws -> String { try Self.defaultModel() }

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Installs the shipped demo model into `home`'s store, as `make model` does.
    static func installDemo(home: String) throws {
        let install = Process()
        install.executableURL = root.appendingPathComponent("scripts/install-demo.sh")
        install.environment = ProcessInfo.processInfo.environment.merging(["VLMSH_HOME": home]) { $1 }
        try install.run()
        install.waitUntilExit()
        XCTAssertEqual(install.terminationStatus, 0, "scripts/install-demo.sh")
    }

    static func defaultModel() throws -> String { try installedDefaultModel() }

    func json(_ r: Result) throws -> [String: Any] {
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = r.stdout.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "--json prints one object: \(r.stdout)")
        return try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }

    // MARK: - The --json contract on the default model

    func testGenerateGreedyChatJSON() throws {
        _ = try defaultModel()
        let j = try json(vlmsh(["generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "32", "--json"]))
        XCTAssertEqual(j["text"] as? String, "The capital of France is Paris.")
        XCTAssertEqual((j["prompt_ids"] as? [Int])?.count, 37)
        XCTAssertEqual((j["ids"] as? [Int])?.last, 2)
        XCTAssertGreaterThan(j["prefill_tokens_per_second"] as? Double ?? 0, 0)
        XCTAssertNotNil(j["decode_tokens_per_second"] as? Double)
    }

    /// `--activations int8` computes as llama.cpp does, outliers and all: SmolLM2-135M's reply is
    /// then llama.cpp's (llama-cpp-python 0.3.36, create_chat_completion, temperature 0:
    /// "L'Étoile, la Marseillaise, la femme, …"), not transformers' "Paris". A bad value is a usage error.
    func testInt8ActivationsAnswerAsLlamaCpp() throws {
        _ = try defaultModel()
        let args = ["generate", "--prompt", "What is the capital of France?", "--temperature", "0", "--max-tokens", "5", "--json"]
        let int8 = try json(vlmsh(args + ["--activations", "int8"]))
        XCTAssertTrue((int8["text"] as? String ?? "").hasPrefix("L'Étoile"), "\(int8["text"] ?? "")")
        let bad = try vlmsh(["generate", "--prompt", "hi", "--activations", "q4"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("'f32' and 'int8'"), bad.stderr)
        let env = try Self.vlmsh(["generate", "--prompt", "hi"], environment: ["VLMSH_ACTIVATIONS": "fast"])
        XCTAssertEqual(env.status, 1)
        XCTAssertTrue(env.stderr.contains("VLMSH_ACTIVATIONS=fast: use f32 or int8"), env.stderr)
        // The KV cache follows (f16 with int8, as llama.cpp keeps it); a Float32 one is asked for by name.
        let float = try json(vlmsh(args + ["--activations", "int8", "--kv-cache", "f32"]))
        XCTAssertTrue((float["text"] as? String ?? "").hasPrefix("L'Étoile"), "\(float["text"] ?? "")")
        let badCache = try vlmsh(["generate", "--prompt", "hi", "--kv-cache", "q8"])
        XCTAssertNotEqual(badCache.status, 0)
        XCTAssertTrue(badCache.stderr.contains("'f32' and 'f16'"), badCache.stderr)
        let envCache = try Self.vlmsh(["generate", "--prompt", "hi"], environment: ["VLMSH_KV_CACHE": "q8"])
        XCTAssertEqual(envCache.status, 1)
        XCTAssertTrue(envCache.stderr.contains("VLMSH_KV_CACHE=q8: use f32 or f16"), envCache.stderr)
    }

    func testGenerateFromIdsIsVerbatimAndSeededSamplingRepeats() throws {
        _ = try defaultModel()
        let args = ["generate", "--ids", "6403,1980,253,655", "--max-tokens", "12", "--temperature", "0.9", "--seed", "7", "--json"]
        let a = try json(vlmsh(args)), b = try json(vlmsh(args))
        XCTAssertEqual(a["prompt_ids"] as? [Int], [6403, 1980, 253, 655])
        XCTAssertEqual(a["ids"] as? [Int], b["ids"] as? [Int], "same seed, same reply")
        XCTAssertEqual((a["ids"] as? [Int])?.count, 12)
    }

    func testLogitsJSON() throws {
        _ = try defaultModel()
        let j = try json(vlmsh(["logits", "--prompt", "The capital of France is", "--raw", "--top-k", "5", "--json"]))
        let top = try XCTUnwrap(j["top"] as? [[Double]])
        XCTAssertEqual(top.count, 5)
        XCTAssertEqual(Int(top[0][0]), 7042)   // " Paris"
        XCTAssertEqual(top[0][1], 17.3712, accuracy: 1e-3)
    }

    func testTokenizeJSONRecognizesSpecialTokensWithoutBOS() throws {
        _ = try defaultModel()
        let j = try json(vlmsh(["tokenize", "--text", "<|im_start|>user\nHi 2024!<|im_end|>", "--json"]))
        XCTAssertEqual(j["ids"] as? [Int], [1, 4093, 198, 26843, 216, 34, 32, 34, 36, 17, 2])
    }

    // MARK: - Bad input: one line naming the file and the problem, exit status 1

    func assertOneLineError(_ r: Result, mentions needles: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "exit status; stderr: \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertEqual(lines.count, 1, "one error line, got: \(r.stderr)", file: file, line: line)
        for n in needles { XCTAssertTrue(r.stderr.contains(n), "'\(n)' not in: \(r.stderr)", file: file, line: line) }
    }

    func temporaryFile(_ name: String, _ bytes: Data) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent(name)
        try bytes.write(to: url)
        return url.path
    }

    func header(ofModel path: String, bytes: Int) throws -> Data {
        let h = try XCTUnwrap(FileHandle(forReadingAtPath: path))
        defer { try? h.close() }
        return try XCTUnwrap(h.read(upToCount: bytes))
    }

    func testWrongMagic() throws {
        let path = try temporaryFile("bad.gguf", Data("NOPE this is not a model".utf8) + Data(count: 64))
        assertOneLineError(try vlmsh(["generate", "--model", path, "--prompt", "hi"]), mentions: [path, "magic"])
    }

    func testFIFOAsModelOrImageIsOneErrorNotAHang() throws {
        let fifo = try scratchDirectory("vlmsh-fifo") + "/pipe.png"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        assertOneLineError(try vlmsh(["generate", "--model", fifo, "--prompt", "hi"], timeout: 60), mentions: [fifo, "not a regular file"])
        assertOneLineError(try vlmsh(["generate", "--model", "vlmsh-demo", "--image", fifo, "--prompt", "hi"], timeout: 60),
                           mentions: [fifo, "not a regular file"])
    }

    func testTruncatedHeader() throws {
        let path = try temporaryFile("cut.gguf", try header(ofModel: defaultModel(), bytes: 100_000))
        assertOneLineError(try vlmsh(["generate", "--model", path, "--prompt", "hi"]), mentions: [path, "truncated"])
    }

    func testTensorDataPastTheEnd() throws {
        // The whole header but only part of the tensor data.
        let path = try temporaryFile("short.gguf", try header(ofModel: defaultModel(), bytes: 20_000_000))
        assertOneLineError(try vlmsh(["logits", "--model", path, "--prompt", "hi"]), mentions: [path, "end of file"])
    }

    func testUnknownQuantTypeAndAbsurdCounts() throws {
        var bytes = try header(ofModel: defaultModel(), bytes: 4_000_000)
        // Tensor infos follow the metadata; the first is token_embd.weight: name, n_dims, dims, type.
        let name = Data("token_embd.weight".utf8)
        let at = try XCTUnwrap(bytes.range(of: name)).upperBound
        let typeOffset = at + 4 + 2 * 8
        XCTAssertEqual(bytes[typeOffset], 8, "token_embd is Q8_0")
        bytes[typeOffset] = 99
        let path = try temporaryFile("type.gguf", bytes)
        assertOneLineError(try vlmsh(["generate", "--model", path, "--prompt", "hi"]), mentions: [path, "99", "token_embd.weight"])

        var absurd = try header(ofModel: defaultModel(), bytes: 1_000)
        absurd.replaceSubrange(8..<16, with: withUnsafeBytes(of: UInt64(1) << 60) { Data($0) })   // tensor count
        let absurdPath = try temporaryFile("count.gguf", absurd)
        assertOneLineError(try vlmsh(["generate", "--model", absurdPath, "--prompt", "hi"], timeout: 20), mentions: [absurdPath])
    }

    func testMissingTokenizer() throws {
        let folder = Self.fixtures.appendingPathComponent("tinyllama/llama").path   // weights, no tokenizer
        assertOneLineError(try vlmsh(["generate", "--model", folder, "--prompt", "hi"]), mentions: [folder, "tokenizer"])
    }

    func testUnknownModelName() throws {
        assertOneLineError(try vlmsh(["generate", "--model", "no-such-model-here", "--prompt", "hi"]), mentions: ["no-such-model-here"])
    }
}

extension XCTestCase {
    /// A fresh folder under the temporary directory, removed when the test ends.
    func scratchDirectory(_ prefix: String) throws -> String {
        let dir = NSTemporaryDirectory() + "\(prefix)-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// A fresh VLMSH_HOME whose model store holds the default SmolLM2 GGUF (linked).
    func scratchHomeWithDefaultModel(_ prefix: String) throws -> String {
        let model = try CLITests.defaultModel()
        let home = try scratchDirectory(prefix)
        try FileManager.default.createDirectory(atPath: home + "/models", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: home + "/models/SmolLM2-135M-Instruct.Q4_1.gguf", withDestinationPath: model)
        return home
    }
}

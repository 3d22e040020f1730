import Foundation
import XCTest

/// The built binary copied alone into an empty folder under /tmp, as `make install` leaves it, and
/// run from another empty folder: no prompts/ is anywhere above either, so chat templates must come
/// from the binary and models from the store.
final class InstalledBinaryTests: XCTestCase {
    struct Run { let status: Int32; let stdout: String; let stderr: String }

    var binary = "", workingDirectory = "", home = ""

    override func setUpWithError() throws {
        let models = try Self.storeModels()
        // /tmp explicitly (not $TMPDIR, which could sit inside a checkout with its prompts/).
        let root = "/tmp/vlmsh-installed-\(UUID().uuidString)"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        binary = root + "/bin/vlmsh"
        workingDirectory = root + "/work"
        home = root + "/home"
        for folder in [root + "/bin", workingDirectory, home + "/models"] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: CLITests.binary.path, toPath: binary)
        // The real store's models, linked into a private home so sessions and history stay out of it.
        for name in ["SmolLM2-135M-Instruct.Q4_1.gguf", "vlmsh-demo"] {
            try FileManager.default.createSymbolicLink(atPath: home + "/models/" + name, withDestinationPath: models + "/" + name)
        }
    }

    /// `$VLMSH_HOME/models` (default ~/.vlmsh/models) when it holds smollm2 and vlmsh-demo (`make model`).
    static func storeModels() throws -> String {
        let store = ProcessInfo.processInfo.environment["VLMSH_HOME"] ?? (NSHomeDirectory() + "/.vlmsh")
        let models = store + "/models"
        for name in ["SmolLM2-135M-Instruct.Q4_1.gguf", "vlmsh-demo/config.json"]
        where !FileManager.default.fileExists(atPath: models + "/" + name) {
            if ProcessInfo.processInfo.environment["VLMSH_REQUIRE_MODEL"] == "1" { XCTFail("\(models)/\(name) missing") }
            throw XCTSkip("\(models)/\(name) not installed; run `make model`")
        }
        return models
    }

    /// Runs the copied binary in the empty working folder; `prompts` becomes $VLMSH_PROMPTS.
    func vlmsh(_ arguments: [String], prompts: String? = nil, input: String? = nil, timeout: TimeInterval = 300) throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: workingDirectory)
        var environment = ProcessInfo.processInfo.environment
        environment["VLMSH_HOME"] = home
        environment["PWD"] = workingDirectory
        environment["VLMSH_PROMPTS"] = prompts
        process.environment = environment
        let inputPipe = Pipe(), out = Pipe(), err = Pipe()
        process.standardInput = inputPipe
        process.standardOutput = out
        process.standardError = err
        try process.run()
        inputPipe.fileHandleForWriting.write(Data((input ?? "").utf8))
        try inputPipe.fileHandleForWriting.close()
        // Read while running so a full pipe cannot stall the child.
        final class Box: @unchecked Sendable { var data = Data() }
        let stdout = Box(), stderr = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { stdout.data = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { stderr.data = err.fileHandleForReading.readDataToEndOfFile() }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { process.terminate(); XCTFail("vlmsh \(arguments) hung") }
        process.waitUntilExit()
        group.wait()
        return Run(status: process.terminationStatus, stdout: String(decoding: stdout.data, as: UTF8.self),
                   stderr: String(decoding: stderr.data, as: UTF8.self))
    }

    @discardableResult
    func succeeds(_ arguments: [String], prompts: String? = nil, input: String? = nil,
                  file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let run = try vlmsh(arguments, prompts: prompts, input: input)
        XCTAssertEqual(run.status, 0, "vlmsh \(arguments.joined(separator: " ")): \(run.stderr)", file: file, line: line)
        return run.stdout
    }

    func testGeneratesTextAndImageAnswersAndOpensTheREPL() throws {
        let text = try succeeds(["generate", "--model", "smollm2", "--prompt", "hi", "--max-tokens", "4", "--temperature", "0"])
        XCTAssertFalse(text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "smollm2 replied nothing")

        let image = CLITests.root.appendingPathComponent("sessions/data/shapes/three.png").path
        let answer = try succeeds(["generate", "--model", "vlmsh-demo", "--image", image, "--prompt", "How many shapes are there?",
                                   "--max-tokens", "8", "--temperature", "0"])
        XCTAssertFalse(answer.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "vlmsh-demo replied nothing")

        let repl = try vlmsh([], input: "/quit\n")
        XCTAssertEqual(repl.status, 0, repl.stderr)
        XCTAssertTrue((repl.stdout + repl.stderr).contains("vlmsh-demo"), "the REPL opens on the demo model: \(repl)")
    }

    /// A template in $VLMSH_PROMPTS replaces the built-in one of the same name.
    func testPromptsFolderOverridesBuiltinTemplate() throws {
        let prompts = (workingDirectory as NSString).deletingLastPathComponent + "/my-prompts"
        try FileManager.default.createDirectory(atPath: prompts, withIntermediateDirectories: true)
        // ChatML with a fixed text opening every user message.
        let chatml = """
            system_prefix: "<|im_start|>system\\n"
            system_suffix: "<|im_end|>\\n"
            user_prefix: "<|im_start|>user\\nAnswer in one word. "
            user_suffix: "<|im_end|>\\n"
            generation_prompt: "<|im_start|>assistant\\n"
            stop: "<|im_end|>"

            """
        try chatml.write(toFile: prompts + "/chatml.txt", atomically: true, encoding: .utf8)

        let arguments = ["generate", "--model", "smollm2", "--prompt", "hi", "--max-tokens", "1", "--temperature", "0", "--json"]
        let overridden = try promptIDs(succeeds(arguments, prompts: prompts))
        let builtin = try promptIDs(succeeds(arguments))
        let expected = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            + "<|im_start|>user\nAnswer in one word. hi<|im_end|>\n<|im_start|>assistant\n"
        let tokenized = try JSONSerialization.jsonObject(with: Data(succeeds(["tokenize", "--text", expected, "--json"]).utf8))
        XCTAssertEqual(overridden, (tokenized as? [String: Any])?["ids"] as? [Int])
        XCTAssertNotEqual(overridden, builtin)
    }

    func promptIDs(_ json: String) throws -> [Int] {
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return try XCTUnwrap(object["prompt_ids"] as? [Int])
    }
}

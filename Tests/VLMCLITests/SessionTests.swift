import Foundation
import VLMStore
import XCTest

/// Stored sessions end to end: scripts, replay checks, and a crash in the middle of a script.
final class SessionTests: XCTestCase {
    /// A private VLMSH_HOME whose model store holds `model` (a symlink or a copy).
    func home(copyModel: Bool = false) throws -> String {
        let model = try CLITests.defaultModel()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-sessions-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/models", withIntermediateDirectories: true)
        let target = dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        if copyModel { try FileManager.default.copyItem(atPath: model, toPath: target) }
        else { try FileManager.default.createSymbolicLink(atPath: target, withDestinationPath: model) }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Runs vlmsh with VLMSH_HOME = `home` in its own environment only: the test process keeps
    /// its VLMSH_HOME for the tests that run after this one.
    func run(_ home: String, _ arguments: [String]) throws -> CLITests.Result {
        try CLITests.vlmsh(arguments, home: home)
    }

    func script(_ home: String, _ text: String) throws -> String {
        let path = home + "/script-\(UUID().uuidString).vlm"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func storedSession(_ home: String, _ script: String) throws -> Int {
        let r = try run(home, ["run", script, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual((j["errors"] as? [String]) ?? ["?"], [])
        return try XCTUnwrap(j["session"] as? Int)
    }

    func replayCheck(_ home: String, _ session: Int) throws -> [Bool] {
        let r = try run(home, ["replay", String(session), "--check", "--json"])
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stderr)
        XCTAssertNotEqual(j["session"] as? Int, session, "the replay is a new session")
        return try XCTUnwrap(j["turns"] as? [[String: Any]]).map { $0["identical"] as? Bool ?? false }
    }

    func testReplayOfGreedyAndSeededSessionsIsIdentical() throws {
        let h = try home()
        let greedy = try storedSession(h, try script(h, """
            /set temperature 0
            /set max_tokens 24
            What is the capital of France?
            And of Italy?
            """))
        XCTAssertEqual(try replayCheck(h, greedy), [true, true])

        let sampled = try storedSession(h, try script(h, """
            /set temperature 1.0
            /set top_k 0
            /set max_tokens 24
            Tell me a story about a cat.
            Another one, about a dog.
            """))
        XCTAssertEqual(try replayCheck(h, sampled), [true, true])

        let sessions = try run(h, ["sessions", "--json"])
        XCTAssertTrue(sessions.stdout.contains("\"turns\":4"), sessions.stdout)
        let llava = try run(h, ["export", String(greedy), "--format", "llava"])
        XCTAssertTrue(llava.stdout.contains("\"gpt\"") && llava.stdout.contains("capital of France"), llava.stdout)
    }

    func testReplayReportsADifferenceWhenTheModelChanged() throws {
        let h = try home(copyModel: true)
        let session = try storedSession(h, try script(h, """
            /set temperature 0
            /set max_tokens 24
            Write one sentence about the sea.
            """))
        // Damage weights in the middle of the file (layers), leaving the header intact.
        let path = h + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        let handle = try XCTUnwrap(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: 40_000_000)
        handle.write(Data(repeating: 0x11, count: 8_000_000))
        try handle.close()
        XCTAssertEqual(try replayCheck(h, session), [false])
    }

    func testKillDuringAScriptLeavesEveryCompletedTurn() throws {
        let h = try home()
        let messages = (1...40).map { "Say the number \($0)." }
        let path = try script(h, "/set temperature 0\n/set max_tokens 6\n" + messages.joined(separator: "\n"))
        let process = Process()
        process.executableURL = CLITests.binary
        process.arguments = ["run", path]
        var env = ProcessInfo.processInfo.environment
        env["VLMSH_HOME"] = h
        process.environment = env
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Wait for a few replies, then kill -9 in the middle of the script.
        var printed = ""
        let deadline = Date().addingTimeInterval(60)
        while printed.components(separatedBy: "» Say the number").count < 6 && Date() < deadline {
            printed += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let completed = printed.components(separatedBy: "» Say the number").count - 2   // replies fully printed

        let store = try Store(path: h + "/vlmsh.sqlite")
        XCTAssertEqual(try store.integrityCheck(), "ok")
        let sessions = try store.sessions()
        XCTAssertEqual(sessions.count, 1)
        let turns = try store.turns(session: sessions[0].id)
        let assistant = turns.filter { $0.role == .assistant }
        XCTAssertGreaterThanOrEqual(assistant.count, completed, "every printed reply is stored")
        XCTAssertLessThan(assistant.count, messages.count, "the script was stopped midway")
        // Each turn is its own transaction; only the very last may lack its reply.
        for (i, turn) in turns.enumerated() where i < turns.count - 1 || turn.role == .assistant {
            XCTAssertEqual(turn.role, i % 2 == 0 ? .user : .assistant, "turn \(i)")
            XCTAssertFalse(turn.text.isEmpty, "turn \(i) is whole")
        }
    }

    func testAScriptStopsAtItsFirstError() throws {
        let h = try home()
        let path = try script(h, """
            /set temperature 0
            /set max_tokens 4
            Say yes.
            /load missing-model
            Say no.
            """)
        // The REPL goes on after an error; a script stops there, says where, and fails.
        for json in [false, true] {
            let r = try run(h, ["run", path] + (json ? ["--json"] : []))
            XCTAssertEqual(r.status, 1, r.stderr)
            XCTAssertFalse(r.stdout.contains("» Say no."), r.stdout)
            let message = try json
                ? XCTUnwrap((JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])?["errors"] as? [String]).joined()
                : r.stderr
            XCTAssertTrue(message.contains("\(path): stopped at \"/load missing-model\": missing-model: no such model"), message)
        }
        let store = try Store(path: h + "/vlmsh.sqlite")
        XCTAssertEqual(try store.sessions().map { try store.turns(session: $0.id).count }, [2, 2], "one reply per run, none after the error")
    }
}

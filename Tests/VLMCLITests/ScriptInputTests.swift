import Foundation
import VLMApp
import VLMCLI
import VLMStore
import XCTest

/// Script and REPL input that used to crash, vanish or be misread: `/run` recursion, `"""` blocks
/// (never closed, or starting with `/`), sampling numbers that are not numbers, and `/save` of a
/// name an earlier run of the same script took.
final class ScriptInputTests: XCTestCase {
    func engine(defaultModel: String = "no-such-model-here") throws -> (Engine, TranscriptConsole) {
        let console = TranscriptConsole()
        let store = try Store(path: try scratchDirectory("vlmsh-input") + "/vlmsh.sqlite")
        let engine = Engine(console: console, store: store, commands: REPLCommands.all)
        engine.defaultModel = defaultModel
        return (engine, console)
    }

    func write(_ text: String, _ name: String, in dir: String) throws -> String {
        let path = dir + "/" + name
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func testAScriptThatRunsItselfStopsAtTheDepthLimit() throws {
        let dir = try scratchDirectory("vlmsh-recursion")
        let path = dir + "/self.vlm"
        try write("/run \(path)\n", "self.vlm", in: dir)
        let r = try CLITests.vlmsh(["run", path], home: dir, timeout: 60)
        XCTAssertEqual(r.status, 1, "a clean failure, not a crash: \(r.stderr)")
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(path): /run nests more than 16 scripts deep"), r.stderr)

        // In the REPL it is one error, and the engine goes on.
        let (engine, console) = try engine()
        XCTAssertTrue(engine.handle("/run \(path)"))
        XCTAssertEqual(console.errors.count, 1, "\(console.errors)")
        XCTAssertTrue(engine.handle("/help"))
        XCTAssertEqual(console.errors.count, 1)
    }

    func testAnUnterminatedBlockIsAnError() throws {
        XCTAssertThrowsError(try InputAssembler.entries(of: "/set temperature 0\n\"\"\"\nWrite a haiku\nabout rivers\n")) {
            XCTAssertEqual("\($0)", "the \"\"\" block opened at line 2 is never closed")
        }
        let dir = try scratchDirectory("vlmsh-block")
        let path = try write("/set temperature 0\n\"\"\"\nWrite a haiku\n", "open.vlm", in: dir)
        let r = try CLITests.vlmsh(["run", path], home: dir)
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertTrue(r.stderr.contains("\(path): the \"\"\" block opened at line 2 is never closed"), r.stderr)
        XCTAssertFalse(r.stdout.contains("» /set"), "nothing ran: \(r.stdout)")
    }

    /// Ctrl-D inside a block in the REPL: the user is told its text was not sent.
    func testTheREPLSaysWhenInputEndsInsideABlock() throws {
        let t = try REPLTests.Terminal(home: try scratchDirectory("vlmsh-block-repl"), arguments: ["--model", "/no/such/model.gguf"])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        t.type("\"\"\"\rWrite a haiku\r")
        t.expect("... ", count: 2)
        XCTAssertEqual(t.finish(), 0)
        XCTAssertTrue(t.output.contains("error: the \"\"\" block opened at line 1 is never closed; its text was not sent"), t.output)
    }

    func testABlockIsAlwaysAMessage() throws {
        let entries = try InputAssembler.entries(of: "\"\"\"\n/quit\n\"\"\"\n\"\"\"/frobnicate\"\"\"\n/help")
        XCTAssertEqual(entries, [.block("/quit"), .block("/frobnicate"), .line("/help")])
        XCTAssertEqual(entries.map(\.isCommand), [false, false, true])

        // The engine sends a block as a message (here: it tries to load the default model for it),
        // even when the text is /quit; the REPL goes on.
        let (engine, console) = try engine()
        XCTAssertTrue(engine.handle(.block("/quit")))
        XCTAssertTrue(engine.handle(.block("/frobnicate")))
        XCTAssertEqual(console.errors.count, 2)
        XCTAssertTrue(console.errors.allSatisfy { $0.contains("no-such-model-here") }, "\(console.errors)")
        XCTAssertFalse(engine.handle(.line("/quit")))
    }

    func testSamplingNumbersMustBeFiniteAndInRange() throws {
        let (engine, console) = try engine()
        let before = engine.parameters
        for bad in ["temperature nan", "temperature inf", "temperature -1", "min_p nan", "min_p 2", "top_p nan",
                    "top_p -0.5", "repeat_penalty 0", "repeat_penalty inf", "max_tokens -3", "top_k -1"] {
            XCTAssertTrue(engine.handle("/set \(bad)"))
            XCTAssertTrue(console.errors.last?.hasPrefix("/set \(bad.split(separator: " ")[0]) must be") ?? false, "\(bad): \(console.errors)")
        }
        XCTAssertEqual(console.errors.count, 11)
        XCTAssertEqual(engine.parameters, before, "nothing bad was kept")
        for good in ["temperature 0", "temperature 1.5", "min_p 0", "top_p 1", "repeat_penalty 1.1", "max_tokens 0", "top_k 0"] {
            XCTAssertTrue(engine.handle("/set \(good)"))
        }
        XCTAssertEqual(console.errors.count, 11)
        XCTAssertEqual(engine.parameters.temperature, 1.5)

        // The CLI applies the same rules before loading anything.
        for (flag, value) in [("--temperature", "nan"), ("--min-p", "nan"), ("--top-p", "inf"), ("--repeat-penalty", "inf")] {
            let r = try CLITests.vlmsh(["generate", "--model", "/no/such/model.gguf", "--prompt", "hi", flag, value])
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains("\(flag) must be"), "\(flag) \(value): \(r.stderr)")
        }
    }

    func testSaveReplaceMovesTheNameToThisSession() throws {
        let store = try Store(path: try scratchDirectory("vlmsh-save") + "/vlmsh.sqlite")
        let first = try store.createSession(name: "daily")
        let second = try store.createSession()
        XCTAssertThrowsError(try store.renameSession(second, to: "daily"))
        try store.renameSession(second, to: "daily", replacing: true)
        XCTAssertEqual(try store.session(named: "daily")?.id, second)
        XCTAssertNotNil(try store.session(id: first), "the older session stays, unnamed")
        XCTAssertNil(try store.session(id: first)?.name)
    }

    /// The shipped script saves under a fixed name: a second run takes the name over.
    func testTheShippedTextChatScriptRunsTwice() throws {
        let home = try scratchHomeWithDefaultModel("vlmsh-text-chat")
        let script = CLITests.root.appendingPathComponent("sessions/text-chat.vlm").path
        var sessions: [Int] = []
        for _ in 0..<2 {
            let r = try CLITests.vlmsh(["run", script, "--json"], home: home, timeout: 300)
            XCTAssertEqual(r.status, 0, r.stderr)
            let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
            XCTAssertEqual(j["errors"] as? [String], [])
            sessions.append(try XCTUnwrap(j["session"] as? Int))
        }
        let store = try Store(path: home + "/vlmsh.sqlite")
        XCTAssertEqual(try store.session(named: "text-chat-example")?.id, Int64(sessions[1]))
        XCTAssertEqual(try store.turns(session: Int64(sessions[0])).count, 6, "the first run's session is kept")
    }
}

import Foundation
import VLMCLI
import VLMStore
import XCTest

/// The REPL's command table: /help, dispatch and Tab completion all come from it; arguments
/// are split like a shell's words.
final class REPLCommandTests: XCTestCase {
    func engine() throws -> (Engine, TranscriptConsole) {
        let console = TranscriptConsole()
        let store = try Store(path: try scratchDirectory("vlmsh-commands") + "/vlmsh.sqlite")
        return (Engine(console: console, store: store), console)
    }

    func testHelpListsExactlyTheTable() throws {
        let (engine, console) = try engine()
        XCTAssertTrue(engine.handle("/help"))
        XCTAssertEqual(console.errors, [])
        // Each command line starts with its name (and aliases); wrapped help lines are indented.
        let listed = console.output.split(separator: "\n").filter { $0.hasPrefix("/") }
            .map { String($0.split(separator: " ")[0]).trimmingCharacters(in: CharacterSet(charactersIn: ",")) }
        XCTAssertEqual(listed, Engine.commands.map(\.name))
        for command in Engine.commands {
            XCTAssertTrue(console.output.contains(command.help), command.name)
            for alias in command.aliases { XCTAssertTrue(console.output.contains(alias), alias) }
        }
    }

    func testUnknownCommandIsAnErrorAndTheEngineGoesOn() throws {
        let (engine, console) = try engine()
        XCTAssertTrue(engine.handle("/frobnicate now"))
        XCTAssertEqual(console.errors, ["unknown command /frobnicate; /help lists them"])
        XCTAssertTrue(engine.handle("/image \"unterminated.png"))
        XCTAssertEqual(console.errors.last, "unterminated \" quote")
        XCTAssertTrue(engine.handle("/save"))
        XCTAssertEqual(console.errors.last, "usage: /save NAME")
        XCTAssertTrue(engine.handle("/sessions"))
        XCTAssertEqual(console.errors.count, 3)
        XCTAssertFalse(engine.handle("/bye"), "an alias of /quit")
    }

    func testCompletionFollowsTheTable() {
        XCTAssertEqual(Engine.completions(before: "", word: "/hi"), .words(["/history"]))
        XCTAssertEqual(Engine.completions(before: "", word: "/e"), .words(["/eval", "/evals", "/exit"]))
        for command in Engine.commands {
            guard case .words(let words) = Engine.completions(before: "", word: command.name) else { return XCTFail(command.name) }
            XCTAssertTrue(words.contains(command.name), command.name)
        }
        XCTAssertEqual(Engine.completions(before: "/set ", word: "te"), .words(["temperature", "template"]))
        XCTAssertEqual(Engine.completions(before: "/set temperature ", word: ""), .words([]))
        XCTAssertEqual(Engine.completions(before: "/adapter ", word: "u"), .words(["unload"]))
        XCTAssertEqual(Engine.completions(before: "/adapter load ", word: "ru"), .filePaths)
        XCTAssertEqual(Engine.completions(before: "/image ", word: "ca"), .filePaths)
        XCTAssertEqual(Engine.completions(before: "/load ", word: "./m"), .filePaths)
        XCTAssertEqual(Engine.completions(before: "/open ", word: ""), .words([]))
        XCTAssertEqual(Engine.completions(before: "/frobnicate ", word: ""), .words([]))
    }

    func testShellWords() throws {
        XCTAssertEqual(try ShellWords.split("  a  b\tc "), ["a", "b", "c"])
        XCTAssertEqual(try ShellWords.split("\"my pics/cat 1.png\" 'it''s' x"), ["my pics/cat 1.png", "its", "x"])
        XCTAssertEqual(try ShellWords.split(#"my\ pics/cat\ 1.png "a \"b\" \\ \c" ''"#), ["my pics/cat 1.png", #"a "b" \ \c"#, ""])
        XCTAssertEqual(try ShellWords.split("'a \\ b'"), ["a \\ b"])
        XCTAssertThrowsError(try ShellWords.split("\"open")) { XCTAssertEqual("\($0)", "unterminated \" quote") }
        XCTAssertThrowsError(try ShellWords.split("it's")) { XCTAssertEqual("\($0)", "unterminated ' quote") }
        XCTAssertThrowsError(try ShellWords.split("end\\"))
    }
}

import Foundation
import VLMApp
import VLMCLI
import VLMStore
import XCTest

/// The REPL's command table: /help, dispatch and Tab completion all come from it; arguments
/// are split like a shell's words.
final class REPLCommandTests: XCTestCase {
    func engine() throws -> (Engine, TranscriptConsole) {
        let console = TranscriptConsole()
        let store = try Store(path: try scratchDirectory("vlmsh-commands") + "/vlmsh.sqlite")
        return (Engine(console: console, store: store, commands: REPLCommands.all), console)
    }

    func testHelpListsExactlyTheTable() throws {
        let (engine, console) = try engine()
        XCTAssertTrue(engine.handle("/help"))
        XCTAssertEqual(console.errors, [])
        // Each command line starts with its name (and aliases); wrapped help lines are indented.
        let listed = console.output.split(separator: "\n").filter { $0.hasPrefix("/") }
            .map { String($0.split(separator: " ")[0]).trimmingCharacters(in: CharacterSet(charactersIn: ",")) }
        XCTAssertEqual(listed, REPLCommands.all.map(\.name))
        for command in REPLCommands.all {
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
        XCTAssertEqual(console.errors.last, "usage: /save [--replace] NAME")
        XCTAssertTrue(engine.handle("/sessions"))
        XCTAssertEqual(console.errors.count, 3)
        XCTAssertFalse(engine.handle("/bye"), "an alias of /quit")
    }

    func complete(_ before: String, word: String) -> CompletionAnswer {
        REPLCommand.completions(in: REPLCommands.all, before: before, word: word)
    }

    func testCompletionFollowsTheTable() {
        XCTAssertEqual(complete("", word: "/hi"), .words(["/history"]))
        XCTAssertEqual(complete("", word: "/e"), .words(["/evals", "/eval", "/exit"]))
        for command in REPLCommands.all {
            guard case .words(let words) = complete("", word: command.name) else { return XCTFail(command.name) }
            XCTAssertTrue(words.contains(command.name), command.name)
        }
        XCTAssertEqual(complete("/set ", word: "te"), .words(["temperature", "template"]))
        XCTAssertEqual(complete("/set temperature ", word: ""), .words([]))
        XCTAssertEqual(complete("/adapter ", word: "u"), .words(["unload"]))
        XCTAssertEqual(complete("/adapter load ", word: "ru"), .filePaths)
        XCTAssertEqual(complete("/image ", word: "ca"), .filePaths)
        XCTAssertEqual(complete("/load ", word: "./m"), .filePaths)
        XCTAssertEqual(complete("/open ", word: ""), .words([]))
        XCTAssertEqual(complete("/frobnicate ", word: ""), .words([]))
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

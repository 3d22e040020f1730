import Foundation
import VLMApp
import XCTest

/// Strings from model files reach the terminal escaped and short: an OSC sequence in a GGUF's
/// architecture is shown, not obeyed, and a megabyte-long one does not flood stderr.
final class TerminalTextTests: XCTestCase {
    /// A GGUF holding only `general.architecture` = `architecture` (version 3, no tensors).
    func gguf(architecture: String) throws -> String {
        var bytes = Data("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
        func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes.append(contentsOf: Array(s.utf8)) }
        u32(3); u64(0); u64(1)
        string("general.architecture"); u32(8); string(architecture)
        let path = try scratchDirectory("vlmsh-gguf") + "/evil.gguf"
        try bytes.write(to: URL(fileURLWithPath: path))
        return path
    }

    static let osc = "\u{1B}]0;pwned\u{07}"

    func testCleanEscapesControlsAndCapsTheLength() {
        XCTAssertEqual(TerminalText.field("llama\(Self.osc)"), "llama\\u{1B}]0;pwned\\u{7}")
        XCTAssertEqual(TerminalText.field("a\nb\rc\td\u{9B}e\u{202E}f"), "a\\u{A}b\\u{D}c\td\\u{9B}e\\u{202E}f")
        XCTAssertEqual(TerminalText.error("two\nlines"), "two\nlines")
        let long = TerminalText.error(String(repeating: "x", count: 14_000_000))
        XCTAssertEqual(long, String(repeating: "x", count: TerminalText.errorLimit) + "… (13998000 more bytes)")
        XCTAssertEqual(TerminalText.field("ünïcode ✓"), "ünïcode ✓")
    }

    func testAnEscapeSequenceInAModelFileIsShownNotObeyed() throws {
        let path = try gguf(architecture: "llama\(Self.osc)")
        let r = try CLITests.vlmsh(["generate", "--model", path, "--prompt", "hi"])
        XCTAssertEqual(r.status, 1, r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        XCTAssertFalse(r.stderr.contains("\u{1B}") || r.stderr.contains("\u{07}"), r.stderr.debugDescription)
        XCTAssertTrue(r.stderr.contains("pwned"), "the error quotes the architecture: \(r.stderr)")
    }

    func testAHugeStringInAModelFileGivesAShortError() throws {
        let path = try gguf(architecture: String(repeating: "A", count: 1_000_000))
        let r = try CLITests.vlmsh(["generate", "--model", path, "--prompt", "hi"])
        XCTAssertEqual(r.status, 1)
        XCTAssertLessThan(r.stderr.utf8.count, TerminalText.errorLimit + 200, String(r.stderr.prefix(300)))
        XCTAssertTrue(r.stderr.contains("AAAAAAAA"), "the error quotes the architecture: \(r.stderr.prefix(300))")
    }

    /// The REPL's error printer escapes the same way (through a real terminal).
    func testTheREPLShowsTheErrorEscaped() throws {
        let path = try gguf(architecture: "llama\(Self.osc)")
        let t = try REPLTests.Terminal(home: try scratchDirectory("vlmsh-osc-home"), arguments: ["--model", path])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        XCTAssertTrue(t.output.contains("pwned"), t.output)
        XCTAssertFalse(t.output.contains(Self.osc), t.output.debugDescription)
        XCTAssertEqual(t.finish(), 0)
    }
}

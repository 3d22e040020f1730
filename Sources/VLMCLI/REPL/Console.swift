import Foundation

/// Where the engine's output goes: the terminal (streamed and flushed), or a transcript.
public protocol Console: AnyObject {
    /// Streamed reply text.
    func write(_ text: String)
    /// A complete line of command output.
    func line(_ text: String)
    /// A problem with a command: one line, the REPL goes on.
    func error(_ text: String)
}

public final class TerminalConsole: Console {
    public init() {}
    public func write(_ text: String) { FileHandle.standardOutput.write(Data(text.utf8)) }
    public func line(_ text: String) { write(text + "\n") }
    public func error(_ text: String) { FileHandle.standardError.write(Data(("error: " + text + "\n").utf8)) }
}

/// Collects everything for `vlmsh run --json`.
public final class TranscriptConsole: Console {
    public private(set) var output = ""
    public private(set) var errors: [String] = []
    public init() {}
    public func write(_ text: String) { output += text }
    public func line(_ text: String) { output += text + "\n" }
    public func error(_ text: String) { errors.append(text); output += "error: " + text + "\n" }
}

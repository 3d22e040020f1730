import Foundation

/// One REPL or script entry. A typed line is a command when it starts with `/`; the text of a
/// `"""` block is always a message, whatever it starts with.
public enum InputEntry: Equatable, Sendable {
    case line(String)
    case block(String)

    public var text: String {
        switch self {
        case .line(let text), .block(let text): return text
        }
    }

    public var isCommand: Bool {
        if case .line(let text) = self { return text.hasPrefix("/") }
        return false
    }
}

/// Splits REPL input into entries: one line each, except `"""` blocks, which become one
/// multi-line message. `#` lines are comments in scripts.
public struct InputAssembler {
    private var block: [String]?
    /// The line number where the open block started (for the error when it never ends).
    private var blockStart = 0
    private var lineNumber = 0

    public init() {}

    /// True while inside an open `"""` block (the REPL shows a continuation prompt).
    public var isContinuing: Bool { block != nil }

    /// Feeds one line; returns a complete entry when there is one.
    public mutating func feed(_ line: String, skipComments: Bool = false) -> InputEntry? {
        lineNumber += 1
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        if var lines = block {
            if trimmed == "\"\"\"" { block = nil; return .block(lines.joined(separator: "\n")) }
            lines.append(line)
            block = lines
            return nil
        }
        if trimmed.hasPrefix("\"\"\"") {
            let rest = String(trimmed.dropFirst(3))
            if rest.hasSuffix("\"\"\"") && rest.count >= 3 { return .block(String(rest.dropLast(3))) }
            block = rest.isEmpty ? [] : [rest]
            blockStart = lineNumber
            return nil
        }
        if trimmed.isEmpty || (skipComments && trimmed.hasPrefix("#")) { return nil }
        return .line(line)
    }

    /// The error for input that ended inside a `"""` block (nil when none is open): the block's
    /// text is not sent, and saying so beats dropping it silently.
    public var unterminatedBlock: UsageError? {
        guard block != nil else { return nil }
        return UsageError("the \"\"\" block opened at line \(blockStart) is never closed")
    }

    /// The entries of a whole `.vlm` script; a `"""` block left open is an error.
    public static func entries(of script: String) throws -> [InputEntry] {
        var assembler = InputAssembler()
        var out: [InputEntry] = []
        for line in script.split(separator: "\n", omittingEmptySubsequences: false) {
            if let entry = assembler.feed(String(line), skipComments: true) { out.append(entry) }
        }
        if let error = assembler.unterminatedBlock { throw error }
        return out
    }
}

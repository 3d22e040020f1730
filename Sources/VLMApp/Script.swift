/// Splits REPL input into entries: one line each, except `"""` blocks, which become one
/// multi-line message. `#` lines are comments in scripts.
public struct InputAssembler {
    private var block: [String]?

    public init() {}

    /// True while inside an open `"""` block (the REPL shows a continuation prompt).
    public var isContinuing: Bool { block != nil }

    /// Feeds one line; returns a complete entry when there is one.
    public mutating func feed(_ line: String, skipComments: Bool = false) -> String? {
        let trimmed = line.trimmingCharacters(in: .whitespaces)
        if var lines = block {
            if trimmed == "\"\"\"" { block = nil; return lines.joined(separator: "\n") }
            lines.append(line)
            block = lines
            return nil
        }
        if trimmed.hasPrefix("\"\"\"") {
            let rest = String(trimmed.dropFirst(3))
            if rest.hasSuffix("\"\"\"") && rest.count >= 3 { return String(rest.dropLast(3)) }
            block = rest.isEmpty ? [] : [rest]
            return nil
        }
        if trimmed.isEmpty || (skipComments && trimmed.hasPrefix("#")) { return nil }
        return line
    }

    /// The entries of a whole `.vlm` script.
    public static func entries(of script: String) -> [String] {
        var assembler = InputAssembler()
        var out: [String] = []
        for line in script.split(separator: "\n", omittingEmptySubsequences: false) {
            if let entry = assembler.feed(String(line), skipComments: true) { out.append(entry) }
        }
        return out
    }
}

import Foundation

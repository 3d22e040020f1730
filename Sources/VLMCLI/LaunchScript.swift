import Foundation
import VLMApp
import VLMFormats

/// The training command of one of LLaVA's launch scripts (`scripts/v1_5/finetune_task_lora.sh`
/// and the like): `deepspeed llava/train/train_mem.py --flag value \ …`, or `python …/train.py`,
/// `torchrun … train.py`. Lines continued with a backslash are joined, comments dropped, and
/// `NAME=value` assignments earlier in the script expand `$NAME` / `${NAME}` in the flags; a
/// variable left unset stays in the value (`unresolvedVariable`), for the command line to override.
/// Nothing in the script is run.
struct LaunchScript {
    let path: String
    /// The flags after the training program, in order.
    let flags: [LlavaArguments.Given]

    /// The programs whose arguments are LLaVA's training flags.
    static let trainingPrograms = ["train_mem.py", "train.py", "train_xformers.py"]

    init(path: String) throws {
        self.path = path
        let data: Data
        do { data = try SmallFile.read(path) } catch { throw UsageError("\(path): cannot read the launch script (\(error))") }
        var variables: [String: String] = [:]
        var command: [String]?
        for line in Self.logicalLines(String(decoding: data, as: UTF8.self)) {
            let words: [String]
            do { words = try ShellWords.split(line) } catch { throw UsageError("\(path): \(error)") }
            // A word starting with # begins a comment.
            let code = Array(words.prefix { !$0.hasPrefix("#") })
            guard !code.isEmpty else { continue }
            if code.count == 1 || (code.count == 2 && code[0] == "export"), let assignment = Self.assignment(code.last!) {
                variables[assignment.name] = Self.expand(assignment.value, variables)
                continue
            }
            if let program = code.firstIndex(where: { word in Self.trainingPrograms.contains { word == $0 || word.hasSuffix("/" + $0) } }) {
                guard command == nil else { throw UsageError("\(path): more than one training command") }
                command = code[(program + 1)...].map { Self.expand($0, variables) }
            }
        }
        guard let command else {
            throw UsageError("\(path): no training command (deepspeed … train_mem.py, python … train.py or torchrun … train.py)")
        }
        flags = try Self.flags(command, path: path)
    }

    /// The script's lines with backslash continuations joined.
    static func logicalLines(_ text: String) -> [String] {
        var lines: [String] = [], current = ""
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = String(raw)
            if line.hasSuffix("\r") { line.removeLast() }
            if line.hasSuffix("\\") {
                current += line.dropLast() + " "
            } else {
                lines.append(current + line)
                current = ""
            }
        }
        if !current.isEmpty { lines.append(current) }
        return lines
    }

    /// `NAME=value` (a shell assignment), if `word` is one.
    static func assignment(_ word: String) -> (name: String, value: String)? {
        guard let equals = word.firstIndex(of: "=") else { return nil }
        let name = word[..<equals]
        guard let first = name.first, first == "_" || first.isLetter,
              name.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else { return nil }
        return (String(name), String(word[word.index(after: equals)...]))
    }

    /// `$NAME` and `${NAME}` replaced by their values where known; unknown ones stay.
    static func expand(_ text: String, _ variables: [String: String]) -> String {
        guard text.contains("$") else { return text }
        let pattern = #"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)"#
        guard let regex = try? NSRegularExpression(pattern: pattern) else { return text }
        let ns = text as NSString
        var out = "", last = 0
        for match in regex.matches(in: text, range: NSRange(location: 0, length: ns.length)) {
            let nameRange = match.range(at: 1).location != NSNotFound ? match.range(at: 1) : match.range(at: 2)
            out += ns.substring(with: NSRange(location: last, length: match.range.location - last))
            out += variables[ns.substring(with: nameRange)] ?? ns.substring(with: match.range)
            last = match.range.location + match.range.length
        }
        return out + ns.substring(from: last)
    }

    /// The first variable reference (`$NAME` or `${NAME}`) in `text`, if any.
    static func unresolvedVariable(in text: String) -> String? {
        guard let range = text.range(of: #"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)"#, options: .regularExpression) else { return nil }
        return String(text[range])
    }

    /// The training program's arguments as LLaVA flags (HfArgumentParser's spellings).
    private static func flags(_ words: [String], path: String) throws -> [LlavaArguments.Given] {
        var flags: [LlavaArguments.Given] = []
        var i = 0
        while i < words.count {
            guard let name = LlavaArguments.flagName(words[i]) else {
                throw UsageError("\(path): \"\(words[i])\" is not a flag of the training command")
            }
            let word = words[i]
            let inline = word.firstIndex(of: "=").map { String(word[word.index(after: $0)...]) }
            let (value, consumed) = try LlavaArguments.flagValue(name, inline: inline, next: i + 1 < words.count ? words[i + 1] : nil)
            flags.append(.init(name: name, value: value))
            i += consumed
        }
        return flags
    }
}

import Foundation
import VLMFormats

/// One chat turn.
public struct ChatMessage: Sendable, Equatable {
    public enum Role: String, Sendable { case system, user, assistant }
    public var role: Role
    public var text: String
    public init(role: Role, text: String) { self.role = role; self.text = text }

    /// LLaVA's convention for a turn with images: without a placeholder in `text`, one
    /// `placeholder` line per image opens it. Chat, `generate`, evaluation and training data all
    /// place images by this rule.
    public static func placingImages(_ count: Int, in text: String, placeholder: String) -> String {
        guard count > 0, !text.contains(placeholder) else { return text }
        return String(repeating: placeholder + "\n", count: count) + text
    }
}

/// A chat prompt format read from a declarative `prompts/<name>.txt` file (see prompts/README.md),
/// compiled into vlmsh (BuiltinTemplates.swift) or read from a prompts folder.
public struct ChatTemplate: Sendable {
    public var name: String
    /// Text put once before everything (a textual BOS such as "<s>"; the tokenizer maps it to the id).
    public var bos = ""
    /// System message used when the conversation has none (nil: no system block then).
    public var systemDefault: String?
    public var systemPrefix = "", systemSuffix = ""
    public var userPrefix = "", userSuffix = ""
    public var assistantPrefix = "", assistantSuffix = ""
    public var generationPrompt = ""
    /// When set, the system text plus this separator opens the first user message instead of a block.
    public var systemInFirstUser: String?
    /// Strip leading/trailing whitespace of message texts (Llama 3's `| trim`).
    public var trimMessages = false
    /// Strings that end the assistant's turn when they appear in generated text.
    public var stopStrings: [String] = []

    public init(name: String) { self.name = name }

    /// The template `name`: `<directory>/<name>.txt` when that file exists (a prompts folder adds
    /// templates and overrides built-ins), else the copy compiled into vlmsh. With the model's Jinja
    /// source, a default system message that the Jinja inserts (e.g. SmolLM2's) replaces the file's.
    public static func load(name: String, directory: String?, jinja: String? = nil) throws -> ChatTemplate {
        let (text, file) = try source(name: name, directory: directory)
        var template = try parse(text, name: name, file: file)
        if let jinja, let system = defaultSystemMessage(inJinja: jinja) { template.systemDefault = system }
        return template
    }

    /// The text of template `name` and where it came from (a path, or `built-in:<name>`).
    static func source(name: String, directory: String?) throws -> (text: String, file: String) {
        if let directory {
            let path = (directory as NSString).appendingPathComponent("\(name).txt")
            if let data = try SmallFile.readIfPresent(path) { return (String(decoding: data, as: UTF8.self), path) }
        }
        if let text = builtinTexts[name] { return (text, "built-in:\(name)") }
        let known = Set(builtinTexts.keys).union(names(inFolder: directory)).sorted().joined(separator: ", ")
        throw FormatError(name, "no such chat template (known: \(known))")
    }

    /// The template names a prompts folder holds (its `*.txt` files).
    public static func names(inFolder directory: String?) -> [String] {
        guard let directory, let files = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return files.filter { $0.hasSuffix(".txt") }.map { String($0.dropLast(4)) }
    }

    static func parse(_ text: String, name: String, file: String) throws -> ChatTemplate {
        var template = ChatTemplate(name: name)
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine
            if line.trimmingCharacters(in: .whitespaces).isEmpty || line.hasPrefix("#") { continue }
            guard let colon = line.firstIndex(of: ":") else {
                throw FormatError(file, "line \(number + 1): expected `key: value`")
            }
            let key = line[..<colon].trimmingCharacters(in: .whitespaces)
            let value = unescape(line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            switch key {
            case "bos": template.bos = value
            case "system_default": template.systemDefault = value.isEmpty ? nil : value
            case "system_prefix": template.systemPrefix = value
            case "system_suffix": template.systemSuffix = value
            case "user_prefix": template.userPrefix = value
            case "user_suffix": template.userSuffix = value
            case "assistant_prefix": template.assistantPrefix = value
            case "assistant_suffix": template.assistantSuffix = value
            case "generation_prompt": template.generationPrompt = value
            case "system_in_first_user": template.systemInFirstUser = value
            case "trim_messages": template.trimMessages = value == "true"
            case "stop": if !value.isEmpty { template.stopStrings.append(value) }
            default: throw FormatError(file, "line \(number + 1): unknown key \(key)")
            }
        }
        return template
    }

    /// Values may be wrapped in double quotes (to keep edge spaces) and use \n \t \" \\ escapes.
    private static func unescape(_ raw: String) -> String {
        var body = Substring(raw)
        if body.count >= 2 && body.hasPrefix("\"") && body.hasSuffix("\"") { body = body.dropFirst().dropLast() }
        var out = ""
        var escaping = false
        for ch in body {
            if escaping {
                switch ch {
                case "n": out.append("\n")
                case "t": out.append("\t")
                default: out.append(ch)
                }
                escaping = false
            } else if ch == "\\" {
                escaping = true
            } else {
                out.append(ch)
            }
        }
        if escaping { out.append("\\") }
        return out
    }

    /// The prompt text for `messages`; `addGenerationPrompt` opens the assistant's turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool) -> String {
        var out = bos
        var rest = messages[...]
        var system = systemDefault
        if let first = rest.first, first.role == .system {
            system = first.text
            rest = rest.dropFirst()
        }
        var carriedSystem: String?
        if let system {
            if let separator = systemInFirstUser {
                carriedSystem = clean(system) + separator
            } else {
                out += systemPrefix + clean(system) + systemSuffix
            }
        }
        for message in rest {
            switch message.role {
            case .system:
                out += systemPrefix + clean(message.text) + systemSuffix
            case .user:
                out += userPrefix + (carriedSystem ?? "") + clean(message.text) + userSuffix
                carriedSystem = nil
            case .assistant:
                out += assistantPrefix + clean(message.text) + assistantSuffix
            }
        }
        if addGenerationPrompt { out += generationPrompt }
        return out
    }

    private func clean(_ text: String) -> String {
        trimMessages ? text.trimmingCharacters(in: .whitespacesAndNewlines) : text
    }

    /// The template name for a model's Jinja chat template (or, without one, its architecture).
    /// A Jinja template none of ours matches is an error naming `--template`: guessing would
    /// prompt the model in a format it was not trained on, and its replies would be garbage.
    public static func detect(jinja: String?, architecture: String?) throws -> String {
        if let jinja {
            if jinja.contains("<|im_start|>") { return "chatml" }
            if jinja.contains("<|start_header_id|>") { return "llama-3" }
            if jinja.contains("[INST]") { return "mistral" }
            // Vicuna v1 / LLaVA-1.5, written out or as transformers' LLaVA template spells the roles.
            if (jinja.contains("USER:") && jinja.contains("ASSISTANT:")) || jinja.contains("['role'].upper() + ': '") {
                return "llava-v1"
            }
            let known = Set(builtinTexts.keys).union(names(inFolder: defaultDirectory())).sorted().joined(separator: ", ")
            throw UnknownChatTemplate(description: "the model's own chat template matches none of vlmsh's (\(known)): choose one with --template NAME")
        }
        let arch = architecture?.lowercased() ?? ""
        if arch.contains("qwen") || arch.contains("smollm") { return "chatml" }
        if arch.contains("llava") || arch == "llama" { return "llava-v1" }
        return "chatml"
    }

    /// The literal default system message a ChatML Jinja template writes when none is given
    /// (`'<|im_start|>system\nYou are …<|im_end|>\n'`), if it is plain text.
    static func defaultSystemMessage(inJinja jinja: String) -> String? {
        for header in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
            var searchStart = jinja.startIndex
            while let open = jinja.range(of: header, range: searchStart..<jinja.endIndex) {
                searchStart = open.upperBound
                guard let close = jinja.range(of: "<|im_end|>", range: open.upperBound..<jinja.endIndex) else { break }
                let literal = jinja[open.upperBound..<close.lowerBound]
                // Only a constant: no Jinja expressions, quotes or concatenation inside.
                if literal.isEmpty || literal.contains("{") || literal.contains("}") || literal.contains("' +")
                    || literal.contains("+ '") || literal.contains("\" +") || literal.contains("+ \"") { continue }
                return literal.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\'", with: "'")
            }
        }
        return nil
    }

    /// The prompts folder whose templates come before the built-in ones: $VLMSH_PROMPTS, else the
    /// first `prompts/` holding chatml.txt found walking up from the executable's directory, then
    /// from the current directory (a checkout's templates win while one works on them); nil if none.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let explicit = environment["VLMSH_PROMPTS"], !explicit.isEmpty { return explicit }
        // /proc/self/exe names the binary even when argv[0] is a bare name found through PATH.
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments.first ?? "."
        let executable = URL(fileURLWithPath: exe).resolvingSymlinksInPath()
        let starts = [executable.deletingLastPathComponent(), URL(fileURLWithPath: FileManager.default.currentDirectoryPath)]
        for start in starts {
            var dir = start.standardizedFileURL
            while true {
                let candidate = dir.appendingPathComponent("prompts")
                if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("chatml.txt").path) {
                    return candidate.path
                }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        return nil
    }
}

/// A model whose Jinja chat template vlmsh cannot map to one of its templates.
public struct UnknownChatTemplate: Error, CustomStringConvertible {
    public let description: String
}

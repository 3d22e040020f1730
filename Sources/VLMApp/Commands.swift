import Foundation
import VLMModels

/// What Tab completes in a command's arguments.
public indirect enum ArgumentCompletion: Sendable, Equatable {
    case nothing
    /// Names in the model store; file paths once the word looks like one.
    case modelNames
    case filePaths
    /// The first argument from a fixed list (`/set` keys, `/adapter` verbs), then `rest`.
    case choices([String], rest: ArgumentCompletion)
}

/// What to offer for the word under the cursor.
public enum CompletionAnswer: Sendable, Equatable {
    case words([String])
    /// Readline's own file-name completion.
    case filePaths
}

/// A command's arguments: the text after its name, split into shell-like words on demand
/// (`/set system` takes its value as typed, apostrophes and all).
public struct CommandArguments {
    /// The command's name as typed, and its synopsis (`/load MODEL`).
    public let name: String
    public let usage: String
    public let text: String

    public func words() throws -> [String] { try ShellWords.split(text) }

    /// The command's synopsis, as the error for arguments it cannot use.
    public var usageError: UsageError { UsageError("usage: \(usage)") }
}

/// One REPL command. The table of these (an engine's `commands`) drives dispatch, `/help` and
/// Tab completion, so the three cannot drift apart.
public struct REPLCommand: Sendable {
    public enum Action: Sendable {
        case run(@Sendable (Engine, CommandArguments) throws -> Void)
        /// Ends the REPL (or a script).
        case quit
    }

    public let name: String
    public let aliases: [String]
    /// The arguments, e.g. `MODEL` or `ID [--check]`.
    public let synopsis: String
    public let help: String
    public let completion: ArgumentCompletion
    public let action: Action

    public init(_ name: String, aliases: [String] = [], _ synopsis: String, _ help: String,
                completion: ArgumentCompletion = .nothing, action: Action) {
        self.name = name; self.aliases = aliases; self.synopsis = synopsis; self.help = help
        self.completion = completion; self.action = action
    }

    public init(_ name: String, _ synopsis: String, _ help: String, completion: ArgumentCompletion = .nothing,
         _ body: @escaping @Sendable (Engine, CommandArguments) throws -> Void) {
        self.init(name, synopsis, help, completion: completion, action: .run(body))
    }

    public var usage: String { synopsis.isEmpty ? name : name + " " + synopsis }
}

extension Engine {
    /// The engine's own commands, in the order /help lists them.
    public static let builtInCommands: [REPLCommand] = [
        REPLCommand("/load", "MODEL [--mmproj MMPROJ]", "load a .gguf file, a model folder or a store name (a text GGUF with its mmproj GGUF: LLaVA)",
                    completion: .modelNames) { engine, args in
            let words = try args.words()
            switch words.count {
            case 1: try engine.load(words[0])
            case 3 where words[1] == "--mmproj": try engine.load(words[0], mmproj: words[2])
            default: throw args.usageError
            }
        },
        REPLCommand("/image", "PATH…", "attach images to the next message (quote a path with spaces)", completion: .filePaths) { engine, args in
            let words = try args.words()
            guard !words.isEmpty else { throw args.usageError }
            for path in words { try engine.attach(path) }
        },
        REPLCommand("/clear", "", "start a new chat with the same model") { engine, _ in try engine.clearChat() },
        REPLCommand("/set", "KEY VALUE", settable.joined(separator: ", "), completion: .choices(settable, rest: .nothing)) { engine, args in
            try engine.set(args)
        },
        REPLCommand("/show", "", "model, architecture, parameters, template") { engine, _ in engine.show() },
        REPLCommand("/history", "", "this chat's messages") { engine, _ in engine.history() },
        REPLCommand("/stats", "", "time to first token and tokens/s of the last reply") { engine, _ in engine.stats() },
        REPLCommand("/save", "[--replace] NAME", "name this session (--replace takes the name from an older one)") { engine, args in
            let words = try args.words()
            let replacing = words.first == "--replace"
            guard words.count == (replacing ? 2 : 1) else { throw args.usageError }
            try engine.save(as: words[words.count - 1], replacing: replacing)
        },
        REPLCommand("/sessions", "", "stored sessions") { engine, _ in try engine.listSessions() },
        REPLCommand("/open", "ID|NAME", "continue a stored session") { engine, args in
            let words = try args.words()
            guard words.count == 1 else { throw args.usageError }
            try engine.open(words[0])
        },
        REPLCommand("/replay", "ID [--check]", "re-run a stored session; --check compares replies") { engine, args in
            let words = try args.words()
            guard let target = words.first, words.count <= 2, words.count == 1 || words[1] == "--check" else { throw args.usageError }
            try engine.replay(target, check: words.count == 2)
        },
        REPLCommand("/run", "FILE.vlm", "run a notebook script", completion: .filePaths) { engine, args in
            let words = try args.words()
            guard words.count == 1 else { throw args.usageError }
            try engine.runScript(words[0])
        },
        REPLCommand("/checkpoints", "", "fine-tune checkpoints in the store") { engine, _ in try engine.listCheckpoints() },
        REPLCommand("/adapter", "load PATH | unload", "apply a LoRA / projector folder (PEFT or vlmsh), or remove it",
                    completion: .choices(["load", "unload"], rest: .filePaths)) { engine, args in
            try engine.adapter(try args.words(), usage: args.usageError)
        },
        REPLCommand("/evals", "DATA", "stored evals of a data file, oldest first", completion: .filePaths) { engine, args in
            let words = try args.words()
            guard words.count == 1 else { throw args.usageError }
            try engine.storedEvals(words[0])
        },
        REPLCommand("/help", "", "this list") { engine, _ in engine.console.line(REPLCommand.help(engine.commands)) },
        REPLCommand("/quit", aliases: ["/exit", "/bye"], "", "leave (Ctrl-D also quits; Ctrl-C stops a reply)", action: .quit),
    ]

    public static let settable = ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens", "system", "template"]

    /// The built-in commands with `tools` (commands a front end adds) before /help and /quit.
    public static func commands(inserting tools: [REPLCommand]) -> [REPLCommand] {
        var table = builtInCommands
        table.insert(contentsOf: tools, at: table.firstIndex { $0.name == "/help" } ?? table.endIndex)
        return table
    }
}

extension REPLCommand {
    /// The command `name` (or one of its aliases) names in `table`.
    public static func named(_ name: String, in table: [REPLCommand]) -> REPLCommand? {
        table.first { $0.name == name || $0.aliases.contains(name) }
    }

    /// The /help text: one line per command of the table, then how multi-line messages work.
    public static func help(_ table: [REPLCommand]) -> String {
        let width = 24
        var lines: [String] = []
        for command in table {
            let head = ([command.name] + command.aliases).joined(separator: ", ") + (command.synopsis.isEmpty ? "" : " " + command.synopsis)
            if head.count < width {
                lines.append(head.padding(toLength: width, withPad: " ", startingAt: 0) + command.help)
            } else {
                lines.append(head)
                lines.append(String(repeating: " ", count: width) + command.help)
            }
        }
        lines.append("\"\"\"".padding(toLength: width, withPad: " ", startingAt: 0) + "starts and ends a multi-line message")
        return lines.joined(separator: "\n")
    }

    /// Tab completion from the table: `before` is the line up to the word being completed.
    public static func completions(in table: [REPLCommand], before: String, word: String) -> CompletionAnswer {
        let earlier = before.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let name = earlier.first else {
            return .words(table.flatMap { [$0.name] + $0.aliases }.filter { $0.hasPrefix(word) })
        }
        guard let command = named(name, in: table) else { return .words([]) }
        return completions(command.completion, argument: earlier.count - 1, word: word)
    }

    private static func completions(_ kind: ArgumentCompletion, argument: Int, word: String) -> CompletionAnswer {
        switch kind {
        case .nothing:
            return .words([])
        case .filePaths:
            return .filePaths
        case .modelNames:
            let names = ModelStore.names().filter { $0.hasPrefix(word) }
            return names.isEmpty || word.contains("/") || word.hasPrefix(".") || word.hasPrefix("~") ? .filePaths : .words(names)
        case .choices(let choices, let rest):
            return argument == 0 ? .words(choices.filter { $0.hasPrefix(word) }) : completions(rest, argument: argument - 1, word: word)
        }
    }
}

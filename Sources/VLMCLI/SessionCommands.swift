import ArgumentParser
import Foundation
import VLMApp
import VLMModels
import VLMStore

struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chat", abstract: "The interactive REPL (the default command).")
    @Option(name: .long, help: "Model to load first (the demo vision-language model; smollm2 for text only).") var model = "vlmsh-demo"
    @Option(name: .long, help: ArgumentHelp("With a LLaVA text GGUF as --model: its mmproj GGUF.", valueName: "mmproj.gguf")) var mmproj: String?
    @OptionGroup var runtime: RuntimeOptions

    func run() async throws { try REPL(model: model, mmproj: mmproj).run() }
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a .vlm notebook script without a terminal.")
    @Argument(help: "The script: REPL commands and messages, \"\"\" blocks, # comments.") var script: String
    @Option(name: .long, help: "Model to use when the script does not /load one.") var model = "smollm2"
    @OptionGroup var runtime: RuntimeOptions
    @Flag(name: .long, help: "Print one JSON object: the transcript and the stored session ids.") var json = false

    func run() async throws {
        let console: Console = json ? TranscriptConsole() : TerminalConsole()
        let engine = Engine(console: console, store: try openStore(), commands: REPLCommands.all)
        engine.defaultModel = model
        guard FileManager.default.isReadableFile(atPath: script) else { throw UsageError("\(script): cannot read script") }
        var failure: Error?
        do { try engine.runScript(script) } catch { failure = error }
        guard let transcript = console as? TranscriptConsole else {
            if let failure { throw failure }
            return
        }
        if let failure { transcript.error("\(failure)") }
        try printJSON([
            "session": engine.sessionID.map { Int($0) } as Any? ?? NSNull(),
            "sessions": engine.sessionsCreated.map { Int($0) },
            "replies": engine.replies, "output": transcript.output, "errors": transcript.errors,
        ])
        if failure != nil { throw ExitCode.failure }
    }
}

struct ReplayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "replay", abstract: "Re-run a stored session; --check compares every reply.")
    @Argument(help: "Session id or name.") var session: String
    @Flag(name: .long, help: "Compare each reply with the recorded one.") var check = false
    @OptionGroup var runtime: RuntimeOptions
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func run() async throws {
        let store = try openStore()
        let console: Console = json ? TranscriptConsole() : TerminalConsole()
        let id = try Engine(console: console, store: store).sessionID(session)
        let report = try Replay(store: store, console: console).run(id, check: check)
        if json {
            try printJSON([
                "session": Int(report.session), "original": Int(id), "notes": report.notes,
                "turns": report.turns.map { ["index": $0.index, "identical": $0.identical] as [String: Any] },
            ])
        } else {
            print(report.summary)
        }
        if check && report.turns.contains(where: { !$0.identical }) { throw ExitCode(2) }
    }
}

struct SessionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sessions", abstract: "List stored sessions.")
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func run() async throws {
        let sessions = try openStore(access: .readOnly).sessions()
        if json {
            let formatter = ISO8601DateFormatter()
            try printJSON(["sessions": sessions.map {
                ["id": Int($0.id), "name": $0.name as Any? ?? NSNull(), "created": formatter.string(from: $0.created),
                 "model": $0.modelPath as Any? ?? NSNull(), "turns": $0.turnCount] as [String: Any]
            }])
        } else {
            for s in sessions { print("\(s.id)\t\(s.name ?? "-")\t\(Engine.date(s.created))\t\(s.turnCount) turns\t\(s.modelPath ?? "")") }
        }
    }
}

struct ShowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "show", abstract: "Print a stored session as a transcript.")
    @Argument(help: "Session id or name.") var session: String

    func run() async throws {
        let store = try openStore(access: .readOnly)
        let id = try Engine(console: TerminalConsole(), store: store).sessionID(session)
        print(try store.export(session: id, format: .md))
    }
}

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Export sessions as md, jsonl, or LLaVA training data.")
    @Argument(help: "Session ids or names (several go into one output, in the order given).") var sessions: [String]
    @Option(name: .long, help: "md (a transcript), jsonl (one turn per line) or llava (conversations and image paths for fine-tuning).") var format: ExportFormat = .md
    @Option(name: .long, help: "With --format llava: write a self-contained training folder here (DIR/llava.json and the images copied into DIR/images/, named by content) instead of printing.") var out: String?

    func validate() throws {
        if sessions.isEmpty { throw ValidationError("name at least one session") }
        if out != nil && format != .llava { throw ValidationError("--out writes a LLaVA training folder: use it with --format llava") }
    }

    func run() async throws {
        let store = try openStore(access: .readOnly)
        let engine = Engine(console: TerminalConsole(), store: store)
        let ids = try sessions.map { try engine.sessionID($0) }
        guard let out else { return print(try store.export(sessions: ids, format: format)) }
        let written = try store.exportLLaVAFolder(sessions: ids, to: out)
        print("\(written.dataFile): \(written.records) conversation\(written.records == 1 ? "" : "s"), \(written.images) image\(written.images == 1 ? "" : "s")")
    }
}

import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMStore
import VLMTokenizers
import VLMTraining

/// The REPL's brain, shared by the interactive terminal, `vlmsh run` scripts and replays:
/// holds the model, the chat, the parameters and the attached images, and records every turn.
public final class Engine {
    public let console: Console
    public let store: Store
    /// Polled while generating; true stops the reply (Ctrl-C).
    public var shouldStop: () -> Bool = { false }

    public private(set) var model: ChatModel?
    public private(set) var modelPath: String?
    /// The mmproj GGUF loaded with `modelPath` (llama.cpp's LLaVA pair), if any.
    public private(set) var mmprojPath: String?
    private var modelRecord: Int64?
    public private(set) var chat: ChatSession?
    public private(set) var sessionID: Int64? {
        didSet { if let id = sessionID, !sessionsCreated.contains(id) { sessionsCreated.append(id) } }
    }
    /// Every session this engine wrote to, in order.
    public private(set) var sessionsCreated: [Int64] = []
    public var parameters = GenerationParameters()
    /// nil: a fresh random seed per reply (recorded, so replays reproduce it).
    public var fixedSeed: UInt64?
    public var system: String?
    public private(set) var templateOverride: String?
    private var pendingImages: [(input: ImageInput, record: Int64, path: String)] = []
    public private(set) var lastStats: GenerationStats?
    /// Assistant replies of this engine, in order (for replay checks).
    public private(set) var replies: [String] = []
    /// For a replay: the session this one re-runs.
    public var parentSession: Int64?
    /// The adapter `/adapter load` applied, until `/adapter unload` or another model.
    var activeAdapter: AppliedAdapter?
    /// The commands this engine dispatches (and /help lists).
    public let commands: [REPLCommand]

    public init(console: Console, store: Store, commands: [REPLCommand] = Engine.builtInCommands) {
        self.console = console
        self.store = store
        self.commands = commands
    }

    // MARK: - Input

    /// Handles one typed line (a command or a message). Returns false when the user quits.
    @discardableResult
    public func handle(_ line: String) -> Bool { handle(.line(line)) }

    /// Handles one REPL entry. Returns false when the user quits.
    /// Errors are printed as one line; nothing here ends the REPL.
    @discardableResult
    public func handle(_ entry: InputEntry) -> Bool {
        do {
            return try perform(entry)
        } catch {
            console.error("\(error)")
            return true
        }
    }

    /// One entry, its error thrown: a script stops there. A block is a message even when its
    /// text starts with `/`.
    private func perform(_ entry: InputEntry) throws -> Bool {
        if entry.isCommand { return try command(entry.text) }
        try send(entry.text)
        return true
    }

    /// A `/command …` entry, dispatched through the command table.
    private func command(_ entry: String) throws -> Bool {
        let name = String(entry.prefix { !$0.isWhitespace })
        guard let command = REPLCommand.named(name, in: commands) else { throw UsageError("unknown command \(name); /help lists them") }
        switch command.action {
        case .quit:
            return false
        case .run(let body):
            let text = entry.dropFirst(name.count).trimmingCharacters(in: .whitespaces)
            try body(self, CommandArguments(name: name, usage: command.usage, text: text))
            return true
        }
    }

    // MARK: - Chat and store listings

    func clearChat() throws {
        try requireModel()
        restartChat()
        console.line("new chat")
    }

    func history() {
        for m in chat?.messages ?? [] { console.line("\(m.role.rawValue): \(m.text)") }
    }

    func stats() {
        guard let s = lastStats else { console.line("no reply yet"); return }
        console.line(String(format: "time to first token %.3f s, prefill %.1f tok/s (%d tokens), decode %.1f tok/s (%d tokens)",
                            s.timeToFirstToken, s.prefillTokensPerSecond, s.promptTokens, s.decodeTokensPerSecond, s.generatedTokens))
    }

    /// `/save NAME`; `replacing` moves a name another session holds to this one (that session
    /// stays, by its id), so a script that saves under a fixed name can run again.
    func save(as name: String, replacing: Bool = false) throws {
        let id = try ensureSession()
        do {
            try store.renameSession(id, to: name, replacing: replacing)
        } catch let error as StoreError where error.kind == .nameTaken {
            throw UsageError("a session named '\(name)' already exists; /save --replace \(name) moves the name to this one")
        }
        console.line("session \(id) saved as '\(name)'")
    }

    func listSessions() throws {
        for s in try store.sessions() {
            console.line("\(s.id)\t\(s.name ?? "-")\t\(Self.date(s.created))\t\(s.turnCount) turns\t\(s.modelPath ?? "")")
        }
    }

    func replay(_ reference: String, check: Bool) throws {
        let report = try Replay(store: store, console: console, shouldStop: shouldStop).run(try sessionID(reference), check: check)
        console.line(report.summary)
    }

    func listCheckpoints() throws {
        let all = try store.checkpoints()
        if all.isEmpty { console.line("no checkpoints yet") }
        for c in all { console.line("run \(c.run)\tstep \(c.step)\t\(c.kind.rawValue)\t\(c.path)") }
    }

    // MARK: - Model and settings

    /// Loads a model; `mmproj` makes `reference` the text GGUF of llama.cpp's LLaVA pair.
    public func load(_ reference: String, mmproj: String? = nil) throws {
        let path = try ModelStore.resolve(reference)
        let mm = try mmproj.map { reference in
            let expanded = (reference as NSString).expandingTildeInPath
            guard FileManager.default.fileExists(atPath: expanded) else { throw UsageError("--mmproj \(reference): no such file") }
            return expanded
        }
        let loaded = try console.task("loading \((path as NSString).lastPathComponent)") {
            try loadChatModel(path: path, mmproj: mm, template: templateOverride)
        }
        activeAdapter = nil   // it belonged to the previous model
        model = loaded
        modelPath = path
        mmprojPath = mm
        modelRecord = try store.upsertModel(path: Self.recordedModel(path, mmproj: mm), fingerprint: try ModelFingerprint.compute(path, mmproj: mm),
                                            architecture: (loaded as? TextModel)?.architecture ?? "llava")
        chat = ChatSession(model: loaded, system: system)
        sessionID = nil
        pendingImages = []
        console.line("loaded \(path)" + (mm.map { " with \($0)" } ?? "")
                     + (loaded is TextModel ? "" : " (it sees images: /image PATH, then ask about them)"))
    }

    /// How the store records a model: its path, or a pair as `/load` takes it (`TEXT --mmproj MMPROJ`).
    static func recordedModel(_ path: String, mmproj: String?) -> String {
        mmproj.map { "\(path) --mmproj \($0)" } ?? path
    }

    /// `recordedModel` read back.
    static func parseRecordedModel(_ recorded: String) -> (path: String, mmproj: String?) {
        guard let range = recorded.range(of: " --mmproj ", options: .backwards) else { return (recorded, nil) }
        return (String(recorded[..<range.lowerBound]), String(recorded[range.upperBound...]))
    }

    /// Starts a new chat on the same model and session, e.g. after its weights changed (cached
    /// image features and KV prefixes no longer match them).
    func restartChat() {
        guard let model else { return }
        chat = ChatSession(model: model, system: system)
        sessionID = nil
        pendingImages = []
    }

    /// The store id of the current session, created on first need.
    var currentSession: Int64? { sessionID }

    /// Loaded on first use when nothing else was: scripts may start with a message.
    public var defaultModel = "smollm2"

    /// Loads the default model when none is loaded yet.
    func requireModel() throws {
        if model == nil { try load(defaultModel) }
    }

    /// `/set KEY VALUE`. The value is the rest of the line as typed (a system prompt may hold
    /// apostrophes), unquoted when it is one quoted word.
    func set(_ args: CommandArguments) throws {
        let key = String(args.text.prefix { !$0.isWhitespace })
        var value = args.text.dropFirst(key.count).trimmingCharacters(in: .whitespaces)
        if let first = value.first, first == "\"" || first == "'", let words = try? ShellWords.split(value), words.count == 1 { value = words[0] }
        guard Self.settable.contains(key), !value.isEmpty || ["system", "seed", "template"].contains(key) else { throw args.usageError }
        try set(key, value)
    }

    private func set(_ key: String, _ value: String) throws {
        func number<T: LosslessStringConvertible>(_: T.Type) throws -> T {
            guard let v = T(value) else { throw UsageError("/set \(key): '\(value)' is not a number") }
            return v
        }
        var p = parameters
        switch key {
        case "temperature": p.temperature = try number(Float.self)
        case "top_p": p.topP = try number(Float.self)
        case "top_k": p.topK = try number(Int.self)
        case "min_p": p.minP = try number(Float.self)
        case "repeat_penalty": p.repetitionPenalty = try number(Float.self)
        case "max_tokens": p.maxTokens = try number(Int.self)
        case "seed": fixedSeed = value.isEmpty || value == "random" ? nil : try number(UInt64.self)
        case "system":
            system = value.isEmpty ? nil : value
            chat?.system = system
        case "template":
            templateOverride = value.isEmpty ? nil : value
            if let path = modelPath { try load(path, mmproj: mmprojPath) }
        default:
            throw UsageError("usage: /set \(Self.settable.joined(separator: "|")) VALUE")
        }
        // Checked before it is kept: a NaN would poison every reply and could not be stored.
        do { try p.validate() } catch let error as ParameterError { throw UsageError("/set \(error)") }
        parameters = p
    }

    func show() {
        guard let model else { console.line("no model loaded"); return }
        // Names come from the model's files: shown escaped and short (TerminalText).
        let field = TerminalText.field
        console.line("model        \(field(modelPath ?? ""))")
        if let text = model as? TextModel { console.line("architecture \(field(text.architecture))") }
        let c = model.decoder.config
        console.line("text model   \(field(c.modelType)), \(c.numHiddenLayers) layers, hidden \(c.hiddenSize), vocab \(c.vocabSize), context \(c.contextLength)")
        console.line("images       \(model.images.map { $0.sized == nil ? "\($0.featureCount) positions per image" : "any resolution: \($0.featureCount) positions for the whole image plus its tile grid" } ?? "no")")
        console.line("template     \(field(model.template.name))")
        console.line("parameters   " + String(format: "temperature %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g, max_tokens %d, seed %@",
                                              parameters.temperature, parameters.topK, parameters.topP, parameters.minP,
                                              parameters.repetitionPenalty, parameters.maxTokens, fixedSeed.map(String.init) ?? "random"))
        if let system { console.line("system       \(field(system))") }
        console.line("session      \(sessionID.map(String.init) ?? "(new)")")
    }

    // MARK: - Images

    public func attach(_ path: String) throws {
        try requireModel()
        guard let support = model?.images else { throw UsageError("\(modelPath ?? "this model") takes no images") }
        let expanded = (path as NSString).expandingTildeInPath
        guard FileManager.default.fileExists(atPath: expanded) else { throw UsageError("\(path): cannot read file") }
        let file = try ImageFile(path: expanded)
        let image = file.image
        let record = try store.addImage(sha256: file.hash, path: expanded, width: image.width, height: image.height, bytes: Int64(file.byteCount))
        pendingImages.append((try support.input(hash: file.hash, image: image), record, expanded))
        console.line("attached \(path) (\(image.width)×\(image.height))")
    }

    // MARK: - Messages

    private func ensureSession() throws -> Int64 {
        if let id = sessionID { return id }
        try requireModel()
        let settings = SessionSettings(system: system, parameters: parameters)
        let params = String(decoding: try JSONEncoder().encode(settings), as: UTF8.self)
        let id = try store.createSession(model: modelRecord, params: params, template: model!.template.name, parent: parentSession)
        sessionID = id
        return id
    }

    /// Sends a user message and streams the reply; both turns are committed before returning.
    public func send(_ text: String) throws {
        try requireModel()
        guard let chat else { return }
        let session = try ensureSession()
        var p = parameters
        p.seed = fixedSeed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        // Recorded parameters (replays) already hold the template's stop strings.
        p.stopStrings += model!.template.stopStrings.filter { !p.stopStrings.contains($0) }
        let images = pendingImages
        pendingImages = []
        let generator = try console.steps({ $0 == 1 ? "encoding image" : "encoding \($0) images" }) { report in
            try chat.send(text, images: images.map(\.input), parameters: p, encodeProgress: report)
        }
        while let token = try generator.next() {
            console.write(token.text)
            if shouldStop() { generator.cancel() }
        }
        console.write("\n")
        if generator.finishReason == .context {
            console.line("(the reply stopped at the model's context of \(model!.decoder.config.contextLength) tokens; /clear starts a new chat)")
        }
        chat.commit(reply: generator.text)
        replies.append(generator.text)
        lastStats = generator.stats
        let paramsJSON = String(decoding: try JSONEncoder().encode(p), as: UTF8.self)
        try store.appendTurn(session: session, role: .user, text: text, images: images.map(\.record), params: paramsJSON, seed: p.seed)
        let s = generator.stats
        try store.appendTurn(session: session, role: .assistant, text: generator.text, promptTokens: s.promptTokens,
                             completionTokens: s.generatedTokens,
                             timings: TurnTimings(ttft: s.timeToFirstToken, prefillTokensPerSecond: s.prefillTokensPerSecond,
                                                  decodeTokensPerSecond: s.decodeTokensPerSecond),
                             params: paramsJSON, seed: p.seed)
    }

    /// Sends a recorded user turn again with its recorded parameters (replay).
    func resend(_ text: String, parameters recorded: GenerationParameters, images: [String]) throws -> String {
        for path in images { try attach(path) }
        let saved = (parameters, fixedSeed)
        parameters = recorded
        fixedSeed = recorded.seed
        defer { (parameters, fixedSeed) = saved }
        try send(text)
        return replies.last ?? ""
    }

    // MARK: - Sessions and scripts

    public func sessionID(_ reference: String) throws -> Int64 {
        if let id = Int64(reference), try store.session(id: id) != nil { return id }
        if let s = try store.session(named: reference) { return s.id }
        throw UsageError("no session '\(reference)'")
    }

    /// Continues a stored session: same model, its messages and images, new turns appended to it.
    public func open(_ reference: String) throws {
        let id = try sessionID(reference)
        guard let record = try store.session(id: id) else { throw UsageError("no session '\(reference)'") }
        if let recorded = record.model?.path, recorded != modelPath.map({ Self.recordedModel($0, mmproj: mmprojPath) }) {
            let (path, mmproj) = Self.parseRecordedModel(recorded)
            try load(path, mmproj: mmproj)
        }
        try requireModel()
        var history: [ChatMessage] = [], historyImages: [[ImageInput]] = []
        for turn in try store.turns(session: id) {
            history.append(ChatMessage(role: turn.role == .assistant ? .assistant : turn.role == .system ? .system : .user, text: turn.text))
            historyImages.append(try turn.images.map { try reloadImage($0) })
        }
        chat = ChatSession(model: model!, system: system, history: history, historyImages: historyImages)
        try chat!.warm()
        sessionID = id
        console.line("opened session \(id) (\(history.count) turns)")
    }

    /// The image a stored turn referenced, checked against its recorded content hash.
    func reloadImage(_ record: ImageRecord) throws -> ImageInput {
        guard let support = model?.images else { throw UsageError("the session has images but the model takes none") }
        guard FileManager.default.fileExists(atPath: record.path) else { throw UsageError("\(record.path): image is gone") }
        let file = try ImageFile(path: record.path)
        guard file.hash == record.sha256 else { throw UsageError("\(record.path): image changed since the session (content hash differs)") }
        return try support.input(hash: file.hash, image: file.image)
    }

    /// Scripts running inside one another (`/run` in a script), at most; a script that runs
    /// itself would otherwise recurse until the stack overflows.
    public static let maximumScriptDepth = 16
    private var scriptDepth = 0

    public func runScript(_ path: String) throws {
        guard scriptDepth < Self.maximumScriptDepth else {
            throw ScriptError("\(path): /run nests more than \(Self.maximumScriptDepth) scripts deep (does a script /run itself?)")
        }
        let expanded = (path as NSString).expandingTildeInPath
        // SmallFile: a FIFO or a folder is refused at once, never waited on.
        let text: String
        do { text = String(decoding: try SmallFile.read(expanded), as: UTF8.self) } catch { throw UsageError("\(path): cannot read script (\(error))") }
        let entries: [InputEntry]
        do { entries = try InputAssembler.entries(of: text) } catch { throw ScriptError("\(path): \(error)") }
        scriptDepth += 1
        defer { scriptDepth -= 1 }
        for entry in entries {
            console.line("» \(entry.isCommand ? entry.text : entry.text.replacingOccurrences(of: "\n", with: "\n  "))")
            // Like a notebook's "run all", the script stops at the first failing entry: later
            // entries would work on what it did not make (a stale model, a missing folder).
            do {
                if try !perform(entry) { break }
            } catch let error as ScriptError {
                throw error   // a nested script's stop already says where
            } catch {
                let text = entry.text
                throw ScriptError("\(path): stopped at \"\(text.prefix(60))\(text.count > 60 ? "…" : "")\": \(error)")
            }
        }
    }

    public static func date(_ d: Date) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm"
        return f.string(from: d)
    }
}

/// Why a script stopped, naming the script and the entry.
public struct ScriptError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// A command used the wrong way: a short usage line.
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

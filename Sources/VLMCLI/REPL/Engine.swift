import ArgumentParser
import Foundation
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

    public init(console: Console, store: Store) {
        self.console = console
        self.store = store
    }

    // MARK: - Input

    /// Handles one REPL entry (a command or a message). Returns false when the user quits.
    /// Errors are printed as one line; nothing here ends the REPL.
    @discardableResult
    public func handle(_ entry: String) -> Bool {
        do {
            return try perform(entry)
        } catch {
            console.error("\(error)")
            return true
        }
    }

    /// One entry, its error thrown: a script stops there.
    private func perform(_ entry: String) throws -> Bool {
        if entry.hasPrefix("/") { return try command(entry) }
        try send(entry)
        return true
    }

    public static let commands = [
        "/load", "/image", "/clear", "/set", "/show", "/history", "/save", "/sessions", "/open", "/replay",
        "/run", "/adapter", "/finetune", "/eval", "/checkpoints", "/evals", "/make-demo-data", "/init-llava", "/merge", "/stats", "/help", "/quit",
    ]

    public static let settable = ["temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens", "system", "template"]

    private func command(_ entry: String) throws -> Bool {
        let parts = entry.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        let name = parts[0], args = Array(parts.dropFirst())
        let rest = entry.dropFirst(name.count).trimmingCharacters(in: .whitespaces)
        switch name {
        case "/quit", "/exit", "/bye":
            return false
        case "/help":
            console.line(Self.help)
        case "/load":
            guard args.count == 1 else { throw UsageError("/load MODEL (a .gguf file, a model folder, or a store name)") }
            try load(args[0])
        case "/image":
            guard !args.isEmpty else { throw UsageError("/image PATH… (attached to the next message)") }
            for path in args { try attach(path) }
        case "/clear":
            try requireModel()
            chat = ChatSession(model: model!, system: system)
            sessionID = nil
            pendingImages = []
            console.line("new chat")
        case "/set":
            guard args.count >= 2 || (args.count == 1 && ["system", "seed", "template"].contains(args[0])) else {
                throw UsageError("/set \(Self.settable.joined(separator: "|")) VALUE")
            }
            try set(args[0], rest.dropFirst(args[0].count).trimmingCharacters(in: .whitespaces))
        case "/show":
            show()
        case "/history":
            for m in chat?.messages ?? [] { console.line("\(m.role.rawValue): \(m.text)") }
        case "/stats":
            guard let s = lastStats else { console.line("no reply yet"); break }
            console.line(String(format: "time to first token %.3f s, prefill %.1f tok/s (%d tokens), decode %.1f tok/s (%d tokens)",
                                s.timeToFirstToken, s.prefillTokensPerSecond, s.promptTokens, s.decodeTokensPerSecond, s.generatedTokens))
        case "/save":
            guard args.count == 1 else { throw UsageError("/save NAME") }
            let id = try ensureSession()
            try store.renameSession(id, to: args[0])
            console.line("session \(id) saved as '\(args[0])'")
        case "/sessions":
            for s in try store.sessions() {
                console.line("\(s.id)\t\(s.name ?? "-")\t\(Self.date(s.created))\t\(s.turnCount) turns\t\(s.modelPath ?? "")")
            }
        case "/open":
            guard args.count == 1 else { throw UsageError("/open ID|NAME") }
            try open(args[0])
        case "/replay":
            guard let target = args.first, args.count <= 2, args.count == 1 || args[1] == "--check" else {
                throw UsageError("/replay ID [--check]")
            }
            let report = try Replay(store: store, console: console, shouldStop: shouldStop).run(try sessionID(target), check: args.count == 2)
            console.line(report.summary)
        case "/run":
            guard args.count == 1 else { throw UsageError("/run FILE.vlm") }
            try runScript(args[0])
        case "/checkpoints":
            let all = try store.checkpoints()
            if all.isEmpty { console.line("no checkpoints yet") }
            for c in all { console.line("run \(c.run)\tstep \(c.step)\t\(c.kind.rawValue)\t\(c.path)") }
        case "/finetune":
            try finetune(args)
        case "/adapter":
            try adapter(args)
        case "/eval":
            try evaluate(args)
        case "/evals":
            try storedEvals(args)
        case "/make-demo-data":
            console.line(try parse(DemoDataCommand.self, args, usage: "/make-demo-data --out DIR [--train N] … (vlmsh make-demo-data --help)").execute().line)
        case "/init-llava":
            console.line(try parse(InitLlavaCommand.self, args, usage: "/init-llava --out DIR [--text-model M] … (vlmsh init-llava --help)").execute())
        case "/merge":
            console.line(try parse(MergeCommand.self, args, usage: "/merge --model M --adapter DIR --out DIR (vlmsh merge --help)").execute().line)
        default:
            throw UsageError("unknown command \(name); /help lists them")
        }
        return true
    }

    /// A subcommand's arguments parsed as `vlmsh` would, or one usage line.
    private func parse<C: ParsableCommand>(_ type: C.Type, _ args: [String], usage: String) throws -> C {
        do { return try C.parse(args) } catch { throw UsageError("\(C.configuration.commandName ?? ""): \(C.message(for: error)) (usage: \(usage))") }
    }

    static let help = """
        /load MODEL            load a .gguf file, a model folder or a store name
        /image PATH…           attach images to the next message
        /clear                 start a new chat with the same model
        /set KEY VALUE         temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens, system, template
        /show                  model, architecture, parameters, template
        /history               this chat's messages
        /stats                 time to first token and tokens/s of the last reply
        /save NAME             name this session
        /sessions              stored sessions
        /open ID|NAME          continue a stored session
        /replay ID [--check]   re-run a stored session; --check compares replies
        /run FILE.vlm          run a notebook script
        /checkpoints           fine-tune checkpoints in the store
        /finetune --data F --out DIR [--mode lora|projector|lora+projector|vision+…] [--steps N] …
                               fine-tune the loaded model (vlmsh finetune --help lists the options)
        /adapter load|unload PATH  apply a LoRA / projector folder (PEFT or vlmsh), or remove it
        /eval --data F [--limit N] [--blank-images] …  score the loaded model (vlmsh eval --help)
        /evals DATA                   stored evals of a data file, oldest first
        /make-demo-data --out DIR …   write the synthetic shapes dataset (vlmsh make-demo-data --help)
        /init-llava --out DIR …       a new LLaVA folder around a language model (vlmsh init-llava --help)
        /merge --model M --adapter DIR --out DIR   an adapter merged into a new model folder
        /help, /quit           (Ctrl-D also quits; Ctrl-C stops a reply)
        \"\"\"                    starts and ends a multi-line message
        """

    // MARK: - Model and settings

    public func load(_ reference: String) throws {
        let path = try ModelStore.resolve(reference)
        let loaded = try ProgressBar.run("loading \((path as NSString).lastPathComponent)") { _ in
            try loadChatModel(path: path, template: templateOverride)
        }
        activeAdapter = nil   // it belonged to the previous model
        model = loaded
        modelPath = path
        modelRecord = try store.upsertModel(path: path, fingerprint: try ModelFingerprint.compute(path),
                                            architecture: (loaded as? TextModel)?.architecture ?? "llava")
        chat = ChatSession(model: loaded, system: system)
        sessionID = nil
        pendingImages = []
        console.line("loaded \(path)" + (loaded is TextModel ? "" : " (it sees images: /image PATH, then ask about them)"))
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

    private func requireModel() throws {
        if model == nil { try load(defaultModel) }
    }

    func requireLoadedModel() throws { try requireModel() }

    private func set(_ key: String, _ value: String) throws {
        func number<T: LosslessStringConvertible>(_: T.Type) throws -> T {
            guard let v = T(value) else { throw UsageError("/set \(key): '\(value)' is not a number") }
            return v
        }
        switch key {
        case "temperature": parameters.temperature = try number(Float.self)
        case "top_p": parameters.topP = try number(Float.self)
        case "top_k": parameters.topK = try number(Int.self)
        case "min_p": parameters.minP = try number(Float.self)
        case "repeat_penalty": parameters.repetitionPenalty = try number(Float.self)
        case "max_tokens": parameters.maxTokens = try number(Int.self)
        case "seed": fixedSeed = value.isEmpty || value == "random" ? nil : try number(UInt64.self)
        case "system":
            system = value.isEmpty ? nil : value
            chat?.system = system
        case "template":
            templateOverride = value.isEmpty ? nil : value
            if let path = modelPath { try load(path) }
        default:
            throw UsageError("/set \(Self.settable.joined(separator: "|")) VALUE")
        }
    }

    private func show() {
        guard let model else { console.line("no model loaded"); return }
        console.line("model        \(modelPath ?? "")")
        if let text = model as? TextModel { console.line("architecture \(text.architecture)") }
        let c = model.decoder.config
        console.line("text model   \(c.modelType), \(c.numHiddenLayers) layers, hidden \(c.hiddenSize), vocab \(c.vocabSize)")
        console.line("images       \(model.images.map { "\($0.featureCount) positions per image" } ?? "no")")
        console.line("template     \(model.template.name)")
        console.line("parameters   " + String(format: "temperature %g, top_k %d, top_p %g, min_p %g, repeat_penalty %g, max_tokens %d, seed %@",
                                              parameters.temperature, parameters.topK, parameters.topP, parameters.minP,
                                              parameters.repetitionPenalty, parameters.maxTokens, fixedSeed.map(String.init) ?? "random"))
        if let system { console.line("system       \(system)") }
        console.line("session      \(sessionID.map(String.init) ?? "(new)")")
    }

    // MARK: - Images

    public func attach(_ path: String) throws {
        try requireModel()
        guard let support = model?.images else { throw UsageError("\(modelPath ?? "this model") takes no images") }
        let expanded = (path as NSString).expandingTildeInPath
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: expanded)) } catch {
            throw UsageError("\(path): cannot read file")
        }
        let image = try data.withUnsafeBytes { try ImageLoader.decode($0, path: expanded) }
        let hash = ContentHash.hex(data)
        let record = try store.addImage(sha256: hash, path: expanded, width: image.width, height: image.height, bytes: Int64(data.count))
        pendingImages.append((ImageInput(hash: hash, pixels: support.preprocess(image)), record, expanded))
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
        let generator = try ProgressBar.steps({ $0 == 1 ? "encoding image" : "encoding \($0) images" }) { report in
            try chat.send(text, images: images.map(\.input), parameters: p, encodeProgress: report)
        }
        while let token = try generator.next() {
            console.write(token.text)
            if shouldStop() { generator.cancel() }
        }
        console.write("\n")
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

    func sessionID(_ reference: String) throws -> Int64 {
        if let id = Int64(reference), try store.session(id: id) != nil { return id }
        if let s = try store.session(named: reference) { return s.id }
        throw UsageError("no session '\(reference)'")
    }

    /// Continues a stored session: same model, its messages and images, new turns appended to it.
    public func open(_ reference: String) throws {
        let id = try sessionID(reference)
        guard let record = try store.session(id: id) else { throw UsageError("no session '\(reference)'") }
        if let path = record.model?.path, path != modelPath { try load(path) }
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
        guard let data = FileManager.default.contents(atPath: record.path) else { throw UsageError("\(record.path): image is gone") }
        let hash = ContentHash.hex(data)
        guard hash == record.sha256 else { throw UsageError("\(record.path): image changed since the session (content hash differs)") }
        let image = try data.withUnsafeBytes { try ImageLoader.decode($0, path: record.path) }
        return ImageInput(hash: hash, pixels: support.preprocess(image))
    }

    public func runScript(_ path: String) throws {
        let expanded = (path as NSString).expandingTildeInPath
        guard let text = try? String(contentsOfFile: expanded, encoding: .utf8) else { throw UsageError("\(path): cannot read script") }
        for entry in InputAssembler.entries(of: text) {
            if entry.hasPrefix("/") { console.line("» \(entry)") } else { console.line("» \(entry.replacingOccurrences(of: "\n", with: "\n  "))") }
            // Like a notebook's "run all", the script stops at the first failing entry: later
            // entries would work on what it did not make (a stale model, a missing folder).
            do {
                if try !perform(entry) { break }
            } catch {
                throw UsageError("\(path): stopped at \"\(entry.prefix(60))\(entry.count > 60 ? "…" : "")\": \(error)")
            }
        }
    }

    static func date(_ d: Date) -> String {
        let f = DateFormatter()
        f.dateFormat = "yyyy-MM-dd HH:mm"
        return f.string(from: d)
    }
}

/// A command used the wrong way: a short usage line.
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

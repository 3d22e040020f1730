import Foundation
import VLMGeneration
import VLMStore

/// Re-runs a stored session's user turns in order with its recorded model, parameters, seeds and
/// images, as a new session linked to the original; `check` compares each reply with the record.
public struct Replay {
    let store: Store
    let console: Console
    let shouldStop: () -> Bool

    public struct TurnResult: Codable, Sendable {
        public let index: Int
        public let identical: Bool
        public let note: String?
    }

    public struct Report: Sendable {
        public let session: Int64
        public let turns: [TurnResult]
        public let notes: [String]
        public var summary: String {
            let same = turns.filter(\.identical).count
            return (notes + ["replay stored as session \(session): \(same)/\(turns.count) replies identical"]).joined(separator: "\n")
        }
    }

    public init(store: Store, console: Console, shouldStop: @escaping () -> Bool = { false }) {
        self.store = store
        self.console = console
        self.shouldStop = shouldStop
    }

    public func run(_ id: Int64, check: Bool) throws -> Report {
        guard let original = try store.session(id: id), let model = original.model else {
            throw UsageError("session \(id) has no recorded model")
        }
        var notes: [String] = []
        let (path, mmproj) = Engine.parseRecordedModel(model.path)
        let fingerprint = try? ModelFingerprint.compute(path, mmproj: mmproj)
        if fingerprint != model.fingerprint {
            notes.append("note: \(model.path) changed since the session (fingerprint differs)")
        }
        let engine = Engine(console: console, store: store)
        engine.shouldStop = shouldStop
        engine.parentSession = id
        try engine.load(path, mmproj: mmproj)
        if let system = try? JSONDecoder().decode(SessionSettings.self, from: Data(original.params.utf8)).system {
            engine.system = system
        }
        let turns = try store.turns(session: id)
        var results: [TurnResult] = []
        for (i, turn) in turns.enumerated() where turn.role == .user {
            let recorded = turns.dropFirst(i + 1).first { $0.role == .assistant }
            let params = (try? JSONDecoder().decode(GenerationParameters.self, from: Data((turn.params ?? "{}").utf8))) ?? GenerationParameters()
            var changed: String?
            for image in turn.images where (try? ContentHash.hex(file: image.path)) != image.sha256 {
                changed = "\(image.path): image changed or missing since the session"
            }
            if let changed {
                notes.append("turn \(turn.index): \(changed)")
                results.append(TurnResult(index: turn.index, identical: false, note: changed))
                continue
            }
            console.line("» \(turn.text)")
            let reply = try engine.resend(turn.text, parameters: params, images: turn.images.map(\.path))
            if check, let recorded {
                let same = reply == recorded.text
                results.append(TurnResult(index: recorded.index, identical: same, note: nil))
                console.line(same ? "  [identical]" : "  [different] recorded: \(recorded.text)")
            }
        }
        return Report(session: engine.sessionID ?? -1, turns: results, notes: notes)
    }
}

/// The session-level settings kept in a session's params JSON.
struct SessionSettings: Codable {
    var system: String?
    var parameters: GenerationParameters?
}

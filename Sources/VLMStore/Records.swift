import Foundation

// Plain value types handed out by `Store`. They carry no database handle, so they cross
// threads and actors freely. JSON columns travel as minified JSON text: the store does not
// need to understand them, and each caller decodes them into its own types.

public enum Role: String, Sendable, Codable, CaseIterable {
    case system, user, assistant
}

public enum RunKind: String, Sendable, Codable, CaseIterable {
    case finetune
}

public enum RunStatus: String, Sendable, Codable, CaseIterable {
    case running, completed, failed, stopped
}

public enum CheckpointKind: String, Sendable, Codable, CaseIterable {
    case lora, projector, full
    case loraProjector = "lora+projector"
    case visionProjector = "vision+projector"
    case visionLoRAProjector = "vision+lora+projector"
}

public enum ExportFormat: String, Sendable, CaseIterable {
    case md, jsonl, llava
}

public struct ModelRecord: Sendable, Equatable {
    public var id: Int64
    public var path: String
    public var fingerprint: String
    public var architecture: String
    public var created: Date
    /// Last time `upsertModel` saw this fingerprint (the path is updated then too).
    public var lastSeen: Date
}

public struct SessionRecord: Sendable, Equatable {
    public var id: Int64
    public var name: String?
    public var created: Date
    public var model: ModelRecord?
    /// Session parameters as minified JSON text.
    public var params: String
    public var template: String?
    /// The session this one replays, if any.
    public var parent: Int64?
}

public struct SessionSummary: Sendable, Equatable {
    public var id: Int64
    public var name: String?
    public var created: Date
    public var modelPath: String?
    public var turnCount: Int
}

public struct TurnTimings: Sendable, Equatable {
    /// Time to first token, seconds.
    public var ttft: Double?
    public var prefillTokensPerSecond: Double?
    public var decodeTokensPerSecond: Double?

    public init(ttft: Double? = nil, prefillTokensPerSecond: Double? = nil, decodeTokensPerSecond: Double? = nil) {
        self.ttft = ttft
        self.prefillTokensPerSecond = prefillTokensPerSecond
        self.decodeTokensPerSecond = decodeTokensPerSecond
    }
}

public struct ImageRecord: Sendable, Equatable {
    public var id: Int64
    public var sha256: String
    /// Where the image was first seen; later duplicates keep this path.
    public var path: String
    public var width: Int
    public var height: Int
    public var bytes: Int64
    public var created: Date
}

public struct TurnRecord: Sendable, Equatable {
    public var id: Int64
    public var session: Int64
    /// 0-based position in the session, assigned by the store.
    public var index: Int
    public var role: Role
    public var text: String
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var timings: TurnTimings
    /// Generation parameters as minified JSON text.
    public var params: String?
    public var seed: UInt64?
    public var created: Date
    /// Images in the order they were attached.
    public var images: [ImageRecord]
}

public struct RunRecord: Sendable, Equatable {
    public var id: Int64
    public var session: Int64?
    public var kind: RunKind
    /// Run arguments as minified JSON text.
    public var args: String
    public var status: RunStatus
    public var started: Date
    public var finished: Date?
    public var outDir: String?
}

public struct MetricRecord: Sendable, Equatable {
    public var run: Int64
    public var step: Int
    public var loss: Double?
    public var lr: Double?
    public var gradNorm: Double?
    public var tokensPerSecond: Double?
    public var evalLoss: Double?

    public init(run: Int64, step: Int, loss: Double? = nil, lr: Double? = nil, gradNorm: Double? = nil,
                tokensPerSecond: Double? = nil, evalLoss: Double? = nil) {
        self.run = run
        self.step = step
        self.loss = loss
        self.lr = lr
        self.gradNorm = gradNorm
        self.tokensPerSecond = tokensPerSecond
        self.evalLoss = evalLoss
    }
}

public struct CheckpointRecord: Sendable, Equatable {
    public var id: Int64
    public var run: Int64
    public var step: Int
    public var path: String
    public var kind: CheckpointKind
    public var sha256: String?
    public var created: Date
}

public struct EvalRecord: Sendable, Equatable {
    public var id: Int64
    public var modelPath: String
    public var checkpoint: Int64?
    public var dataset: String
    public var metric: String
    public var value: Double
    public var created: Date
    /// Per-eval details as minified JSON text.
    public var details: String?
}

/// Everything the store throws: one line naming the database file.
public struct StoreError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case open, migration, nameTaken, notFound, invalidArgument, corrupt, sqlite
    }

    public var kind: Kind
    public var path: String
    public var message: String

    public init(_ kind: Kind, path: String, _ message: String) {
        self.kind = kind
        self.path = path
        // Keep it to one line: SQLite messages sometimes quote multi-line SQL.
        self.message = message.split(whereSeparator: \.isNewline).joined(separator: " ")
    }

    public var description: String { "\(path): \(message)" }
}

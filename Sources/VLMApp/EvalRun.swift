import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

/// What an evaluation is asked to do: `vlmsh eval`'s and `/eval`'s arguments.
public struct EvalRequest: Sendable {
    public var data: String
    public var imageFolder: String?
    public var limit: Int?
    /// A comma list of "kind" tags to keep.
    public var kinds: String?
    public var maxNewTokens: Int
    public var blankImages: Bool
    public var skipBadRows: Bool

    public init(data: String, imageFolder: String? = nil, limit: Int? = nil, kinds: String? = nil, maxNewTokens: Int = 32,
                blankImages: Bool = false, skipBadRows: Bool = false) {
        self.data = data; self.imageFolder = imageFolder; self.limit = limit; self.kinds = kinds
        self.maxNewTokens = maxNewTokens; self.blankImages = blankImages; self.skipBadRows = skipBadRows
    }
}

/// A finished evaluation: the scores, the store rows written, and what it was run on.
public struct EvalOutcome {
    public let request: EvalRequest
    public let modelPath: String
    public let adapter: AppliedAdapter?
    public let result: EvalResult
    /// Ids of the evals rows written (none without a store).
    public let stored: [Int64]

    /// The fields stored as each eval row's details (and the start of `vlmsh eval --json`).
    public var details: [String: Any] {
        ["adapter": adapter.map { EvalRun.absolute($0.directory) } ?? NSNull(), "adapter_kind": adapter?.kind.rawValue ?? NSNull(),
         "kinds": request.kinds ?? NSNull(),
         "rows": result.rows.count, "tokens": result.tokens, "generated_rows": result.generatedRows,
         "max_new_tokens": request.maxNewTokens, "limit": request.limit ?? NSNull(), "blank_images": request.blankImages,
         "skipped": result.skippedRows.count, "image_folder": request.imageFolder ?? NSNull()]
    }

    /// The scores as a few lines: overall, then per kind.
    public var summary: String {
        func percent(_ x: Double) -> String { String(format: "%.1f%%", 100 * x) }
        let r = result
        var what = (modelPath as NSString).lastPathComponent
        if let adapter { what += " + " + (adapter.directory as NSString).lastPathComponent }
        var lines = ["\(what) on \((request.data as NSString).lastPathComponent): \(r.rows.count) rows, \(r.tokens) target tokens"
                     + (r.blankImages ? ", images blanked" : "")]
        lines.append(String(format: "loss %.4f   perplexity %.3f   token accuracy %@", r.meanLoss, r.perplexity, percent(r.tokenAccuracy)))
        if let em = r.exactMatch, let nm = r.normalizedMatch {
            let t = r.total
            lines.append("exact match \(t.exactMatches)/\(t.generated) (\(percent(em)))   normalized \(t.normalizedMatches)/\(t.generated) (\(percent(nm)))")
            // Each kind, then its groups ("colour/demo", "colour/other") under it.
            let kinds = r.byKind.merging(r.byKindAndGroup) { a, _ in a }.sorted { $0.key < $1.key }.filter { $0.value.generated > 0 }
            let width = kinds.map(\.key.count).max() ?? 0
            for (kind, s) in kinds {
                lines.append("  \(kind.padding(toLength: width, withPad: " ", startingAt: 0))  exact \(s.exactMatches)/\(s.generated) (\(percent(s.exactMatch)))"
                             + "   normalized \(s.normalizedMatches)/\(s.generated) (\(percent(s.normalizedMatch)))")
            }
        }
        if !r.skippedRows.isEmpty { lines.append("skipped \(r.skippedRows.count) bad rows; the first: \(r.skippedRows[0])") }
        if !stored.isEmpty { lines.append("stored \(stored.count) metrics in the evals table") }
        return lines.joined(separator: "\n")
    }
}

/// Scores a model as it is (with `applied` for the record) on LLaVA-format data and stores one
/// evals row per metric: `vlmsh eval` and the REPL's `/eval`.
public enum EvalRun {
    public static func run(_ request: EvalRequest, chat: ChatModel, modelPath: String, applied: AppliedAdapter?,
                           store: Store?, console: Console) throws -> EvalOutcome {
        let kinds = request.kinds.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) }
        let result = try console.steps({ "evaluating \($0) rows" }) { report in
            try Evaluator.run(chat: chat, dataset: request.data, imageFolder: request.imageFolder, maxNewTokens: request.maxNewTokens,
                              limit: request.limit, kinds: kinds, blankImages: request.blankImages, skipBadRows: request.skipBadRows,
                              progress: report)
        }
        var outcome = EvalOutcome(request: request, modelPath: modelPath, adapter: applied, result: result, stored: [])
        guard let store else { return outcome }
        _ = try store.upsertModel(path: modelPath, fingerprint: try ModelFingerprint.compute(modelPath),
                                  architecture: (chat as? TextModel)?.architecture ?? "llava")
        let checkpoint = try applied.flatMap { a in try store.checkpoints().first { samePath($0.path, a.directory) }?.id }
        let details = try jsonText(outcome.details)
        var stored: [Int64] = []
        for metric in result.metrics where metric.value.isFinite {
            stored.append(try store.addEval(modelPath: modelPath, checkpoint: checkpoint, dataset: absolute(request.data),
                                            metric: metric.name, value: metric.value, details: details))
        }
        outcome = EvalOutcome(request: request, modelPath: modelPath, adapter: applied, result: result, stored: stored)
        return outcome
    }

    /// A JSON number, or null for NaN and infinities (which JSON cannot hold).
    public static func number(_ x: Double) -> Any { x.isFinite ? x : NSNull() }

    public static func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

    static func samePath(_ a: String, _ b: String) -> Bool {
        URL(fileURLWithPath: a).standardizedFileURL.resolvingSymlinksInPath().path
            == URL(fileURLWithPath: b).standardizedFileURL.resolvingSymlinksInPath().path
    }

    static func jsonText(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }
}

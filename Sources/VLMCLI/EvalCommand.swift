import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

/// `vlmsh eval`: a model (optionally with an adapter) scored on fine-tuning data: teacher-forced
/// loss, perplexity and token accuracy on the assistant tokens, exact match of greedy answers
/// (also per "kind" tag), stored in the evals table.
struct EvalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Score a model (and adapter) on LLaVA-format data: loss, perplexity, token accuracy, exact match.",
        discussion: """
            Each row's assistant tokens are scored teacher-forced (mean cross-entropy, perplexity, argmax \
            accuracy); then the conversation up to its last assistant turn is answered greedily (with its \
            image) and compared with that turn: exact match after trimming, and a normalized match that \
            ignores case and trailing punctuation. Rows tagged with "kind" are also scored per kind. \
            --blank-images replaces every image with a mid-grey one of the same size: the baseline that \
            shows how much the answers depend on the image. Results go to the store's evals table, one \
            row per metric (blank-image metrics prefixed "blank_images/"), unless --no-store.
            """)

    @OptionGroup var model: ModelOptions
    @Option(name: .long, help: "Evaluation data: LLaVA JSON or JSON Lines (conversation or pre-tokenized rows).") var data: String
    @Option(name: .long, help: "Folder image paths are relative to (default: the data file's folder).") var imageFolder: String?
    @Option(name: .long, help: "Evaluate only the first N rows.") var limit: Int?
    @Option(name: .long, help: "Evaluate only rows of these kinds (a comma list of \"kind\" tags).") var kinds: String?
    @Option(name: .long, help: "Most tokens of each greedy answer (0: loss only, no answers).") var maxNewTokens = 32
    @Flag(name: .long, help: "Replace every image with a mid-grey image of the same size (image ablation).") var blankImages = false
    @Flag(name: .long, help: "Skip rows that cannot be used instead of stopping at the first.") var skipBadRows = false
    @Flag(name: .long, help: "Do not record the results in the store.") var noStore = false
    @Flag(name: .long, help: "Print one JSON object (metrics, per-kind scores and every row).") var json = false

    func validate() throws {
        if let limit, limit <= 0 { throw ValidationError("--limit must be positive") }
        if maxNewTokens < 0 { throw ValidationError("--max-new-tokens must be ≥ 0") }
    }

    func run() async throws {
        let modelPath = try model.path()
        let (chat, applied) = try model.loadWithAdapter(progress: true)
        defer { applied?.unload() }
        try evaluate(chat, modelPath: modelPath, applied: applied, store: noStore ? nil : try openStore(), print: { print($0) })
    }

    /// Scores `chat` as it is (with `applied` for the record), stores and prints the result.
    /// The REPL's /eval calls this on its loaded model.
    func evaluate(_ chat: ChatModel, modelPath: String, applied: AppliedAdapter?, store: Store?, print: (String) -> Void) throws {
        let result = try ProgressBar.steps({ "evaluating \($0) rows" }) { report in
            try Evaluator.run(chat: chat, dataset: data, imageFolder: imageFolder, maxNewTokens: maxNewTokens, limit: limit,
                              kinds: kinds.map { Set($0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }) },
                              blankImages: blankImages, skipBadRows: skipBadRows, progress: report)
        }

        var stored: [Int64] = []
        if let store {
            _ = try store.upsertModel(path: modelPath, fingerprint: try ModelFingerprint.compute(modelPath),
                                      architecture: (chat as? TextModel)?.architecture ?? "llava")
            let checkpoint = try applied.flatMap { a in
                try store.checkpoints().first { Self.samePath($0.path, a.directory) }?.id
            }
            let details = try Self.jsonText(detailsObject(result, applied: applied))
            for metric in result.metrics where metric.value.isFinite {
                stored.append(try store.addEval(modelPath: modelPath, checkpoint: checkpoint, dataset: Self.absolute(data),
                                                metric: metric.name, value: metric.value, details: details))
            }
        }

        if json {
            var object = detailsObject(result, applied: applied)
            object["model"] = modelPath
            object["dataset"] = data
            object["loss"] = Self.number(result.meanLoss)
            object["perplexity"] = Self.number(result.perplexity)
            object["token_accuracy"] = Self.number(result.tokenAccuracy)
            object["exact_match"] = result.exactMatch.map(Self.number) ?? NSNull()
            object["exact_match_normalized"] = result.normalizedMatch.map(Self.number) ?? NSNull()
            object["by_kind"] = Dictionary(uniqueKeysWithValues: result.byKind.map { kind, s in
                (kind, ["rows": s.rows, "generated": s.generated, "exact_matches": s.exactMatches,
                        "normalized_matches": s.normalizedMatches, "exact_match": s.exactMatch,
                        "exact_match_normalized": s.normalizedMatch, "tokens": s.tokens,
                        "loss": Self.number(s.meanLoss), "token_accuracy": s.tokenAccuracy] as [String: Any])
            })
            object["metrics"] = Dictionary(uniqueKeysWithValues: result.metrics.map { ($0.name, Self.number($0.value)) })
            object["stored"] = stored.count
            object["eval_ids"] = stored.map { Int($0) }
            object["per_row"] = result.rows.map { r -> [String: Any] in
                ["source": r.source, "id": r.id ?? NSNull(), "kind": r.kind ?? NSNull(), "has_image": r.hasImage,
                 "tokens": r.tokens, "loss": Self.number(r.loss), "correct": r.correct,
                 "reference": r.reference ?? NSNull(), "generated": r.generated ?? NSNull(),
                 "exact_match": r.exactMatch, "normalized_match": r.normalizedMatch]
            }
            object["skipped_rows"] = result.skippedRows
            try printJSON(object)
        } else {
            print(summary(result, modelPath: modelPath, applied: applied, stored: stored.count))
        }
    }

    /// The fields stored as each eval row's details (and the start of --json).
    func detailsObject(_ result: EvalResult, applied: AppliedAdapter?) -> [String: Any] {
        ["adapter": applied.map { Self.absolute($0.directory) } ?? NSNull(), "adapter_kind": applied?.kind.rawValue ?? NSNull(),
         "kinds": kinds ?? NSNull(),
         "rows": result.rows.count, "tokens": result.tokens, "generated_rows": result.generatedRows,
         "max_new_tokens": maxNewTokens, "limit": limit ?? NSNull(), "blank_images": blankImages,
         "skipped": result.skippedRows.count, "image_folder": imageFolder ?? NSNull()]
    }

    func summary(_ r: EvalResult, modelPath: String, applied: AppliedAdapter?, stored: Int) -> String {
        func percent(_ x: Double) -> String { String(format: "%.1f%%", 100 * x) }
        var what = (modelPath as NSString).lastPathComponent
        if let adapter = applied?.directory { what += " + " + (adapter as NSString).lastPathComponent }
        var lines = ["\(what) on \((data as NSString).lastPathComponent): \(r.rows.count) rows, \(r.tokens) target tokens"
                     + (r.blankImages ? ", images blanked" : "")]
        lines.append(String(format: "loss %.4f   perplexity %.3f   token accuracy %@", r.meanLoss, r.perplexity, percent(r.tokenAccuracy)))
        if let em = r.exactMatch, let nm = r.normalizedMatch {
            let t = r.total
            lines.append("exact match \(t.exactMatches)/\(t.generated) (\(percent(em)))   normalized \(t.normalizedMatches)/\(t.generated) (\(percent(nm)))")
            let kinds = r.byKind.sorted { $0.key < $1.key }.filter { $0.value.generated > 0 }
            let width = kinds.map(\.key.count).max() ?? 0
            for (kind, s) in kinds {
                lines.append("  \(kind.padding(toLength: width, withPad: " ", startingAt: 0))  exact \(s.exactMatches)/\(s.generated) (\(percent(s.exactMatch)))"
                             + "   normalized \(s.normalizedMatches)/\(s.generated) (\(percent(s.normalizedMatch)))")
            }
        }
        if !r.skippedRows.isEmpty { lines.append("skipped \(r.skippedRows.count) bad rows; the first: \(r.skippedRows[0])") }
        if stored > 0 { lines.append("stored \(stored) metrics in the evals table") }
        return lines.joined(separator: "\n")
    }

    static func number(_ x: Double) -> Any { x.isFinite ? x : NSNull() }

    static func absolute(_ path: String) -> String { URL(fileURLWithPath: path).standardizedFileURL.path }

    static func samePath(_ a: String, _ b: String) -> Bool {
        URL(fileURLWithPath: a).standardizedFileURL.resolvingSymlinksInPath().path
            == URL(fileURLWithPath: b).standardizedFileURL.resolvingSymlinksInPath().path
    }

    static func jsonText(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }
}

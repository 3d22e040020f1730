import ArgumentParser
import Foundation
import VLMApp
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
            ignores case and trailing punctuation. Rows tagged with "kind" are also scored per kind, and per kind and "group" where both are tagged. \
            --blank-images replaces every image with a mid-grey one of the same size: the baseline that \
            shows how much the answers depend on the image. Results go to the store's evals table, one \
            row per metric (blank-image metrics prefixed "blank_images/"), unless --no-store.
            """)

    @OptionGroup var model: ModelOptions
    @Option(name: .long, help: "Evaluation data: LLaVA JSON or JSON Lines (conversation or pre-tokenized rows); files of more than \(TrainingDataset.eagerRowLimit) rows are read lazily, as --limit reaches them (bad rows met are skipped and listed).") var data: String
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

    /// The evaluation these options ask for.
    var request: EvalRequest {
        EvalRequest(data: data, imageFolder: imageFolder, limit: limit, kinds: kinds, maxNewTokens: maxNewTokens,
                    blankImages: blankImages, skipBadRows: skipBadRows)
    }

    func run() async throws {
        let (chat, applied) = try model.loadWithAdapter(progress: true)
        defer { applied?.unload() }
        let outcome = try EvalRun.run(request, chat: chat, modelPath: try model.path(), applied: applied,
                                      store: noStore ? nil : try openStore(), console: TerminalConsole())
        if json { try printJSON(Self.jsonObject(outcome)) } else { print(outcome.summary) }
    }

    /// `--json`: the stored details, then the scores overall, per kind and per row.
    static func jsonObject(_ outcome: EvalOutcome) -> [String: Any] {
        let result = outcome.result, number = EvalRun.number
        var object = outcome.details
        object["model"] = outcome.modelPath
        object["dataset"] = outcome.request.data
        object["loss"] = number(result.meanLoss)
        object["perplexity"] = number(result.perplexity)
        object["token_accuracy"] = number(result.tokenAccuracy)
        object["exact_match"] = result.exactMatch.map(number) ?? NSNull()
        object["exact_match_normalized"] = result.normalizedMatch.map(number) ?? NSNull()
        object["by_kind"] = Dictionary(uniqueKeysWithValues: result.byKind.merging(result.byKindAndGroup) { a, _ in a }.map { kind, s in
            (kind, ["rows": s.rows, "generated": s.generated, "exact_matches": s.exactMatches,
                    "normalized_matches": s.normalizedMatches, "exact_match": s.exactMatch,
                    "exact_match_normalized": s.normalizedMatch, "tokens": s.tokens,
                    "loss": number(s.meanLoss), "token_accuracy": s.tokenAccuracy] as [String: Any])
        })
        object["metrics"] = Dictionary(uniqueKeysWithValues: result.metrics.map { ($0.name, number($0.value)) })
        object["stored"] = outcome.stored.count
        object["eval_ids"] = outcome.stored.map { Int($0) }
        object["per_row"] = result.rows.map { r -> [String: Any] in
            ["source": r.source, "id": r.id ?? NSNull(), "kind": r.kind ?? NSNull(), "group": r.group ?? NSNull(), "has_image": r.hasImage,
             "tokens": r.tokens, "loss": number(r.loss), "correct": r.correct,
             "reference": r.reference ?? NSNull(), "generated": r.generated ?? NSNull(),
             "exact_match": r.exactMatch, "normalized_match": r.normalizedMatch]
        }
        object["skipped_rows"] = result.skippedRows
        return object
    }
}

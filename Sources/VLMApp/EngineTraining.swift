import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

// The REPL's fine-tuning commands: /finetune trains the loaded model in place (the adapter is
// active for the following chat), with the same runner and store records as `vlmsh finetune`;
// /eval scores it as `vlmsh eval` does.

extension Engine {
    /// `/adapter load PATH` applies an adapter folder to the loaded model (one at a time);
    /// `/adapter unload` restores the model. The chat restarts on the changed weights.
    func adapter(_ args: [String], usage: UsageError) throws {
        guard let verb = args.first else { throw usage }
        switch verb {
        case "load":
            guard args.count == 2 else { throw usage }
            try requireModel()
            guard let model else { return }
            activeAdapter?.unload()
            activeAdapter = nil
            activeAdapter = try AppliedAdapter.apply(directory: args[1], to: model)
            restartChat()
            console.line("applied \(activeAdapter!.summary); new chat")
        case "unload":
            guard args.count <= 2 else { throw usage }
            guard let applied = activeAdapter else { console.line("no adapter loaded"); return }
            applied.unload()
            activeAdapter = nil
            restartChat()
            console.line("adapter removed; new chat")
        default:
            throw usage
        }
    }

    /// `/eval`: the loaded model scored as it is (with its adapter); `store` records the scores.
    public func evaluate(_ request: EvalRequest, store recording: Bool) throws {
        try requireModel()
        guard let model, let path = modelPath else { return }
        let outcome = try EvalRun.run(request, chat: model, modelPath: path, applied: activeAdapter,
                                      store: recording ? store : nil, console: console)
        console.line(outcome.summary)
    }

    /// `/evals DATA`: the stored evaluations of a data file, oldest first, one line per /eval
    /// (its exact-match scores overall and per kind), so a script can show before and after.
    func storedEvals(_ data: String) throws {
        let records = try store.evals(dataset: EvalRun.absolute(data))
        if records.isEmpty { console.line("no stored evals of \(data)"); return }
        // One /eval stores all its metrics with the same details; consecutive ids group them.
        var groups: [[EvalRecord]] = []
        for r in records {
            if let last = groups.last?.last, last.id == r.id - 1, last.details == r.details, last.modelPath == r.modelPath { groups[groups.count - 1].append(r) }
            else { groups.append([r]) }
        }
        for g in groups {
            let blank = g.contains { $0.metric.hasPrefix("blank_images/") }
            var scores: [String] = []
            for r in g where r.metric.contains("exact_match") && !r.metric.contains("normalized") {
                let name = r.metric.replacingOccurrences(of: "blank_images/", with: "").replacingOccurrences(of: "exact_match/", with: "")
                scores.append((name == "exact_match" ? "all" : name) + String(format: " %.1f%%", 100 * r.value))
            }
            var what = URL(fileURLWithPath: g[0].modelPath).lastPathComponent
            if let details = g[0].details, let object = try? JSONSerialization.jsonObject(with: Data(details.utf8)) as? [String: Any],
               let adapter = object["adapter"] as? String {
                what += " + " + URL(fileURLWithPath: adapter).lastPathComponent
            }
            if blank { what += " (blank images)" }
            let line: String = "eval #\(g[0].id) \(Self.date(g[0].created)) \(what): exact match " + scores.joined(separator: ", ")
            console.line(line)
        }
    }

    /// `/finetune`: trains the loaded model; afterwards its weights are as before and the result
    /// is applied as an adapter, so `/adapter unload` returns to the base model.
    public func finetune(_ request: FineTuneRequest) throws {
        try requireModel()
        guard let model, let path = modelPath else { return }
        // Training starts from the model as loaded: an applied adapter is taken off first.
        activeAdapter?.unload()
        activeAdapter = nil
        let runner = FineTuneRunner(chat: model, modelPath: URL(fileURLWithPath: path).standardizedFileURL.path, request: request,
                                    store: store, console: console)
        runner.session = sessionID
        // Training changes the loaded weights in place; the snapshot (the model's own LoRA is
        // part of the base) puts them back, also when the run fails.
        let summary: FineTuneRunner.Summary
        do { summary = try WeightsSnapshot(of: model).restoring { try runner.run(shouldStop: shouldStop) } } catch {
            restartChat()
            throw error
        }
        activeAdapter = try AppliedAdapter.apply(directory: request.out, to: model)
        // Cached image features and KV prefixes belong to the old weights.
        restartChat()
        console.line(summary.text)
        console.line("applied \(activeAdapter!.summary); new chat (/adapter unload returns to the base model)")
    }
}

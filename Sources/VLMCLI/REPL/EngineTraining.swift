import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

// The REPL's fine-tuning commands: /finetune trains the loaded model in place (the adapter is
// active for the following chat), with the same options and store records as `vlmsh finetune`.

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

    /// `/eval --data F …`: `vlmsh eval` on the loaded model as it is (with its adapter).
    func evaluate(_ args: [String]) throws {
        let command: EvalCommand
        do { command = try EvalCommand.parse(args) } catch {
            throw UsageError("/eval: \(EvalCommand.message(for: error)) (usage: \(Engine.command(named: "/eval")!.usage))")
        }
        guard command.model.adapter == nil else { throw UsageError("/eval evaluates the loaded model; apply an adapter with /adapter load PATH first") }
        try requireModel()
        guard let model, let path = modelPath else { return }
        try command.evaluate(model, modelPath: path, applied: activeAdapter, store: command.noStore ? nil : store,
                             print: { [console] in console.line($0) })
    }

    /// `/evals DATA`: the stored evaluations of a data file, oldest first, one line per /eval
    /// (its exact-match scores overall and per kind), so a script can show before and after.
    func storedEvals(_ data: String) throws {
        let records = try store.evals(dataset: EvalCommand.absolute(data))
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

    func finetune(_ args: [String]) throws {
        let options: FineTuneOptions
        do { options = try FineTuneOptions.parse(args) } catch {
            throw UsageError("/finetune: \(FineTuneOptions.message(for: error)) (usage: \(Engine.command(named: "/finetune")!.usage))")
        }
        try requireModel()
        guard let model, let path = modelPath else { return }
        let interactive = console is TerminalConsole && ProgressBar.stderrIsTerminal
        let runner = FineTuneRunner(chat: model, modelPath: URL(fileURLWithPath: path).standardizedFileURL.path, options: options,
                                    store: store, output: interactive ? .interactive : .lines)
        runner.session = currentSession
        runner.printLine = { [console] in console.line($0) }
        // Training starts from the model as loaded: an applied adapter is taken off first.
        activeAdapter?.unload()
        activeAdapter = nil
        // Training changes the loaded weights in place; afterwards they are put back and the
        // result applied as an adapter, so /adapter unload returns to the base model.
        // The model's own LoRA (a composed folder's) is part of the base.
        let baseAdapters = AppliedAdapter.installedAdapters(on: model.decoder)
        let projector = (model as? VisionLanguageModel)?.llava.projector
        let original = projector.map(ProjectorFiles.snapshot)
        let tower = (model as? VisionLanguageModel)?.llava.visionTransformer
        let originalTower = tower.map(VisionTowerFiles.snapshot)
        func restoreBase() throws {
            try model.decoder.setAdapters(baseAdapters)
            if let projector, let original { ProjectorFiles.apply(original, to: projector) }
            if let tower, let originalTower { VisionTowerFiles.apply(originalTower, to: tower) }
        }
        let summary: FineTuneRunner.Summary
        do { summary = try runner.run(shouldStop: shouldStop) } catch {
            try? restoreBase()
            restartChat()
            throw error
        }
        try restoreBase()
        activeAdapter = try AppliedAdapter.apply(directory: options.out, to: model)
        // Cached image features and KV prefixes belong to the old weights.
        restartChat()
        console.line(summary.text)
        console.line("applied \(activeAdapter!.summary); new chat (/adapter unload returns to the base model)")
    }
}

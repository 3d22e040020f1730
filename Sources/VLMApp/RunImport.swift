import Foundation
import VLMGeneration
import VLMStore
import VLMTraining

/// `vlmsh import-run DIR`: a run trained elsewhere (LLaVA's train.py, or an exported launch folder
/// under torchrun / DeepSpeed) registered in the store like one of vlmsh's: its metrics by step,
/// its checkpoints, and its folder as the output `--adapter` and `/adapter load` read.
public enum RunImport {
    /// Registers `run`. With a model, the adapter is first applied to it (and removed), so a folder
    /// that does not fit the model is refused before anything is recorded.
    public static func register(_ run: ImportedRun, model: (path: String, chat: ChatModel)?, store: Store) throws -> (id: Int64, summary: String) {
        var args: [String: Any] = ["imported_from": run.directory, "mode": run.kind.rawValue, "global_step": run.globalStep]
        if let base = run.baseModel { args["base_model"] = base }
        if let model {
            try AppliedAdapter.apply(directory: run.directory, to: model.chat).unload()
            for checkpoint in run.checkpoints { try AppliedAdapter.apply(directory: checkpoint.path, to: model.chat).unload() }
            let id = try store.upsertModel(path: model.path, fingerprint: try ModelFingerprint.compute(model.path),
                                           architecture: model.chat is VisionLanguageModel ? "llava" : model.chat.decoder.config.modelType)
            args["model"] = model.path; args["model_id"] = Int(id)
        }
        let text = String(decoding: try JSONSerialization.data(withJSONObject: args, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
        let id = try store.startRun(args: text, outDir: run.directory)
        try store.addMetrics(run.log.map {
            MetricRecord(run: id, step: $0.step, loss: $0.loss, lr: $0.learningRate, gradNorm: $0.gradNorm, tokensPerSecond: nil, evalLoss: $0.evalLoss)
        })
        for checkpoint in run.checkpoints {
            guard let kind = CheckpointKind(rawValue: checkpoint.kind.rawValue) else { continue }
            let sha = try checkpoint.kind.mainFile(in: checkpoint.path).map { try ContentHash.hex(file: checkpoint.path + "/" + $0) }
            try store.addCheckpoint(run: id, step: checkpoint.step, path: checkpoint.path, kind: kind, sha256: sha)
        }
        try store.updateRunStatus(id, .completed)
        let steps = run.log.filter { $0.loss != nil }.count
        var summary = "run \(id) imported from \(run.directory): \(run.kind.rawValue), \(run.globalStep) steps (\(steps) logged)"
        if let last = run.log.last(where: { $0.loss != nil })?.loss { summary += String(format: ", last loss %.4f", last) }
        summary += ", \(run.checkpoints.count) checkpoint\(run.checkpoints.count == 1 ? "" : "s")"
        return (id, summary)
    }
}

import Foundation
import VLMFormats

/// What a run of the Hugging Face Trainer left in its output folder (LLaVA's train.py, or the
/// launch folder vlmsh exports): the final adapter (a PEFT LoRA, the projector as safetensors,
/// `mm_projector.bin` or LLaVA's `non_lora_trainables.bin`), `trainer_state.json`'s log and the
/// `checkpoint-N/` folders. Only those files are read; pickled extras (`training_args.bin`,
/// `optimizer.pt`, `rng_state.pth`) are never opened.
public struct ImportedRun: Sendable {
    /// One step's figures from `log_history` (training and evaluation entries of a step merged).
    public struct Entry: Sendable, Equatable {
        public var step: Int
        public var loss: Double?
        public var learningRate: Double?
        public var gradNorm: Double?
        public var evalLoss: Double?
    }

    public struct Checkpoint: Sendable {
        public var step: Int
        public var path: String
        public var kind: AdapterKind
    }

    public let directory: String
    /// What the folder's own adapter files hold (the final weights).
    public let kind: AdapterKind
    /// `adapter_config.json`'s `base_model_name_or_path`, when there is a LoRA.
    public let baseModel: String?
    public let globalStep: Int
    public let log: [Entry]
    public let checkpoints: [Checkpoint]

    public static func read(directory: String) throws -> ImportedRun {
        let kind = try AdapterKind.detect(directory: directory)
        let statePath = directory + "/trainer_state.json"
        guard let data = try SmallFile.readIfPresent(statePath) else {
            throw FormatError(statePath, "missing: not the output folder of a Hugging Face Trainer run")
        }
        guard let state = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FormatError(statePath, "not a JSON object")
        }
        guard let globalStep = state["global_step"] as? Int, globalStep >= 0 else {
            throw FormatError(statePath, "global_step is missing or not a count")
        }
        guard let history = state["log_history"] as? [[String: Any]] else {
            throw FormatError(statePath, "log_history is missing or not a list of objects")
        }
        var byStep: [Int: Entry] = [:]
        for (index, item) in history.enumerated() {
            guard let step = item["step"] as? Int, step >= 0, step <= globalStep else {
                throw FormatError(statePath, "log_history[\(index)]: step is missing or outside 0…\(globalStep)")
            }
            func number(_ key: String) throws -> Double? {
                guard let value = item[key] else { return nil }
                guard let x = (value as? NSNumber)?.doubleValue, x.isFinite else {
                    throw FormatError(statePath, "log_history[\(index)].\(key) is not a finite number")
                }
                return x
            }
            // The run's closing summary (train_loss, train_runtime, …) is no step's figure.
            let loss = try number("loss"), evalLoss = try number("eval_loss")
            guard loss != nil || evalLoss != nil else { continue }
            var entry = byStep[step] ?? Entry(step: step)
            if let loss {
                entry.loss = loss
                entry.learningRate = try number("learning_rate")
                entry.gradNorm = try number("grad_norm")
            }
            if let evalLoss { entry.evalLoss = evalLoss }
            byStep[step] = entry
        }
        var baseModel: String?
        if kind.trainsLoRA { baseModel = try LoRAConfiguration.read(directory: directory).baseModel }
        return ImportedRun(directory: directory, kind: kind, baseModel: baseModel, globalStep: globalStep,
                           log: byStep.values.sorted { $0.step < $1.step }, checkpoints: try checkpoints(in: directory))
    }

    /// The `checkpoint-N` folders holding an adapter, by step.
    static func checkpoints(in directory: String) throws -> [Checkpoint] {
        var out: [Checkpoint] = []
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            guard name.hasPrefix("checkpoint-"), let step = Int(name.dropFirst("checkpoint-".count)), step >= 0 else { continue }
            let path = directory + "/" + name
            guard let kind = try? AdapterKind.detect(directory: path) else { continue }
            out.append(Checkpoint(step: step, path: path, kind: kind))
        }
        return out.sorted { $0.step < $1.step }
    }
}

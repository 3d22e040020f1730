import ArgumentParser
import Foundation
import VLMModels
import VLMTraining

/// `vlmsh merge`: an adapter fused into its base model, written as a new Hugging Face folder.
struct MergeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fuse a LoRA (and trained projector) into the base model and write a new model folder.",
        discussion: """
            Each adapted linear weight becomes W + scale·B·A (computed in float32); a projector in the \
            adapter folder replaces the base's. The output has the base's layout: config.json, \
            tokenizer and preprocessor files copied, one model.safetensors with every other tensor \
            unchanged, so `--model OUT` (or transformers) loads it without the adapter. The base must be \
            a Hugging Face folder (text or LLaVA), not a GGUF file. A composed LLaVA folder (its \
            config.json names a text_model) gets the adapter's vision tower and projector, and keeps a \
            LoRA as adapter files that load with it. The folder is built as OUT.tmp and renamed, so OUT \
            is complete or absent.
            """)

    @Option(name: .long, help: "The base model: a Hugging Face folder or a name in the model store.") var model: String
    @Option(name: .long, help: "The adapter folder: a PEFT LoRA, projector weights, or both.") var adapter: String
    @Option(name: .long, help: "The new model folder (must not exist).") var out: String
    @Option(name: .long, help: "Tensor encoding of the merged weights.") var dtype: MergeDType = .f32
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    /// Merges; returns the report and the summary line.
    func execute() throws -> (report: MergeReport, base: String, line: String) {
        let base = try ModelStore.resolve(model)
        let report = try ProgressBar.run("merging into \((out as NSString).lastPathComponent)") { _ in
            try Merge.run(model: base, adapter: adapter, output: out, dtype: dtype)
        }
        var what: [String] = []
        if report.mergedWeights > 0 { what.append("LoRA into \(report.mergedWeights) weights") }
        if report.keptLoRA { what.append("LoRA (kept as adapter files: the language model is a reference)") }
        if report.visionTowerTensors > 0 { what.append("vision tower (\(report.visionTowerTensors) tensors)") }
        if report.projectorTensors > 0 { what.append("projector (\(report.projectorTensors) tensors)") }
        let line = "merged \(what.joined(separator: " + ")) → \(report.output): \(report.tensors) tensors, \(report.dtype.rawValue), "
            + String(format: "%.1f MB", Double(report.bytes) / 1e6) + "; copied \(report.copiedFiles.joined(separator: ", "))"
        return (report, base, line)
    }

    func run() async throws {
        let (report, base, line) = try execute()
        if json {
            try printJSON([
                "out": report.output, "model": base, "adapter": adapter, "adapter_kind": report.kind.rawValue,
                "llava": report.isLlava, "tensors": report.tensors, "merged_weights": report.mergedWeights,
                "projector_tensors": report.projectorTensors, "vision_tower_tensors": report.visionTowerTensors,
                "kept_lora": report.keptLoRA, "copied": report.copiedFiles, "dtype": report.dtype.rawValue,
                "bytes": report.bytes,
            ])
        } else {
            print(line)
        }
    }
}

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
            a Hugging Face folder (text or LLaVA), not a GGUF file. The folder is built as OUT.tmp and \
            renamed, so OUT is complete or absent.
            """)

    @Option(name: .long, help: "The base model: a Hugging Face folder or a name in the model store.") var model: String
    @Option(name: .long, help: "The adapter folder: a PEFT LoRA, projector weights, or both.") var adapter: String
    @Option(name: .long, help: "The new model folder (must not exist).") var out: String
    @Option(name: .long, help: "Tensor encoding of the merged weights: f32, f16 or bf16.") var dtype = "f32"
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func validate() throws {
        if MergeDType(rawValue: dtype.lowercased()) == nil { throw ValidationError("--dtype must be f32, f16 or bf16") }
    }

    func run() async throws {
        let base = try ModelStore.resolve(model)
        let report = try ProgressBar.run("merging into \((out as NSString).lastPathComponent)") { _ in
            try Merge.run(model: base, adapter: adapter, output: out, dtype: MergeDType(rawValue: dtype.lowercased())!)
        }
        if json {
            try printJSON([
                "out": report.output, "model": base, "adapter": adapter, "adapter_kind": report.kind.rawValue,
                "llava": report.isLlava, "tensors": report.tensors, "merged_weights": report.mergedWeights,
                "projector_tensors": report.projectorTensors, "copied": report.copiedFiles, "dtype": report.dtype.rawValue,
                "bytes": report.bytes,
            ])
        } else {
            var what: [String] = []
            if report.mergedWeights > 0 { what.append("LoRA into \(report.mergedWeights) weights") }
            if report.projectorTensors > 0 { what.append("projector (\(report.projectorTensors) tensors)") }
            print("merged \(what.joined(separator: " + ")) → \(report.output): \(report.tensors) tensors, \(report.dtype.rawValue), "
                  + String(format: "%.1f MB", Double(report.bytes) / 1e6) + "; copied \(report.copiedFiles.joined(separator: ", "))")
        }
    }
}

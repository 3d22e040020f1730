import ArgumentParser
import Foundation
import VLMApp
import VLMGeneration
import VLMModels
import VLMTraining

/// `vlmsh export-gguf`: the model as loaded (adapter fused) written as llama.cpp's GGUF pair.
struct ExportGGUFCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-gguf",
        abstract: "Write the model (its LoRA fused in) as llama.cpp's text GGUF plus mmproj GGUF.",
        discussion: """
            OUT receives text.gguf (the language model's GGUF: its metadata, tokenizer and chat \
            template copied, each LoRA-adapted weight fused and encoded as --type, every other tensor \
            as stored), for a LLaVA model mmproj.gguf (the CLIP or SigLIP tower up to the feature \
            layer and the mlp2x_gelu projector under llama.cpp's clip.* keys), and mmproj.json, so \
            `--model OUT` loads the pair in vlmsh and `llama-server -m OUT/text.gguf --mmproj \
            OUT/mmproj.gguf` in llama.cpp. The language model must be a GGUF (smollm2, a composed \
            folder's text_model, a GGUF pair); each file is written under a temporary name and renamed. \
            Exact round trip: a SigLIP tower with a gelu_pytorch_tanh projector (init-llava \
            --vision-kind siglip --projector-act gelu_pytorch_tanh). For a CLIP tower llama.cpp puts \
            the class token after the patches and keeps rows 1… (patches 1… plus the class token), \
            and runs an exact gelu as tanh: its image rows differ from vlmsh's.
            """)

    @OptionGroup var options: ModelOptions
    @Option(name: .long, help: "Encoding of the fused weights and of the tower's and projector's matrices.")
    var type: GGUFExportType = .f16
    @Option(name: .long, help: "The folder to write into (created when missing).") var out: String
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func run() async throws {
        let (chat, _) = try options.loadWithAdapter()
        let llava = (chat as? VisionLanguageModel)?.llava
        let textPath: String
        if let llava {
            guard let text = llava.textModel else {
                throw UsageError("export-gguf: \(options.model) holds its language model as Hugging Face weights; writing their tokenizer as GGUF (BPE or SentencePiece) is not supported: convert the language model with llama.cpp's convert_hf_to_gguf.py and compose the LLaVA around that GGUF (init-llava --text-model FILE.gguf)")
            }
            textPath = text.path
        } else if let text = chat as? TextModel {
            textPath = text.path
        } else {
            throw UsageError("export-gguf: \(options.model) is not a text model or a LLaVA model vlmsh can export")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: textPath, isDirectory: &isDirectory), isDirectory.boolValue {
            throw UsageError("export-gguf: the language model \(textPath) is a Hugging Face folder; writing its tokenizer as GGUF (BPE or SentencePiece) is not supported: convert it with llama.cpp's convert_hf_to_gguf.py first")
        }
        let report = try ProgressBar.run("exporting to \((out as NSString).lastPathComponent)") { _ in
            try GGUFExport.run(decoder: chat.decoder, textGGUF: textPath, llava: llava, type: type, output: out,
                               name: (options.model as NSString).lastPathComponent)
        }
        if json {
            var object: [String: Any] = [
                "out": report.folder, "text": report.textFile, "type": report.type.rawValue, "text_tensors": report.textTensors,
                "merged_weights": report.mergedWeights, "bytes": report.bytes,
            ]
            if let mmproj = report.mmprojFile {
                object["mmproj"] = mmproj
                object["mmproj_tensors"] = report.mmprojTensors
                object["vision_layers"] = report.visionLayers
                object["llama_cpp_exact"] = report.mmprojExact
            }
            try printJSON(object)
        } else {
            var line = "exported \(report.textFile) (\(report.textTensors) tensors, LoRA fused into \(report.mergedWeights))"
            if let mmproj = report.mmprojFile { line += " + \(mmproj) (\(report.mmprojTensors) tensors, \(report.visionLayers) vision layers)" }
            print(line + ", \(report.type.rawValue), " + String(format: "%.1f MB", Double(report.bytes) / 1e6))
            if report.mmprojFile != nil, !report.mmprojExact { print("note: " + GGUFExport.clipDifference) }
        }
    }
}

import ArgumentParser
import Foundation
import VLMModels
import VLMTensor
import VLMTraining

/// `vlmsh init-llava`: a new LLaVA folder (fresh CLIP or SigLIP tower and projector) around an existing
/// language model, ready for `vlmsh finetune --mode vision+projector`.
struct InitLlavaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init-llava",
        abstract: "Create a LLaVA folder with a new vision tower and projector around an existing language model.",
        discussion: """
            Writes OUT/config.json (model_type llava; text_model names the language model, which \
            supplies the decoder, tokenizer and chat template), OUT/preprocessor_config.json and \
            OUT/model.safetensors with a CLIP (or, --vision-kind siglip, SigLIP) ViT and an \
            mlp2x_gelu projector initialized as transformers initializes CLIP's (SigLIP's parts take \
            the same draws). Nothing can see yet: \
            train the tower and projector with `vlmsh finetune --mode vision+projector`. A SigLIP \
            tower with --projector-act gelu_pytorch_tanh is what llama.cpp's LLaVA graph computes \
            exactly after `vlmsh export-gguf`.
            """)

    @Option(name: .long, help: "The language model: a name in the model store (stored as is) or a path.") var textModel = "smollm2"
    @Option(name: .long, help: "The new folder (must not exist).") var out: String
    @Option(name: .long, help: "Vision tower family: clip (class token, LLaVA's default feature select) or siglip (no class token, every row kept).")
    var visionKind: LlavaInitVisionKind = .clip
    @Option(name: .long, help: "Projector activation (projector_hidden_act): gelu (exact) or gelu_pytorch_tanh (llama.cpp's).")
    var projectorAct: Activation = .gelu
    @Option(name: .long, help: "Vision tower width.") var visionHidden = 192
    @Option(name: .long, help: "Vision tower layers.") var visionLayers = 4
    @Option(name: .long, help: "Vision tower attention heads.") var visionHeads = 3
    @Option(name: .long, help: "Vision tower MLP width.") var visionIntermediate = 768
    @Option(name: .long, help: "Input image side in pixels.") var imageSize = 64
    @Option(name: .long, help: "Patch side in pixels (image tokens = (image/patch)²).") var patchSize = 16
    @Option(name: .long, help: "CLIP rows the projector reads (vision_feature_select_strategy): default drops the class token, full keeps it as the first image token.")
    var visionFeatureSelect: VisionFeatureSelect = .default
    @Option(name: .long, help: "Seed of the initial weights.") var seed: UInt64 = 0
    @Option(name: .long, help: "Std of the projector's initial weights (transformers: 0.02).") var projectorStd: Float = 0.02

    func run() async throws { print(try execute()) }

    /// Writes the folder; returns the summary line.
    func execute() throws -> String {
        var o = LlavaInitOptions()
        o.visionHidden = visionHidden; o.visionLayers = visionLayers; o.visionHeads = visionHeads
        o.visionIntermediate = visionIntermediate; o.imageSize = imageSize; o.patchSize = patchSize; o.seed = seed
        o.projectorStd = projectorStd; o.visionKind = visionKind; o.projectorAct = projectorAct
        o.featureSelect = visionFeatureSelect
        let path = try ModelStore.resolve(textModel)
        let report = try LlavaInit.write(textModel: textModel, textModelPath: path, options: o, to: out)
        return ("\(report.folder): \(visionKind == .siglip ? "SigLIP" : "CLIP") tower \(report.visionParameters) parameters, projector \(report.projectorParameters), "
              + "\(report.imageTokens) image tokens, language model \(textModel)")
    }
}

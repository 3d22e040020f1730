import Foundation
import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor

// `vlmsh init-llava`: a new LLaVA folder around a language model the user already has — a CLIP
// or SigLIP ViT vision tower and an mlp2x_gelu projector with freshly initialized weights, composed with the
// language model by reference (`text_model`), so the folder stays a few MB. Training the tower and
// the projector (`vlmsh finetune --mode vision+projector`) then teaches the language model to see.

/// The ViT family of the new tower.
public enum LlavaInitVisionKind: String, Sendable, CaseIterable {
    /// CLIP: a class token, `pre_layrnorm`, quick_gelu; LLaVA's `default` feature select (the
    /// class token's row dropped).
    case clip
    /// SigLIP: no class token, a biased patch conv, no pre-norm, gelu_pytorch_tanh; every row
    /// kept (`full`). llama.cpp's LLaVA graph computes this tower as transformers does.
    case siglip
}

/// The new tower's shape and the folder's image preprocessing.
public struct LlavaInitOptions: Sendable {
    public var visionKind = LlavaInitVisionKind.clip
    /// The projector's `projector_hidden_act`: transformers' LLaVA applies `ACT2FN[...]`, so
    /// `gelu_pytorch_tanh` is the tanh approximation llama.cpp's projector computes.
    public var projectorAct = Activation.gelu
    public var visionHidden = 192
    public var visionLayers = 4
    public var visionHeads = 3
    public var visionIntermediate = 768
    public var imageSize = 64
    public var patchSize = 16
    public var seed: UInt64 = 0
    /// Std of the projector's initial weights. transformers uses 0.02 (`initializer_range`); a
    /// tower trained from scratch learns much faster through a larger one (0.1), because with
    /// 0.02 the projector passes it almost no gradient.
    public var projectorStd: Float = 0.02
    /// Which rows of a CLIP tower feed the projector (`vision_feature_select_strategy`): LLaVA's
    /// `default` drops the class token, `full` keeps it as the first image token. SigLIP has no
    /// class token and always keeps every row.
    public var featureSelect = VisionFeatureSelect.default
    public init() {}
}

public enum LlavaInit {
    public struct Report: Sendable {
        public var folder: String
        public var visionParameters: Int
        public var projectorParameters: Int
        public var imageTokens: Int
    }

    /// Writes `folder` (which must not exist; built as `folder.tmp` and renamed): config.json,
    /// preprocessor_config.json and model.safetensors. `textModel` is the reference stored in
    /// config.json (a store name like `smollm2`, or a path); `textModelPath` is where it is now.
    public static func write(textModel: String, textModelPath: String, options o: LlavaInitOptions, to folder: String) throws -> Report {
        let fm = FileManager.default
        if fm.fileExists(atPath: folder) { throw FormatError(folder, "already exists; choose a new --out folder") }
        guard o.visionHidden > 0, o.visionHeads > 0, o.visionHidden % o.visionHeads == 0 else {
            throw TrainingError("--vision-hidden \(o.visionHidden) must be a positive multiple of --vision-heads \(o.visionHeads)")
        }
        guard o.patchSize > 0, o.imageSize >= o.patchSize, o.imageSize % o.patchSize == 0, o.visionLayers > 0, o.visionIntermediate > 0 else {
            throw TrainingError("--image-size must be a multiple of --patch-size, and the tower sizes positive")
        }
        guard o.projectorStd > 0, o.projectorStd.isFinite else { throw TrainingError("--projector-std must be positive") }
        guard [.gelu, .geluPytorchTanh].contains(o.projectorAct) else {
            throw TrainingError("--projector-act \(o.projectorAct.rawValue): the projector takes gelu or gelu_pytorch_tanh")
        }
        let text = try TextModel(path: textModelPath).decoder.config
        let clip = CLIPVisionConfiguration(hiddenSize: o.visionHidden, intermediateSize: o.visionIntermediate,
                                           numHiddenLayers: o.visionLayers, numAttentionHeads: o.visionHeads,
                                           imageSize: o.imageSize, patchSize: o.patchSize)
        let siglip = o.visionKind == .siglip
        let vision: LlavaVisionConfiguration = siglip
            ? .siglip(SiglipVisionConfiguration(hiddenSize: o.visionHidden, intermediateSize: o.visionIntermediate,
                                                numHiddenLayers: o.visionLayers, numAttentionHeads: o.visionHeads,
                                                imageSize: o.imageSize, patchSize: o.patchSize))
            : .clip(clip)
        // The image token sits just past the text vocabulary (as llava-hf adds `<image>`); the
        // text model's tokenizer has no such token, so prompts are split at "<image>". LLaVA's
        // `default` select drops row 0, which only a class token makes right.
        let config = LlavaConfiguration(visionConfig: vision, textConfig: text, imageTokenIndex: text.vocabSize,
                                        visionFeatureLayers: [-1], visionFeatureSelectStrategy: siglip ? .full : o.featureSelect,
                                        projectorHiddenAct: o.projectorAct, textModel: textModel)
        let tensors = initialWeights(vision: clip, textHidden: text.hiddenSize, seed: o.seed, projectorStd: o.projectorStd, siglip: siglip)

        let temp = folder + ".tmp"
        try? fm.removeItem(atPath: temp)
        try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(config).write(to: URL(fileURLWithPath: temp + "/config.json"))
        try Data(preprocessorConfig(size: o.imageSize, siglip: siglip).utf8).write(to: URL(fileURLWithPath: temp + "/preprocessor_config.json"))
        try SafetensorsWriter.write(tensors.map { ($0.0, $0.1, .f32) }, metadata: ["format": "pt"], to: temp + "/model.safetensors")
        guard rename(temp, folder) == 0 else { throw FormatError(folder, "cannot rename \(temp) into place (errno \(errno))") }
        let vp = tensors.filter { $0.0.hasPrefix("vision_tower.") }.reduce(0) { $0 + $1.1.count }
        let pp = tensors.filter { $0.0.hasPrefix("multi_modal_projector.") }.reduce(0) { $0 + $1.1.count }
        let patches = (o.imageSize / o.patchSize) * (o.imageSize / o.patchSize)
        return Report(folder: folder, visionParameters: vp, projectorParameters: pp,
                      imageTokens: patches + (!siglip && o.featureSelect == .full ? 1 : 0))
    }

    /// transformers' initialization of `CLIPVisionModel` (`CLIPPreTrainedModel._init_weights`,
    /// factor 1) and of LLaVA's projector (normal, std `projectorStd`, zero biases), from a seeded
    /// stream. `siglip`: the same draws for SigLIP's parts (no class embedding or pre-norm, one
    /// position per patch, a zero patch bias); the tower is trained from there.
    static func initialWeights(vision c: CLIPVisionConfiguration, textHidden: Int, seed: UInt64, projectorStd: Float = 0.02,
                               siglip: Bool = false) -> [(String, Tensor)] {
        var random = SeededRandom(seed: seed)
        let d = c.hiddenSize, layers = c.numHiddenLayers, grid = c.imageSize / c.patchSize
        func normal(_ shape: [Int], std: Float) -> Tensor {
            let t = Tensor(shape: shape, zeroed: false)
            for i in 0..<t.count {
                // Box–Muller on (0, 1] uniforms.
                let u1 = max(random.nextUnit(), 1e-7), u2 = random.nextUnit()
                t.data[i] = std * (-2 * logf(u1)).squareRoot() * cosf(2 * .pi * u2)
            }
            return t
        }
        func ones(_ n: Int) -> Tensor { Tensor(shape: [n], values: [Float](repeating: 1, count: n)) }
        func zeros(_ n: Int) -> Tensor { Tensor(shape: [n], zeroed: true) }
        let attentionStd = 1 / Float(d).squareRoot() / Float(2 * layers).squareRoot()
        let p = "vision_tower.vision_model."
        var out: [(String, Tensor)] = siglip ? [
            (p + "embeddings.patch_embedding.weight", normal([d, c.numChannels, c.patchSize, c.patchSize], std: 0.02)),
            (p + "embeddings.patch_embedding.bias", zeros(d)),
            (p + "embeddings.position_embedding.weight", normal([grid * grid, d], std: 0.02)),
        ] : [
            (p + "embeddings.class_embedding", normal([d], std: 1 / Float(d).squareRoot())),
            (p + "embeddings.patch_embedding.weight", normal([d, c.numChannels, c.patchSize, c.patchSize], std: 0.02)),
            (p + "embeddings.position_embedding.weight", normal([grid * grid + 1, d], std: 0.02)),
            (p + "pre_layrnorm.weight", ones(d)), (p + "pre_layrnorm.bias", zeros(d)),
        ]
        for l in 0..<layers {
            let q = p + "encoder.layers.\(l)."
            for name in ["q_proj", "k_proj", "v_proj"] {
                out += [(q + "self_attn.\(name).weight", normal([d, d], std: attentionStd)), (q + "self_attn.\(name).bias", zeros(d))]
            }
            out += [(q + "self_attn.out_proj.weight", normal([d, d], std: 1 / Float(d).squareRoot())), (q + "self_attn.out_proj.bias", zeros(d)),
                    (q + "layer_norm1.weight", ones(d)), (q + "layer_norm1.bias", zeros(d)),
                    (q + "mlp.fc1.weight", normal([c.intermediateSize, d], std: 1 / Float(2 * d).squareRoot())), (q + "mlp.fc1.bias", zeros(c.intermediateSize)),
                    (q + "mlp.fc2.weight", normal([d, c.intermediateSize], std: attentionStd)), (q + "mlp.fc2.bias", zeros(d)),
                    (q + "layer_norm2.weight", ones(d)), (q + "layer_norm2.bias", zeros(d))]
        }
        out += [(p + "post_layernorm.weight", ones(d)), (p + "post_layernorm.bias", zeros(d)),
                ("multi_modal_projector.linear_1.weight", normal([textHidden, d], std: projectorStd)), ("multi_modal_projector.linear_1.bias", zeros(textHidden)),
                ("multi_modal_projector.linear_2.weight", normal([textHidden, textHidden], std: projectorStd)), ("multi_modal_projector.linear_2.bias", zeros(textHidden))]
        return out
    }

    /// A `CLIPImageProcessor` for square `size` inputs (resize and crop are identities on images
    /// of that size), with CLIP's normalization; for SigLIP its `SiglipImageProcessor` (resize to
    /// size × size, bicubic, no crop, mean and std 0.5).
    static func preprocessorConfig(size: Int, siglip: Bool = false) -> String {
        if siglip {
            return """
            {
              "do_convert_rgb": true,
              "do_normalize": true,
              "do_rescale": true,
              "do_resize": true,
              "image_mean": [0.5, 0.5, 0.5],
              "image_processor_type": "SiglipImageProcessor",
              "image_std": [0.5, 0.5, 0.5],
              "resample": 3,
              "rescale_factor": 0.00392156862745098,
              "size": {"height": \(size), "width": \(size)}
            }

            """
        }
        return """
        {
          "crop_size": {"height": \(size), "width": \(size)},
          "do_center_crop": true,
          "do_convert_rgb": true,
          "do_normalize": true,
          "do_rescale": true,
          "do_resize": true,
          "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_processor_type": "CLIPImageProcessor",
          "image_std": [0.26862954, 0.26130258, 0.27577711],
          "resample": 3,
          "rescale_factor": 0.00392156862745098,
          "size": {"shortest_edge": \(size)}
        }

        """
    }
}

import Foundation
import VLMFormats
import VLMImage
import VLMTensor

// LLaVA: a vision tower (CLIP or SigLIP), a multimodal projector and a Llama-family decoder.
// Image features replace the image placeholder positions of the prompt's input embeddings.
// Loads the llava-hf hub layout, the transformers 5 save_pretrained layout (vision tower without
// `vision_model.`, tied lm_head) and the original LLaVA repo's `llava_llama` checkpoints.

/// A LLaVA `vision_config`, dispatched on its `model_type`.
public enum LlavaVisionConfiguration: Codable, Sendable {
    case clip(CLIPVisionConfiguration)
    case siglip(SiglipVisionConfiguration)

    enum TypeKey: String, CodingKey { case modelType = "model_type" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: TypeKey.self)
        let type = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "clip_vision_model"
        switch type {
        case "clip_vision_model": self = .clip(try CLIPVisionConfiguration(from: decoder))
        case "siglip_vision_model": self = .siglip(try SiglipVisionConfiguration(from: decoder))
        default:
            throw DecodingError.dataCorruptedError(forKey: .modelType, in: c,
                debugDescription: "unsupported vision model_type '\(type)' (supported: clip_vision_model, siglip_vision_model)")
        }
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case .clip(let c): try c.encode(to: encoder)
        case .siglip(let s): try s.encode(to: encoder)
        }
    }

    public var hiddenSize: Int {
        switch self { case .clip(let c): return c.hiddenSize; case .siglip(let s): return s.hiddenSize }
    }
}

/// Which tokens of the vision tower's hidden states feed the projector.
public enum VisionFeatureSelect: String, Codable, Sendable {
    /// Drop the class token (LLaVA's `patch`).
    case `default`
    /// Keep every token (LLaVA's `cls_patch`).
    case full
}

/// config.json of `LlavaForConditionalGeneration` (`model_type` `llava`).
public struct LlavaConfiguration: Codable, Sendable {
    public var modelType: String
    public var visionConfig: LlavaVisionConfiguration
    public var textConfig: LlamaConfiguration
    public var imageTokenIndex: Int
    public var visionFeatureLayers: [Int]
    /// Whether `vision_feature_layer` was a list (written back the same way).
    public var featureLayerIsList: Bool
    public var visionFeatureSelectStrategy: VisionFeatureSelect
    public var projectorHiddenAct: Activation
    public var multimodalProjectorBias: Bool
    public var imageSeqLength: Int?
    /// vlmsh's composition of an existing language model: a GGUF file or text model folder (a
    /// path relative to this folder, or a name in the model store) that supplies the decoder,
    /// tokenizer and chat template; the folder's safetensors then hold only the vision tower and
    /// the projector. nil for an ordinary LLaVA checkpoint.
    public var textModel: String?

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case visionConfig = "vision_config"
        case textConfig = "text_config"
        case imageTokenIndex = "image_token_index"
        case imageTokenID = "image_token_id"
        case visionFeatureLayer = "vision_feature_layer"
        case visionFeatureSelectStrategy = "vision_feature_select_strategy"
        case projectorHiddenAct = "projector_hidden_act"
        case multimodalProjectorBias = "multimodal_projector_bias"
        case imageSeqLength = "image_seq_length"
        case textModel = "text_model"
    }

    public init(modelType: String = "llava", visionConfig: LlavaVisionConfiguration, textConfig: LlamaConfiguration,
                imageTokenIndex: Int, visionFeatureLayers: [Int], visionFeatureSelectStrategy: VisionFeatureSelect,
                projectorHiddenAct: Activation = .gelu, multimodalProjectorBias: Bool = true, imageSeqLength: Int? = nil,
                textModel: String? = nil) {
        self.modelType = modelType; self.visionConfig = visionConfig; self.textConfig = textConfig
        self.imageTokenIndex = imageTokenIndex; self.visionFeatureLayers = visionFeatureLayers
        featureLayerIsList = visionFeatureLayers.count != 1
        self.visionFeatureSelectStrategy = visionFeatureSelectStrategy; self.projectorHiddenAct = projectorHiddenAct
        self.multimodalProjectorBias = multimodalProjectorBias; self.imageSeqLength = imageSeqLength
        self.textModel = textModel
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llava"
        visionConfig = try c.decodeIfPresent(LlavaVisionConfiguration.self, forKey: .visionConfig) ?? .clip(CLIPVisionConfiguration())
        textConfig = try c.decode(LlamaConfiguration.self, forKey: .textConfig)
        imageTokenIndex = try c.decodeIfPresent(Int.self, forKey: .imageTokenIndex)
            ?? c.decodeIfPresent(Int.self, forKey: .imageTokenID) ?? 32000
        if let list = try? c.decode([Int].self, forKey: .visionFeatureLayer) {
            guard !list.isEmpty else {
                throw DecodingError.dataCorruptedError(forKey: .visionFeatureLayer, in: c, debugDescription: "empty layer list")
            }
            visionFeatureLayers = list; featureLayerIsList = true
        } else {
            visionFeatureLayers = [try c.decodeIfPresent(Int.self, forKey: .visionFeatureLayer) ?? -2]; featureLayerIsList = false
        }
        visionFeatureSelectStrategy = try c.decodeIfPresent(VisionFeatureSelect.self, forKey: .visionFeatureSelectStrategy) ?? .default
        projectorHiddenAct = try c.decodeIfPresent(Activation.self, forKey: .projectorHiddenAct) ?? .gelu
        multimodalProjectorBias = try c.decodeIfPresent(Bool.self, forKey: .multimodalProjectorBias) ?? true
        imageSeqLength = try c.decodeIfPresent(Int.self, forKey: .imageSeqLength)
        textModel = try c.decodeIfPresent(String.self, forKey: .textModel)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(visionConfig, forKey: .visionConfig)
        try c.encode(textConfig, forKey: .textConfig)
        try c.encode(imageTokenIndex, forKey: .imageTokenIndex)
        if featureLayerIsList { try c.encode(visionFeatureLayers, forKey: .visionFeatureLayer) }
        else { try c.encode(visionFeatureLayers[0], forKey: .visionFeatureLayer) }
        try c.encode(visionFeatureSelectStrategy, forKey: .visionFeatureSelectStrategy)
        try c.encode(projectorHiddenAct, forKey: .projectorHiddenAct)
        try c.encode(multimodalProjectorBias, forKey: .multimodalProjectorBias)
        try c.encodeIfPresent(imageSeqLength, forKey: .imageSeqLength)
        try c.encodeIfPresent(textModel, forKey: .textModel)
    }
}

/// The LLaVA-specific fields of an original LLaVA repo config.json (`model_type` `llava_llama`);
/// the Llama fields sit at the top level beside them.
public struct OriginalLlavaConfiguration: Decodable, Sendable {
    public var mmVisionTower: String
    public var mmProjectorType: String
    public var mmVisionSelectLayer: Int
    public var mmVisionSelectFeature: String
    public var mmHiddenSize: Int?
    public var imageAspectRatio: String?

    enum CodingKeys: String, CodingKey {
        case mmVisionTower = "mm_vision_tower", mmProjectorType = "mm_projector_type"
        case mmVisionSelectLayer = "mm_vision_select_layer", mmVisionSelectFeature = "mm_vision_select_feature"
        case mmHiddenSize = "mm_hidden_size", imageAspectRatio = "image_aspect_ratio"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        mmVisionTower = try c.decode(String.self, forKey: .mmVisionTower)
        mmProjectorType = try c.decodeIfPresent(String.self, forKey: .mmProjectorType) ?? "linear"
        mmVisionSelectLayer = try c.decodeIfPresent(Int.self, forKey: .mmVisionSelectLayer) ?? -2
        mmVisionSelectFeature = try c.decodeIfPresent(String.self, forKey: .mmVisionSelectFeature) ?? "patch"
        mmHiddenSize = try c.decodeIfPresent(Int.self, forKey: .mmHiddenSize)
        imageAspectRatio = try c.decodeIfPresent(String.self, forKey: .imageAspectRatio)
    }
}

public enum LlavaWeights {
    /// llava-hf hub and transformers 5 layouts → `vision_tower.vision_model.*`,
    /// `multi_modal_projector.*`, `language_model.{model.*,lm_head.*}`.
    public static func sanitizeHF(_ name: String) -> String? {
        if name.hasSuffix("rotary_emb.inv_freq") { return nil }
        var n = name
        // transformers 5 in-memory names (checkpoints saved without reversing the mapping).
        if n.hasPrefix("model.language_model.") { n = "language_model.model." + n.dropFirst("model.language_model.".count) }
        else if n.hasPrefix("model.vision_tower.") { n = String(n.dropFirst("model.".count)) }
        else if n.hasPrefix("model.multi_modal_projector.") { n = String(n.dropFirst("model.".count)) }
        else if n == "lm_head.weight" { n = "language_model.lm_head.weight" }
        else if n == "model.image_newline" { n = "image_newline" }
        if n.hasPrefix("vision_tower.") && !n.hasPrefix("vision_tower.vision_model.") {
            n = "vision_tower.vision_model." + n.dropFirst("vision_tower.".count)
        }
        return n
    }

    /// Original LLaVA (`LlavaLlamaForCausalLM`): `model.mm_projector.{0,2}` → linear_{1,2},
    /// `model.*` / `lm_head.*` → the language model, an unfrozen tower → `vision_tower.*`.
    public static func sanitizeOriginal(_ name: String) -> String? {
        if name.hasSuffix("rotary_emb.inv_freq") { return nil }
        if name.hasPrefix("model.mm_projector.") {
            let rest = name.dropFirst("model.mm_projector.".count)
            let parts = rest.split(separator: ".", maxSplits: 1)
            // linear: a bare Linear (`model.mm_projector.weight`).
            if parts.count == 1 { return "multi_modal_projector.linear_1.\(rest)" }
            // mlp2x_gelu: Sequential(Linear, GELU, Linear).
            guard let i = Int(parts[0]) else { return name }
            return "multi_modal_projector.linear_\(i / 2 + 1).\(parts[1])"
        }
        if name.hasPrefix("model.vision_tower.vision_tower.") {
            return "vision_tower." + name.dropFirst("model.vision_tower.vision_tower.".count)
        }
        if name.hasPrefix("model.") || name.hasPrefix("lm_head.") { return "language_model." + name }
        return name
    }
}

public final class LlavaModel: @unchecked Sendable {
    public let config: LlavaConfiguration
    public let vision: VisionTower
    public let projector: MultiModalProjector
    public let decoder: LlamaModel
    /// The image preprocessing of the vision tower (preprocessor_config.json).
    public let imageProcessor: ImageProcessor
    /// LLaVA's `image_aspect_ratio: pad`: images are centred on a square of the mean colour first.
    public let padToSquare: Bool
    /// The id the prompt uses for an image: the config's `image_token_index`, or -200 (LLaVA's
    /// IMAGE_TOKEN_INDEX) for original checkpoints whose vocabulary has no image token.
    public let imageTokenID: Int
    /// Whether the image token is a real vocabulary entry (`<image>`).
    public let imageTokenInVocabulary: Bool
    /// The language model a composed folder (`text_model`) names, with its tokenizer and template.
    public internal(set) var textModel: TextModel?
    /// LLaVA-NeXT's any-resolution tiles and `image_newline` (LlavaNext.swift); nil for LLaVA.
    public internal(set) var anyResolution: LlavaNextParts?

    /// Composes already-loaded parts.
    public init(config: LlavaConfiguration, vision: VisionTower, projector: MultiModalProjector, decoder: LlamaModel,
                imageProcessor: ImageProcessor, padToSquare: Bool = false, imageTokenInVocabulary: Bool = true) {
        self.config = config; self.vision = vision; self.projector = projector; self.decoder = decoder
        self.imageProcessor = imageProcessor; self.padToSquare = padToSquare
        self.imageTokenID = config.imageTokenIndex; self.imageTokenInVocabulary = imageTokenInVocabulary
    }

    /// Loads the parts from one strict weight map under canonical names (`LlavaWeights`).
    public convenience init(config: LlavaConfiguration, weights: WeightMap, visionWeights: WeightMap? = nil,
                            imageProcessor: ImageProcessor, padToSquare: Bool = false, imageTokenInVocabulary: Bool = true) throws {
        let (vision, projector) = try Self.visionParts(config, weights: weights, visionWeights: visionWeights)
        let decoder = try LlamaModel(config: config.textConfig, weights: weights.scoped("language_model."), ropePairing: .halves)
        try weights.finish()
        self.init(config: config, vision: vision, projector: projector, decoder: decoder, imageProcessor: imageProcessor,
                  padToSquare: padToSquare, imageTokenInVocabulary: imageTokenInVocabulary)
    }

    /// The vision tower a `vision_config` describes, from its weights.
    static func tower(_ config: LlavaVisionConfiguration, weights: WeightMap) throws -> VisionTower {
        switch config {
        case .clip(let c): return try CLIPVisionTower(config: c, weights: weights)
        case .siglip(let s): return try SiglipVisionTower(config: s, weights: weights)
        }
    }

    /// The tower (from `visionWeights`, else `weights`' `vision_tower.`) and the mlp2x_gelu
    /// projector of an HF-layout LLaVA.
    static func visionParts(_ config: LlavaConfiguration, weights: WeightMap, visionWeights: WeightMap?) throws
        -> (VisionTower, MultiModalProjector) {
        let vision = try tower(config.visionConfig, weights: visionWeights ?? weights.scoped("vision_tower."))
        let projector = try MultiModalProjector(
            kind: .mlp2xGelu, inputSize: vision.hiddenSize * config.visionFeatureLayers.count,
            outputSize: config.textConfig.hiddenSize, activation: config.projectorHiddenAct,
            bias: config.multimodalProjectorBias, weights: weights.scoped("multi_modal_projector."))
        return (vision, projector)
    }

    /// Loads a LLaVA folder: transformers (`model_type` `llava` or `llava_next`) or the original
    /// repo (`llava_llama`), from its config.json as already read (`ModelConfigFile.read`).
    public static func load(folder: String, config file: ModelConfigFile? = nil) throws -> LlavaModel {
        let file = try file ?? ModelConfigFile.require(folder: folder)
        if file.modelType == "llava_llama" { return try loadOriginal(folder: folder, configData: file.data) }
        if file.modelType == "llava_next" { return try loadNext(folder: folder, file: file) }
        let config = try TextModel.decodeConfig(LlavaConfiguration.self, from: file.data, path: file.path, expected: "LLaVA config")
        guard LlamaConfiguration.supportedTypes.contains(config.textConfig.modelType) else {
            throw FormatError(file.path, "unsupported text model_type '\(config.textConfig.modelType)'")
        }
        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlavaWeights.sanitizeHF)
        if let reference = config.textModel { return try loadComposed(folder: folder, config: config, textModel: reference, weights: weights) }
        return try LlavaModel(config: config, weights: weights, imageProcessor: try ImageProcessor.load(folder: folder))
    }

    /// The path a `text_model` reference names: relative to `folder` first, then the model store.
    public static func resolveTextModel(_ reference: String, folder: String) throws -> String {
        let local = URL(fileURLWithPath: folder).appendingPathComponent(reference).standardizedFileURL.path
        if !reference.hasPrefix("/"), FileManager.default.fileExists(atPath: local) { return local }
        do { return try ModelStore.resolve(reference) } catch {
            throw FormatError(folder + "/config.json", "text_model '\(reference)': not beside the folder and not in \(ModelStore.modelsDirectory) (`make model` installs smollm2)")
        }
    }

    /// A folder that names its language model (`text_model`): the decoder, tokenizer and template
    /// come from that model; the folder's own weights are the vision tower and the projector.
    static func loadComposed(folder: String, config: LlavaConfiguration, textModel reference: String, weights: WeightMap) throws -> LlavaModel {
        let configPath = folder + "/config.json"
        let text = try TextModel(path: try resolveTextModel(reference, folder: folder))
        let hidden = text.decoder.config.hiddenSize
        guard hidden == config.textConfig.hiddenSize else {
            throw FormatError(configPath, "text_config.hidden_size \(config.textConfig.hiddenSize) differs from text_model '\(reference)' (\(hidden))")
        }
        if let stray = weights.names.first(where: { $0.hasPrefix("language_model.") }) {
            throw FormatError(folder, "'\(stray)': a folder with text_model holds only the vision tower and the projector")
        }
        let (vision, projector) = try visionParts(config, weights: weights, visionWeights: nil)
        try weights.finish()
        var composed = config
        composed.textConfig = text.decoder.config
        let model = LlavaModel(config: composed, vision: vision, projector: projector, decoder: text.decoder,
                               imageProcessor: try ImageProcessor.load(folder: folder),
                               imageTokenInVocabulary: text.tokenizer.tokenID("<image>") == config.imageTokenIndex)
        model.textModel = text
        return model
    }

    static func loadOriginal(folder: String, configData data: Data) throws -> LlavaModel {
        let configPath = folder + "/config.json"
        var text = try TextModel.decodeConfig(LlamaConfiguration.self, from: data, path: configPath, expected: "LLaVA config")
        let original = try TextModel.decodeConfig(OriginalLlavaConfiguration.self, from: data, path: configPath, expected: "LLaVA config")
        text.modelType = "llama"
        // LLaVA resolves mm_vision_tower against the working directory; a folder beside the
        // checkpoint is what a self-contained download has, so that is tried first.
        let tower = original.mmVisionTower
        let candidates = tower.hasPrefix("/") ? [tower]
            : [URL(fileURLWithPath: folder).appendingPathComponent(tower).standardizedFileURL.path,
               URL(fileURLWithPath: tower).standardizedFileURL.path]
        var isDir: ObjCBool = false
        guard let visionFolder = candidates.first(where: { FileManager.default.fileExists(atPath: $0 + "/config.json", isDirectory: &isDir) }) else {
            throw FormatError(configPath, "mm_vision_tower '\(tower)': no vision tower folder with config.json (tried \(candidates.joined(separator: ", ")))")
        }
        let visionConfigPath = visionFolder + "/config.json"
        let visionConfig = try TextModel.decodeConfig(LlavaVisionConfiguration.self, from: try SmallFile.read(visionConfigPath),
                                                      path: visionConfigPath, expected: "vision tower config")
        let kind: MultiModalProjector.Kind
        switch original.mmProjectorType {
        case "linear": kind = .linear
        case "mlp2x_gelu": kind = .mlp2xGelu
        default: throw FormatError(configPath, "unsupported mm_projector_type '\(original.mmProjectorType)' (supported: linear, mlp2x_gelu)")
        }
        let select: VisionFeatureSelect
        switch original.mmVisionSelectFeature {
        case "patch": select = .default
        case "cls_patch": select = .full
        default: throw FormatError(configPath, "unsupported mm_vision_select_feature '\(original.mmVisionSelectFeature)'")
        }
        if let mm = original.mmHiddenSize, mm != visionConfig.hiddenSize {
            throw FormatError(configPath, "mm_hidden_size \(mm) differs from the vision tower's hidden size \(visionConfig.hiddenSize)")
        }
        let config = LlavaConfiguration(
            modelType: "llava_llama", visionConfig: visionConfig, textConfig: text, imageTokenIndex: -200,
            visionFeatureLayers: [original.mmVisionSelectLayer], visionFeatureSelectStrategy: select,
            projectorHiddenAct: .gelu, multimodalProjectorBias: true)

        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlavaWeights.sanitizeOriginal)
        let visionWeights: WeightMap
        if weights.names.contains(where: { $0.hasPrefix("vision_tower.") }) {
            visionWeights = weights.scoped("vision_tower.")
        } else {
            visionWeights = try WeightMap(file: visionFolder, source: try openCheckpoint(folder: visionFolder))
            visionWeights.rename(LlamaWeights.sanitizeHF)
        }
        let vision = try LlavaModel.tower(visionConfig, weights: visionWeights)
        let projector = try MultiModalProjector(
            kind: kind, inputSize: vision.hiddenSize, outputSize: text.hiddenSize, activation: .gelu, bias: true,
            weights: weights.scoped("multi_modal_projector."))
        let decoder = try LlamaModel(config: text, weights: weights.scoped("language_model."), ropePairing: .halves)
        try weights.finish()
        return LlavaModel(config: config, vision: vision, projector: projector, decoder: decoder,
                          imageProcessor: try ImageProcessor.load(folder: visionFolder),
                          padToSquare: original.imageAspectRatio == "pad", imageTokenInVocabulary: false)
    }

    /// Feature rows one image takes in the prompt.
    public var featureCount: Int {
        vision.tokenCount - (dropsClassToken ? 1 : 0)
    }

    package var dropsClassToken: Bool { config.visionFeatureSelectStrategy == .default && vision.hasClassToken }

    /// The ViT behind the tower (what a fine-tune trains), for the towers vlmsh implements.
    package var visionTransformer: VisionTransformer? {
        (vision as? any TransformerVisionTower)?.transformer
    }

    /// The model input for one image, `[3, H, W]`.
    public func preprocess(_ image: RGBImage) throws -> Tensor {
        try imageProcessor.preprocess(image, padToSquare: padToSquare)
    }

    /// The projector's input for one image: the hidden states at the feature layers (class
    /// token dropped for `default`), concatenated along hidden, `[featureCount, hidden * layers]`.
    public func visionFeatures(pixels: Tensor) throws -> Tensor {
        let layers = config.visionFeatureLayers
        let states = try vision.hiddenStates(pixels: pixels, layers: Set(layers))
        let skip = dropsClassToken ? 1 : 0
        let rows = featureCount, width = vision.hiddenSize
        let out = Tensor(shape: [rows, width * layers.count], zeroed: false)
        for (k, layer) in layers.enumerated() {
            guard let s = states[layer] else { throw ModelError("vision tower returned no hidden state \(layer)") }
            for r in 0..<rows {
                (out.data + r * width * layers.count + k * width).update(from: s.data + (r + skip) * width, count: width)
            }
        }
        return out
    }

    /// What one image contributes to the input embeddings: `[featureCount, text hidden]`.
    public func imageFeatures(pixels: Tensor) throws -> Tensor {
        try projector.forward(try visionFeatures(pixels: pixels))
    }
}

/// A model folder's config.json, read once for everything loading needs from it.
public struct ModelConfigFile: Sendable {
    public let path: String
    public let data: Data
    /// `model_type`, which decides the architecture.
    public let modelType: String?

    private struct TypeField: Decodable {
        let model_type: String?
    }

    /// `folder/config.json`, or nil when the folder has none.
    public static func read(folder: String) throws -> ModelConfigFile? {
        let path = folder + "/config.json"
        guard let data = try SmallFile.readIfPresent(path) else { return nil }
        let type = (try? JSONDecoder().decode(TypeField.self, from: data))?.model_type
        return ModelConfigFile(path: path, data: data, modelType: type)
    }

    public static func require(folder: String) throws -> ModelConfigFile {
        guard let file = try read(folder: folder) else {
            throw FormatError(folder + "/config.json", "missing: a model folder needs config.json")
        }
        return file
    }

    /// A LLaVA model (`llava`, the original repo's `llava_llama`, or LLaVA-NeXT's `llava_next`).
    public var isLlava: Bool { modelType == "llava" || modelType == "llava_llama" || modelType == "llava_next" }
}

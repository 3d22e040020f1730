import Foundation
import VLMFormats
import VLMTensor

// CLIP ViT vision tower (transformers `CLIPVisionModel`): class token, `pre_layrnorm` before the
// encoder, quick_gelu MLPs. LLaVA 1.5 uses ViT-L/14-336 and reads hidden state -2.

/// The `vision_config` of a CLIP / LLaVA config.json (`CLIPVisionConfig`); missing keys take
/// transformers' defaults. `projection_dim` only concerns CLIPModel's contrastive head and is ignored.
public struct CLIPVisionConfiguration: Codable, Sendable, Equatable {
    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numChannels: Int
    public var imageSize: Int
    public var patchSize: Int
    public var hiddenAct: Activation
    public var layerNormEps: Float

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numChannels = "num_channels"
        case imageSize = "image_size"
        case patchSize = "patch_size"
        case hiddenAct = "hidden_act"
        case layerNormEps = "layer_norm_eps"
    }

    public init(hiddenSize: Int = 768, intermediateSize: Int = 3072, numHiddenLayers: Int = 12,
                numAttentionHeads: Int = 12, numChannels: Int = 3, imageSize: Int = 224, patchSize: Int = 32,
                hiddenAct: Activation = .quickGelu, layerNormEps: Float = 1e-5) {
        modelType = "clip_vision_model"
        self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers; self.numAttentionHeads = numAttentionHeads
        self.numChannels = numChannels; self.imageSize = imageSize; self.patchSize = patchSize
        self.hiddenAct = hiddenAct; self.layerNormEps = layerNormEps
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = CLIPVisionConfiguration()
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? d.modelType
        hiddenSize = try c.decodeIfPresent(Int.self, forKey: .hiddenSize) ?? d.hiddenSize
        intermediateSize = try c.decodeIfPresent(Int.self, forKey: .intermediateSize) ?? d.intermediateSize
        numHiddenLayers = try c.decodeIfPresent(Int.self, forKey: .numHiddenLayers) ?? d.numHiddenLayers
        numAttentionHeads = try c.decodeIfPresent(Int.self, forKey: .numAttentionHeads) ?? d.numAttentionHeads
        numChannels = try c.decodeIfPresent(Int.self, forKey: .numChannels) ?? d.numChannels
        imageSize = try c.decodeSquareSize(.imageSize, default: d.imageSize)
        patchSize = try c.decodeSquareSize(.patchSize, default: d.patchSize)
        hiddenAct = try c.decodeIfPresent(Activation.self, forKey: .hiddenAct) ?? d.hiddenAct
        layerNormEps = try c.decodeIfPresent(Float.self, forKey: .layerNormEps) ?? d.layerNormEps
    }

    var shape: VisionShape {
        VisionShape(hidden: hiddenSize, intermediate: intermediateSize, layers: numHiddenLayers, heads: numAttentionHeads,
                    channels: numChannels, imageSize: imageSize, patchSize: patchSize, eps: layerNormEps, activation: hiddenAct)
    }
}

public final class CLIPVisionTower: VisionTower, @unchecked Sendable {
    public let config: CLIPVisionConfiguration
    package let transformer: VisionTransformer

    /// Loads strictly from `weights` holding the tower under `vision_model.` (or at the top, as a
    /// transformers 5 `CLIPVisionModel` saves itself). Weights become Float32 here.
    public init(config: CLIPVisionConfiguration, weights: WeightMap) throws {
        guard config.modelType == "clip_vision_model" else {
            throw FormatError(weights.file, "vision model_type '\(config.modelType)' is not clip_vision_model")
        }
        self.config = config
        let scope = weights.visionTowerScope()
        transformer = try VisionTransformer(shape: config.shape, weights: scope, classToken: true,
                                            patchBias: false, preNormName: "pre_layrnorm")
        try scope.finish()
    }

    public var hiddenSize: Int { config.hiddenSize }
    public var imageSize: Int { config.imageSize }
    public var layerCount: Int { config.numHiddenLayers }
    public var tokenCount: Int { transformer.tokenCount }
    public var hasClassToken: Bool { true }

    public func hiddenStates(pixels: Tensor, layers: Set<Int>) throws -> [Int: Tensor] {
        try transformer.hiddenStates(pixels: pixels, layers: layers)
    }

    /// transformers' `last_hidden_state`: for CLIP the last layer's output, no final norm.
    public func lastHiddenState(pixels: Tensor) throws -> Tensor {
        try transformer.lastLayerState(pixels: pixels)
    }
}

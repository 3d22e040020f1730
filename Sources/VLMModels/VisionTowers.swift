import Foundation
import VLMFormats
import VLMTensor

// The two ViT families LLaVA models use, as one tower over `VisionTransformer`:
// - CLIP (transformers `CLIPVisionModel`): class token, `pre_layrnorm` before the encoder,
//   quick_gelu MLPs. LLaVA 1.5 uses ViT-L/14-336 and reads hidden state -2.
// - SigLIP (`SiglipVisionModel`): no class token, a biased patch conv, no pre-norm,
//   gelu_pytorch_tanh MLPs. The pooling head (`head.*`) is accepted and not loaded: VLMs read
//   patch features, never the pooled vector.

/// What sets a ViT family apart: its config's `model_type` and defaults, and the tower's parts.
public protocol VisionTowerFamily: Sendable {
    static var modelType: String { get }
    static var defaultPatchSize: Int { get }
    static var defaultActivation: Activation { get }
    static var defaultLayerNormEps: Float { get }
    static var classToken: Bool { get }
    static var patchBias: Bool { get }
    static var preNormName: String? { get }
    /// Checkpoint parts the tower accepts and does not load.
    static var ignoredPrefixes: [String] { get }
    /// Whether transformers' `last_hidden_state` goes through `post_layernorm`.
    static var postNormInLastState: Bool { get }
}

public enum CLIPFamily: VisionTowerFamily {
    public static let modelType = "clip_vision_model"
    public static let defaultPatchSize = 32
    public static let defaultActivation = Activation.quickGelu
    public static let defaultLayerNormEps: Float = 1e-5
    public static let classToken = true
    public static let patchBias = false
    public static let preNormName: String? = "pre_layrnorm"
    public static let ignoredPrefixes: [String] = []
    public static let postNormInLastState = false
}

public enum SiglipFamily: VisionTowerFamily {
    public static let modelType = "siglip_vision_model"
    public static let defaultPatchSize = 16
    public static let defaultActivation = Activation.geluPytorchTanh
    public static let defaultLayerNormEps: Float = 1e-6
    public static let classToken = false
    public static let patchBias = true
    public static let preNormName: String? = nil
    public static let ignoredPrefixes = ["head."]
    public static let postNormInLastState = true
}

/// `CLIPVisionConfig` and `SiglipVisionConfig`: the `vision_config` of a LLaVA config.json;
/// missing keys take transformers' defaults. `projection_dim` (CLIPModel's contrastive head) and
/// `vision_use_head` are ignored.
public typealias CLIPVisionConfiguration = VisionTowerConfiguration<CLIPFamily>
public typealias SiglipVisionConfiguration = VisionTowerConfiguration<SiglipFamily>
public typealias CLIPVisionTower = ViTVisionTower<CLIPFamily>
public typealias SiglipVisionTower = ViTVisionTower<SiglipFamily>

public struct VisionTowerConfiguration<Family: VisionTowerFamily>: Codable, Sendable, Equatable {
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
                numAttentionHeads: Int = 12, numChannels: Int = 3, imageSize: Int = 224, patchSize: Int = Family.defaultPatchSize,
                hiddenAct: Activation = Family.defaultActivation, layerNormEps: Float = Family.defaultLayerNormEps) {
        modelType = Family.modelType
        self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers; self.numAttentionHeads = numAttentionHeads
        self.numChannels = numChannels; self.imageSize = imageSize; self.patchSize = patchSize
        self.hiddenAct = hiddenAct; self.layerNormEps = layerNormEps
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let d = Self()
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
        do { try shape.check() } catch let e as ConfigValueError { throw e.nested(under: decoder.codingPath) }
    }

    var shape: VisionShape {
        VisionShape(hidden: hiddenSize, intermediate: intermediateSize, layers: numHiddenLayers, heads: numAttentionHeads,
                    channels: numChannels, imageSize: imageSize, patchSize: patchSize, eps: layerNormEps, activation: hiddenAct)
    }
}

/// A tower built on `VisionTransformer` (what a fine-tune can train).
package protocol TransformerVisionTower: VisionTower {
    var transformer: VisionTransformer { get }
}

public final class ViTVisionTower<Family: VisionTowerFamily>: TransformerVisionTower, @unchecked Sendable {
    public let config: VisionTowerConfiguration<Family>
    package let transformer: VisionTransformer

    /// Loads strictly from `weights` holding the tower under `vision_model.` (or at the top, as a
    /// transformers 5 `*VisionModel` saves itself). Weights become Float32 here.
    public init(config: VisionTowerConfiguration<Family>, weights: WeightMap) throws {
        guard config.modelType == Family.modelType else {
            throw FormatError(weights.file, "vision model_type '\(config.modelType)' is not \(Family.modelType)")
        }
        self.config = config
        let scope = weights.visionTowerScope()
        for prefix in Family.ignoredPrefixes { scope.ignore(prefix: prefix) }
        transformer = try VisionTransformer(shape: config.shape, weights: scope, classToken: Family.classToken,
                                            patchBias: Family.patchBias, preNormName: Family.preNormName)
        try scope.finish()
    }

    public var hiddenSize: Int { config.hiddenSize }
    public var imageSize: Int { config.imageSize }
    public var layerCount: Int { config.numHiddenLayers }
    public var tokenCount: Int { transformer.tokenCount }
    public var hasClassToken: Bool { Family.classToken }

    public func hiddenStates(pixels: Tensor, layers: Set<Int>) throws -> [Int: Tensor] {
        try transformer.hiddenStates(pixels: pixels, layers: layers)
    }

    /// transformers' `last_hidden_state`: the last layer's output (SigLIP: through `post_layernorm`).
    public func lastHiddenState(pixels: Tensor) throws -> Tensor {
        let state = try transformer.lastLayerState(pixels: pixels)
        return Family.postNormInLastState ? try transformer.applyPostNorm(state) : state
    }
}

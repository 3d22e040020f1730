import VLMFormats
import VLMTensor

/// Weights made up on demand, uniform in ±0.05 (LayerNorm scales around 1), for timing shapes
/// nothing stores.
public final class RandomWeights: WeightSource, @unchecked Sendable {
    public let shapes: [String: [Int]]
    public var weightNames: [String] { Array(shapes.keys) }

    public init(shapes: [String: [Int]]) { self.shapes = shapes }

    public func info(_ name: String) -> WeightInfo? { shapes[name].map { WeightInfo(shape: $0, type: .f32) } }
    public func matrix(_ name: String) throws -> QuantizedMatrix { throw FormatError("random", "floats only") }

    public func floats(_ name: String) throws -> Tensor {
        guard let shape = shapes[name] else { throw FormatError("random", "no \(name)") }
        let t = Tensor(shape: shape, zeroed: false)
        // Seeded from the name with FNV-1a: the same weights in every run (hashValue is randomized).
        var state: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { state = (state ^ UInt64(b)) &* 0x100_0000_01b3 }
        let offset: Float = name.contains("norm") && name.hasSuffix(".weight") ? 1 : 0
        let p = t.data
        for i in 0..<t.count {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            p[i] = offset + (Float(state >> 40) / Float(1 << 24) - 0.5) * 0.1
        }
        return t
    }

    public static func clip(_ c: CLIPVisionConfiguration) -> RandomWeights {
        let d = c.hiddenSize, f = c.intermediateSize, grid = c.imageSize / c.patchSize
        var s: [String: [Int]] = [
            "vision_model.embeddings.class_embedding": [d],
            "vision_model.embeddings.patch_embedding.weight": [d, c.numChannels, c.patchSize, c.patchSize],
            "vision_model.embeddings.position_embedding.weight": [grid * grid + 1, d],
            "vision_model.pre_layrnorm.weight": [d], "vision_model.pre_layrnorm.bias": [d],
            "vision_model.post_layernorm.weight": [d], "vision_model.post_layernorm.bias": [d],
        ]
        for l in 0..<c.numHiddenLayers {
            let p = "vision_model.encoder.layers.\(l)."
            for n in ["layer_norm1", "layer_norm2"] { s[p + n + ".weight"] = [d]; s[p + n + ".bias"] = [d] }
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                s[p + "self_attn.\(n).weight"] = [d, d]; s[p + "self_attn.\(n).bias"] = [d]
            }
            s[p + "mlp.fc1.weight"] = [f, d]; s[p + "mlp.fc1.bias"] = [f]
            s[p + "mlp.fc2.weight"] = [d, f]; s[p + "mlp.fc2.bias"] = [d]
        }
        return RandomWeights(shapes: s)
    }
}

import Foundation
import VLMTensor

/// Rotary position embedding. Frequencies follow transformers' `rope_init_fn`s (default, linear,
/// llama3), computed in Float32 as it does.
public struct RoPE: Sendable {
    public enum Pairing: Sendable {
        /// Dimensions i and i + d/2 rotate together (HF `rotate_half`, GGUF qwen2 "neox" mode).
        case halves
        /// Dimensions 2i and 2i+1 rotate together: llama.cpp permutes Llama Q/K rows on conversion,
        /// so GGUF llama weights need this pairing to compute exactly what HF computes.
        case interleaved
    }

    public let headDim: Int
    public let pairing: Pairing
    public let inverseFrequencies: [Float]

    public init(headDim: Int, base: Float, scaling: RopeScaling?, pairing: Pairing, frequencyFactors: [Float]? = nil) {
        self.headDim = headDim
        self.pairing = pairing
        let half = headDim / 2
        var inv = (0..<half).map { i in 1 / powf(base, Float(2 * i) / Float(headDim)) }
        if let scaling {
            switch scaling.kind {
            case "linear":
                inv = inv.map { $0 / scaling.factor }
            case "llama3":
                let low = scaling.lowFreqFactor ?? 1, high = scaling.highFreqFactor ?? 4
                let original = Float(scaling.originalMaxPositions ?? 8192)
                let lowWavelen = original / low, highWavelen = original / high
                inv = inv.map { f in
                    let wavelen = 2 * Float.pi / f
                    if wavelen < highWavelen { return f }
                    if wavelen > lowWavelen { return f / scaling.factor }
                    let smooth = (original / wavelen - low) / (high - low)
                    return (1 - smooth) * f / scaling.factor + smooth * f
                }
            default:
                break
            }
        }
        if let frequencyFactors, frequencyFactors.count == half {
            inv = zip(inv, frequencyFactors).map { $0 / $1 }
        }
        inverseFrequencies = inv
    }

    /// Rotates `heads` vectors of `headDim` packed in `x` (one token) for `position`.
    public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, position: Int) {
        let half = headDim / 2
        inverseFrequencies.withUnsafeBufferPointer { inv in
            for i in 0..<half {
                let angle = Float(position) * inv[i]
                let c = cosf(angle), s = sinf(angle)
                for h in 0..<heads {
                    let v = x + h * headDim
                    let (a, b) = pairing == .halves ? (i, i + half) : (2 * i, 2 * i + 1)
                    let x0 = v[a], x1 = v[b]
                    v[a] = x0 * c - x1 * s
                    v[b] = x1 * c + x0 * s
                }
            }
        }
    }
}

/// `rope_scaling` of config.json.
public struct RopeScaling: Codable, Sendable {
    public var kind: String
    public var factor: Float
    public var lowFreqFactor: Float?
    public var highFreqFactor: Float?
    public var originalMaxPositions: Int?
    /// Only in transformers 5's `rope_parameters`, which carries the base too.
    public var theta: Float?

    enum CodingKeys: String, CodingKey {
        case type, ropeType = "rope_type", factor
        case lowFreqFactor = "low_freq_factor", highFreqFactor = "high_freq_factor"
        case originalMaxPositions = "original_max_position_embeddings"
        case theta = "rope_theta"
    }

    public init(kind: String, factor: Float, lowFreqFactor: Float? = nil, highFreqFactor: Float? = nil, originalMaxPositions: Int? = nil) {
        self.kind = kind; self.factor = factor; self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor; self.originalMaxPositions = originalMaxPositions
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.decodeIfPresent(String.self, forKey: .ropeType) ?? c.decodeIfPresent(String.self, forKey: .type) ?? "default"
        factor = try c.decodeIfPresent(Float.self, forKey: .factor) ?? 1
        lowFreqFactor = try c.decodeIfPresent(Float.self, forKey: .lowFreqFactor)
        highFreqFactor = try c.decodeIfPresent(Float.self, forKey: .highFreqFactor)
        originalMaxPositions = try c.decodeIfPresent(Int.self, forKey: .originalMaxPositions)
        theta = try c.decodeIfPresent(Float.self, forKey: .theta)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .ropeType)
        try c.encode(factor, forKey: .factor)
        try c.encodeIfPresent(lowFreqFactor, forKey: .lowFreqFactor)
        try c.encodeIfPresent(highFreqFactor, forKey: .highFreqFactor)
        try c.encodeIfPresent(originalMaxPositions, forKey: .originalMaxPositions)
        try c.encodeIfPresent(theta, forKey: .theta)
    }
}

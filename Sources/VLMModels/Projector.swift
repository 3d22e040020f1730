import Foundation
import VLMFormats
import VLMTensor

// LLaVA's multimodal projector: vision features → text embedding space. transformers'
// `LlavaMultiModalProjector` is linear_1 → act → linear_2 (LLaVA 1.5's `mlp2x_gelu`); the
// original LLaVA's `linear` projector is linear_1 alone.

public final class MultiModalProjector: @unchecked Sendable {
    public enum Kind: String, Codable, Sendable {
        case linear
        case mlp2xGelu = "mlp2x_gelu"
    }

    public let kind: Kind
    public let activation: Activation
    public let inputSize: Int
    public let outputSize: Int
    package var linear1: DenseLinear
    package var linear2: DenseLinear?

    /// `weights` is scoped to the projector (`linear_1.weight`, ...). `inputSize` is the vision
    /// hidden size times the number of feature layers concatenated; `activation` is
    /// `projector_hidden_act`; `bias` is `multimodal_projector_bias`. Loading is strict.
    public init(kind: Kind, inputSize: Int, outputSize: Int, activation: Activation = .gelu, bias: Bool = true,
                weights: WeightMap) throws {
        self.kind = kind
        self.activation = activation
        self.inputSize = inputSize
        self.outputSize = outputSize
        linear1 = try DenseLinear(weights, "linear_1", out: outputSize, in: inputSize, bias: bias)
        linear2 = kind == .linear ? nil : try DenseLinear(weights, "linear_2", out: outputSize, in: outputSize, bias: bias)
        try weights.finish()
    }

    /// x `[n, inputSize]` → `[n, outputSize]`.
    public func forward(_ x: Tensor) throws -> Tensor {
        guard x.shape.count == 2, x.shape[1] == inputSize else {
            throw ModelError("projector input has shape \(x.shape); expected [tokens, \(inputSize)]")
        }
        let n = x.shape[0]
        let first = Tensor(shape: [n, outputSize], zeroed: false)
        guard let linear2 else {
            linear1.forward(x.data, first.data, rows: n)
            return first
        }
        linear1.multiply(x.data, first.data, rows: n)
        activation.apply(first.data, rows: n, width: outputSize, bias: linear1.bias?.data)
        let out = Tensor(shape: [n, outputSize], zeroed: false)
        linear2.forward(first.data, out.data, rows: n)
        return out
    }
}

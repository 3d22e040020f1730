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
    package var linear1: Linear
    package var linear2: Linear?

    /// `weights` is scoped to the projector (`linear_1.weight`, ...). `inputSize` is the vision
    /// hidden size times the number of feature layers concatenated; `activation` is
    /// `projector_hidden_act`; `bias` is `multimodal_projector_bias`. Loading is strict.
    public init(kind: Kind, inputSize: Int, outputSize: Int, activation: Activation = .gelu, bias: Bool = true,
                weights: WeightMap) throws {
        self.kind = kind
        self.activation = activation
        self.inputSize = inputSize
        self.outputSize = outputSize
        linear1 = try Linear(weights, "linear_1", out: outputSize, in: inputSize, bias: bias)
        linear2 = kind == .linear ? nil : try Linear(weights, "linear_2", out: outputSize, in: outputSize, bias: bias)
        try weights.finish()
    }

    /// x `[n, inputSize]` → `[n, outputSize]`.
    public func forward(_ x: Tensor) throws -> Tensor {
        guard x.shape.count == 2, x.shape[1] == inputSize else {
            throw ModelError("projector input has shape \(x.shape); expected [tokens, \(inputSize)]")
        }
        return forward(Variable(x), tape: Tape(recording: false)).value
    }

    /// linear_1 → act → linear_2 (or linear_1 alone for a `linear` projector): the one forward,
    /// for encoding images and for training.
    public func forward(_ x: Variable, tape: Tape) -> Variable {
        let first = tape.linear(x, linear1)
        guard let linear2 else { return first }
        return tape.linear(tape.activation(first, activation), linear2)
    }

    /// The trainable leaves under transformers' names (`multi_modal_projector.linear_1.weight`, …).
    public var namedLeaves: [(String, Variable)] {
        var out: [(String, Variable)] = []
        for (name, linear) in [("linear_1", linear1), ("linear_2", linear2)] {
            guard let linear else { continue }
            out.append(("multi_modal_projector.\(name).weight", linear.weightLeaf!))
            if let bias = linear.bias { out.append(("multi_modal_projector.\(name).bias", bias)) }
        }
        return out
    }
}

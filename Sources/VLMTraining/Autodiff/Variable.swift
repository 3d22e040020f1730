import VLMTensor

// Reverse-mode automatic differentiation. A forward pass records one closure per op on a `Tape`;
// `backward` runs them newest-first, each adding its inputs' gradients from its output's.
// Gradients flow through frozen values (a frozen layer still passes dL/dx on) but are stored only
// where some trainable leaf is upstream: `requiresGrad` propagates from leaves to outputs.

/// A node of the graph: a Float32 value and, once something flows back into it, its gradient.
public final class Variable: @unchecked Sendable {
    public let value: Tensor
    /// True for trainable leaves and for every value computed from one.
    public let requiresGrad: Bool
    /// Same shape as `value`; nil until a gradient arrives.
    public private(set) var grad: Tensor?

    public init(_ value: Tensor, requiresGrad: Bool = false) {
        self.value = value
        self.requiresGrad = requiresGrad
    }

    /// A frozen constant (no gradient is kept for it).
    public convenience init(shape: [Int], values: [Float]) {
        self.init(Tensor(shape: shape, values: values))
    }

    public var shape: [Int] { value.shape }
    public var count: Int { value.count }
    /// Rows when viewed as a matrix `[rows, last dimension]`.
    public var rows: Int { value.count / max(value.shape.last ?? 1, 1) }
    public var columns: Int { value.shape.last ?? 1 }
    public var data: UnsafeMutablePointer<Float> { value.data }

    /// The gradient buffer, zero-filled when first asked for. Ops add into it.
    public func gradBuffer() -> UnsafeMutablePointer<Float> {
        if let grad { return grad.data }
        let g = Tensor(shape: value.shape, zeroed: true)
        grad = g
        return g.data
    }

    /// Clears the accumulated gradient (after an optimizer step), keeping the buffer.
    public func zeroGrad() {
        if let grad { grad.data.update(repeating: 0, count: grad.count) }
    }

    /// Frees the gradient of an intermediate value once it has been passed on.
    func releaseGrad() { grad = nil }
}

/// Records the backward closures of one forward pass.
public final class Tape {
    private var entries: [(output: Variable, backward: (UnsafeMutablePointer<Float>) -> Void)] = []

    public init() {}

    /// Number of recorded ops (for tests and diagnostics).
    public var count: Int { entries.count }

    /// Registers `backward(dOutput)` for an op whose output is `output`. Nothing is recorded when
    /// no gradient can reach a trainable value through it.
    func record(_ output: Variable, _ backward: @escaping (UnsafeMutablePointer<Float>) -> Void) {
        guard output.requiresGrad else { return }
        entries.append((output, backward))
    }

    /// Back-propagates from the scalar `loss` (dLoss = `seed`), then forgets the graph.
    /// Gradients add into the leaves' buffers, so several backward passes accumulate.
    public func backward(_ loss: Variable, seed: Float = 1) {
        precondition(loss.count == 1, "backward starts from a scalar, got shape \(loss.shape)")
        backward(loss, outputGradient: [seed])
    }

    /// Back-propagates a given gradient of a non-scalar output (vector–Jacobian product).
    public func backward(_ output: Variable, outputGradient: [Float]) {
        precondition(output.count == outputGradient.count, "gradient of \(outputGradient.count) values for shape \(output.shape)")
        if output.requiresGrad {
            let g = output.gradBuffer()
            for i in outputGradient.indices { g[i] += outputGradient[i] }
        }
        for (output, step) in entries.reversed() {
            guard let g = output.grad else { continue }   // nothing flowed back into this op
            step(g.data)
            output.releaseGrad()
        }
        entries.removeAll()
    }

    /// Drops the graph without back-propagating (evaluation passes).
    public func reset() { entries.removeAll() }
}

/// Shapes an op was given that it cannot combine: a programming error in a model graph.
func checkShape(_ condition: Bool, _ message: @autoclosure () -> String) {
    precondition(condition, message())
}

import VLMTensor

/// A LoRA update on one linear layer (PEFT's `lora_A`/`lora_B`): y += scale · (x·Aᵀ)·Bᵀ with
/// A `[r, in]`, B `[out, r]` and scale = alpha / r (or alpha / √r for rsLoRA). The tensors are
/// shared with the trainer, so a model being fine-tuned generates with the current weights.
public final class LowRankAdapter: @unchecked Sendable {
    public let a: Tensor
    public let b: Tensor
    public let scale: Float
    /// x·Aᵀ of one token, kept so decode does not allocate.
    private let decodeScratch: FloatStorage

    public init(a: Tensor, b: Tensor, scale: Float) {
        precondition(a.shape.count == 2 && b.shape.count == 2 && a.shape[0] == b.shape[1], "LoRA shapes \(a.shape) and \(b.shape) do not chain")
        self.a = a; self.b = b; self.scale = scale
        decodeScratch = FloatStorage(count: a.shape[0], zeroed: false)
    }

    public var rank: Int { a.shape[0] }
    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }

    /// y `[n, out]` += scale · (x `[n, in]` · Aᵀ) · Bᵀ.
    public func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, tokens n: Int) {
        let r = rank
        let low = n == 1 ? decodeScratch : FloatStorage(count: n * r, zeroed: false)
        Kernels.matmulTransposed(x, a.data, low.pointer, m: n, n: r, k: inFeatures)
        for i in 0..<(n * r) { low.pointer[i] *= scale }
        Kernels.matmulTransposed(low.pointer, b.data, y, m: n, n: outFeatures, k: r, accumulate: true)
    }
}

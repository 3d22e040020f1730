import VLMTensor

/// y = x·Wᵀ + b with W `[out, in]` in its stored encoding. One token goes through the quantized
/// mat-vec (decode is memory bound, so weights stay compressed); several tokens dequantize W once
/// into a scratch buffer and use sgemm.
public struct Linear: @unchecked Sendable {
    public let weight: QuantizedMatrix
    public let bias: Tensor?
    /// A LoRA adapter applied on top of the stored weight, if one is loaded.
    public var adapter: LowRankAdapter?

    public init(weight: QuantizedMatrix, bias: Tensor? = nil) { self.weight = weight; self.bias = bias }

    public var inFeatures: Int { weight.cols }
    public var outFeatures: Int { weight.rows }

    /// x `[n, in]` → y `[n, out]`. `scratch` holds at least `out·in` floats when n > 1 and W is not F32.
    public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, tokens n: Int,
                        scratch: UnsafeMutablePointer<Float>) {
        if n == 1 {
            weight.matVec(x, y)
        } else if weight.type == .f32 {
            Kernels.matmulTransposed(x, weight.data.assumingMemoryBound(to: Float.self), y, m: n, n: outFeatures, k: inFeatures)
        } else {
            weight.dequantize(into: scratch)
            Kernels.matmulTransposed(x, scratch, y, m: n, n: outFeatures, k: inFeatures)
        }
        if let bias {
            let b = bias.data, out = outFeatures
            for t in 0..<n { Kernels.axpy(1, b, y + t * out, out) }
        }
        adapter?.apply(x, y, tokens: n)
    }
}

import Foundation
import VLMTensor

/// y = x·Wᵀ + b (+ a LoRA update): the one linear layer of every model, inference and training
/// alike (`Tape.linear(_:_:)` runs it). W `[out, in]` stays in its stored encoding; a Float32 W
/// (vision towers, projectors) is also a graph leaf over the same storage, so it can train in full.
public struct Linear: @unchecked Sendable {
    public let weight: QuantizedMatrix
    /// W as a leaf when it is Float32 in memory vlmsh owns: what trains when the layer trains.
    public let weightLeaf: Variable?
    public let bias: Variable?
    /// A LoRA adapter applied on top of the stored weight, if one is installed.
    public var adapter: LowRankAdapter?

    /// A layer over a stored matrix (decoders: GGUF or safetensors weights, read in place). With
    /// int8 activations, Q4_0, Q4_K and Q6_K weights are also interleaved for the integer kernels.
    public init(weight: QuantizedMatrix, bias: Tensor? = nil) {
        self.weight = QuantizedMatrix.activations == .int8 ? weight.interleavedForIntegerProducts() : weight
        weightLeaf = nil
        self.bias = bias.map { Variable($0) }
    }

    /// A layer over a Float32 tensor that can train in place.
    public init(dense: Tensor, bias: Tensor?) {
        precondition(dense.shape.count == 2, "a linear weight is [out, in], got \(dense.shape)")
        weight = QuantizedMatrix(type: .f32, rows: dense.shape[0], cols: dense.shape[1],
                                 data: UnsafeRawPointer(dense.data), owner: dense.storage)
        weightLeaf = Variable(dense)
        self.bias = bias.map { Variable($0) }
    }

    public var inFeatures: Int { weight.cols }
    public var outFeatures: Int { weight.rows }
}

/// Float32 buffers a stored matrix is dequantized into for one product, reused across products
/// (a 7B model's largest matrix is 180 MB: allocating it per product would page-fault it anew).
final class ScratchPool: @unchecked Sendable {
    static let shared = ScratchPool()
    private var free: [FloatStorage] = []
    private let lock = NSLock()

    /// Runs `body` with a buffer of at least `count` floats that no one else uses meanwhile.
    func withBuffer<T>(count: Int, _ body: (UnsafeMutablePointer<Float>) -> T) -> T {
        lock.lock()
        let index = free.lastIndex { $0.count >= count }   // the smallest that fits (sorted largest first)
        var buffer = index.map { free.remove(at: $0) }
        lock.unlock()
        if buffer == nil { buffer = FloatStorage(count: count, zeroed: false) }
        defer {
            lock.lock()
            // Keep the larger buffers: a smaller one would only be replaced by the next big matrix.
            free.append(buffer!)
            free.sort { $0.count > $1.count }
            if free.count > 2 { free.removeLast(free.count - 2) }
            lock.unlock()
        }
        return body(buffer!.pointer)
    }
}

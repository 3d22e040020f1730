import CVLMKernels
import Foundation
import VLMTensor

/// How a KV cache stores keys and values (`--kv-cache`, llama.cpp's `--cache-type-k/-v`):
/// - f32: exactly what the projections computed (transformers' numbers);
/// - f16: half the memory, and half of what each decode step reads at long contexts, as
///   llama.cpp keeps it by default. The default follows `--activations`: f16 with int8
///   (llama.cpp's numbers), f32 with f32.
public enum KVCachePrecision: String, Sendable, CaseIterable {
    case f32, f16

    public var bytes: Int { self == .f32 ? 4 : 2 }

    /// `--kv-cache` / `$VLMSH_KV_CACHE` when given; nil follows `QuantizedMatrix.activations`.
    nonisolated(unsafe) public static var chosen: KVCachePrecision? =
        KVCachePrecision(rawValue: ProcessInfo.processInfo.environment["VLMSH_KV_CACHE"] ?? "")

    public static var current: KVCachePrecision { chosen ?? (QuantizedMatrix.activations == .int8 ? .f16 : .f32) }
}

/// Keys and values of every position seen so far, per layer: `[capacity, kvHeads·headDim]` in
/// `precision`. Grows by doubling, so decode steps do not allocate, but not past `limit` (the
/// model's context) unless a caller asks for more positions than that.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let width: Int
    public let precision: KVCachePrecision
    public private(set) var capacity: Int
    public let limit: Int
    public private(set) var count = 0
    private var keys: [UnsafeMutableRawPointer]
    private var values: [UnsafeMutableRawPointer]

    public init(layers: Int, width: Int, capacity: Int = 256, limit: Int = .max, precision: KVCachePrecision = .current) {
        self.layers = layers
        self.width = width
        self.precision = precision
        self.limit = max(limit, 1)
        self.capacity = max(capacity, 1)
        let bytes = self.capacity * width * precision.bytes
        keys = (0..<layers).map { _ in .allocate(byteCount: bytes, alignment: 64) }
        values = (0..<layers).map { _ in .allocate(byteCount: bytes, alignment: 64) }
    }

    deinit {
        for p in keys + values { p.deallocate() }
    }

    /// Bytes one more position takes over all layers (keys and values).
    public var bytesPerPosition: Int { 2 * layers * width * precision.bytes }

    /// Makes room for `extra` more positions.
    package func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        var newCapacity = capacity
        while newCapacity < count + extra { newCapacity *= 2 }
        newCapacity = min(newCapacity, max(limit, count + extra))
        let used = count * width * precision.bytes, bytes = newCapacity * width * precision.bytes
        for l in 0..<layers {
            let k = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            let v = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            k.copyMemory(from: keys[l], byteCount: used)
            v.copyMemory(from: values[l], byteCount: used)
            keys[l].deallocate(); values[l].deallocate()
            keys[l] = k; values[l] = v
        }
        capacity = newCapacity
    }

    /// Writes `n` positions of keys and values `[n, width]` at `position` of layer `layer`
    /// (room reserved first).
    package func store(layer: Int, position: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>, count n: Int) {
        let offset = position * width * precision.bytes
        switch precision {
        case .f32:
            (keys[layer] + offset).copyMemory(from: k, byteCount: n * width * 4)
            (values[layer] + offset).copyMemory(from: v, byteCount: n * width * 4)
        case .f16:
            vlm_f16_from_f32(k, (keys[layer] + offset).assumingMemoryBound(to: UInt16.self), n * width)
            vlm_f16_from_f32(v, (values[layer] + offset).assumingMemoryBound(to: UInt16.self), n * width)
        }
    }

    /// Layer `layer`'s keys and values from position 0, in `precision`.
    package func keys(layer: Int) -> UnsafeRawPointer { UnsafeRawPointer(keys[layer]) }
    package func values(layer: Int) -> UnsafeRawPointer { UnsafeRawPointer(values[layer]) }

    /// Calls `body` with layer `layer`'s first `positions` keys and values as Float32
    /// `[positions, width]`: the cache itself when it is Float32, else a widened copy in scratch.
    package func withFloatKeysAndValues<R>(layer: Int, positions: Int, _ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
        if precision == .f32 {
            return body(keys[layer].assumingMemoryBound(to: Float.self), values[layer].assumingMemoryBound(to: Float.self))
        }
        let n = positions * width
        return ScratchPool.shared.withBuffer(count: 2 * n) { scratch in
            vlm_f32_from_f16(keys[layer].assumingMemoryBound(to: UInt16.self), scratch, n)
            vlm_f32_from_f16(values[layer].assumingMemoryBound(to: UInt16.self), scratch + n, n)
            return body(scratch, scratch + n)
        }
    }

    package func advance(_ n: Int) { count += n }

    /// Forgets positions from `n` on (e.g. to re-run a conversation from a shared prefix).
    public func truncate(to n: Int) { count = min(count, max(0, n)) }
}

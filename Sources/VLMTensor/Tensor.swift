import Foundation

/// Heap storage for Float32 values, 64-byte aligned so vector loads never straddle cache lines.
public final class FloatStorage: @unchecked Sendable {
    public let pointer: UnsafeMutablePointer<Float>
    public let count: Int

    public init(count: Int, zeroed: Bool = true) {
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        if zeroed { pointer.initialize(repeating: 0, count: count) }
    }

    deinit { pointer.deallocate() }
}

/// A dense, row-major Float32 tensor. Copies share storage: kernels write through `data`
/// explicitly, so there is no hidden copy-on-write in hot loops.
public struct Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let storage: FloatStorage

    public init(shape: [Int], zeroed: Bool = true) {
        self.shape = shape
        storage = FloatStorage(count: shape.reduce(1, *), zeroed: zeroed)
    }

    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        self.init(shape: shape, zeroed: false)
        values.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    /// A tensor over existing storage of exactly `shape`'s element count.
    public init(shape: [Int], storage: FloatStorage) {
        precondition(shape.reduce(1, *) == storage.count, "storage of \(storage.count) values for shape \(shape)")
        self.shape = shape
        self.storage = storage
    }

    /// The same values under another shape with the same element count (storage is shared).
    public init(reshaping other: Tensor, to shape: [Int]) {
        precondition(shape.reduce(1, *) == other.count, "cannot view \(other.shape) as \(shape)")
        self.shape = shape
        storage = other.storage
    }

    public var count: Int { storage.count }
    public var data: UnsafeMutablePointer<Float> { storage.pointer }
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count) }
    public var array: [Float] { Array(buffer) }

    /// Row `i` of a tensor viewed as `[shape[0], rest]`.
    public func row(_ i: Int) -> UnsafeMutablePointer<Float> { data + i * (count / shape[0]) }
}

import VLMTensor

/// Keys and values of every position seen so far, per layer: `[capacity, kvHeads·headDim]`.
/// Grows by doubling, so decode steps do not allocate, but not past `limit` (the model's context)
/// unless a caller asks for more positions than that.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let width: Int
    public private(set) var capacity: Int
    public let limit: Int
    public private(set) var count = 0
    private(set) var keys: [FloatStorage]
    private(set) var values: [FloatStorage]

    public init(layers: Int, width: Int, capacity: Int = 256, limit: Int = .max) {
        self.layers = layers
        self.width = width
        self.limit = max(limit, 1)
        self.capacity = max(capacity, 1)
        keys = (0..<layers).map { _ in FloatStorage(count: max(capacity, 1) * width, zeroed: false) }
        values = (0..<layers).map { _ in FloatStorage(count: max(capacity, 1) * width, zeroed: false) }
    }

    /// Makes room for `extra` more positions.
    package func reserve(_ extra: Int) {
        guard count + extra > capacity else { return }
        var newCapacity = capacity
        while newCapacity < count + extra { newCapacity *= 2 }
        newCapacity = min(newCapacity, max(limit, count + extra))
        for l in 0..<layers {
            let k = FloatStorage(count: newCapacity * width, zeroed: false)
            let v = FloatStorage(count: newCapacity * width, zeroed: false)
            k.pointer.update(from: keys[l].pointer, count: count * width)
            v.pointer.update(from: values[l].pointer, count: count * width)
            keys[l] = k; values[l] = v
        }
        capacity = newCapacity
    }

    package func key(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { keys[layer].pointer + position * width }
    package func value(layer: Int, position: Int) -> UnsafeMutablePointer<Float> { values[layer].pointer + position * width }

    package func advance(_ n: Int) { count += n }

    /// Forgets positions from `n` on (e.g. to re-run a conversation from a shared prefix).
    public func truncate(to n: Int) { count = min(count, max(0, n)) }
}

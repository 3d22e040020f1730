import VLMFormats
import VLMTensor

/// Weights addressed by their Hugging Face names after a model's `sanitize` step. Loading is strict:
/// `take` fails on a missing name and `finish` fails on any name nobody took.
public final class WeightMap {
    private var entries: [String: (source: WeightSource, name: String)]
    private var taken = Set<String>()
    public let file: String

    /// `entries` maps canonical (HF) names to where each tensor lives.
    public init(file: String, entries: [String: (source: WeightSource, name: String)]) {
        self.file = file
        self.entries = entries
    }

    /// Every tensor of `source` under its own name. What the tensors take once read (they are
    /// mapped, and every one of them is touched by a forward pass) is checked against the memory
    /// budget first.
    public convenience init(file: String, source: WeightSource) throws {
        var e: [String: (source: WeightSource, name: String)] = [:]
        var bytes = 0.0
        for n in source.weightNames {
            e[n] = (source, n)
            if let info = source.info(n) { bytes += Self.storedBytes(info) }
        }
        try MemoryBudget.require(bytes, for: "the weights in \(file) (\(e.count) tensors)")
        self.init(file: file, entries: e)
    }

    /// Bytes a tensor takes in its stored encoding (Double: the shapes come from the file).
    static func storedBytes(_ info: WeightInfo) -> Double {
        let elements = info.shape.reduce(1.0) { $0 * Double($1) }
        return elements / Double(info.type.blockSize) * Double(info.type.blockBytes)
    }

    public var names: [String] { Array(entries.keys) }
    public func contains(_ name: String) -> Bool { entries[name] != nil }

    /// Renames keys: `rename` returns the new name, or nil to drop the tensor (e.g. rotary caches).
    public func rename(_ rename: (String) -> String?) {
        var out: [String: (source: WeightSource, name: String)] = [:]
        for (k, v) in entries { if let n = rename(k) { out[n] = v } }
        entries = out
    }

    /// The names under `prefix`, re-keyed without it, as a new map sharing the same sources.
    public func scoped(_ prefix: String) -> WeightMap {
        var out: [String: (source: WeightSource, name: String)] = [:]
        for (k, v) in entries where k.hasPrefix(prefix) { out[String(k.dropFirst(prefix.count))] = v; taken.insert(k) }
        return WeightMap(file: file, entries: out)
    }

    public func info(_ name: String) -> WeightInfo? {
        entries[name].flatMap { $0.source.info($0.name) }
    }

    private func locate(_ name: String, shape: [Int]?) throws -> (source: WeightSource, name: String) {
        guard let e = entries[name], let info = e.source.info(e.name) else {
            throw FormatError(file, "missing weight '\(name)'")
        }
        if let shape, info.shape != shape {
            throw FormatError(file, "weight '\(name)' has shape \(info.shape), expected \(shape)")
        }
        taken.insert(name)
        return e
    }

    /// A matrix kept in its stored encoding; `shape` is checked when given (PyTorch order).
    /// Scanned for NaN/Inf (values, or a quantized type's block scales).
    public func matrix(_ name: String, shape: [Int]? = nil) throws -> QuantizedMatrix {
        let e = try locate(name, shape: shape)
        let m = try e.source.matrix(e.name)
        try requireFinite(m.data, type: m.type, count: m.rows * m.cols, name: e.name)
        return m
    }

    /// A tensor converted to Float32, scanned for NaN/Inf as it is now in cache.
    public func floats(_ name: String, shape: [Int]? = nil) throws -> Tensor {
        let e = try locate(name, shape: shape)
        let t = try e.source.floats(e.name)
        try requireFinite(UnsafeRawPointer(t.data), type: .f32, count: t.count, name: e.name)
        return t
    }

    /// A NaN or infinite weight would load and silently make every output garbage.
    private func requireFinite(_ data: UnsafeRawPointer, type: GGMLType, count: Int, name: String) throws {
        if let bad = FiniteScan.firstNonFinite(data, type: type, count: count) {
            throw FormatError(file, "weight '\(name)' holds a non-finite value (\(bad.value)) at element \(bad.index)")
        }
    }

    /// Fails when a weight was never used: a left-over key means the checkpoint is not what we think.
    public func finish() throws {
        let left = Set(entries.keys).subtracting(taken).sorted()
        if let first = left.first {
            throw FormatError(file, "unexpected weight '\(first)'" + (left.count > 1 ? " (and \(left.count - 1) more)" : ""))
        }
    }
}

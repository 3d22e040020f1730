import Foundation
import VLMTensor

/// Writes `.safetensors` files: 8-byte little-endian header length, JSON header padded with spaces
/// to a multiple of 8, then the tensors back to back. The file is written next to the target
/// and renamed into place (`AtomicFileWriter`), so `path` never holds a partial file.
public enum SafetensorsWriter {
    /// Writes tensors already in memory.
    public static func write(_ tensors: [(name: String, tensor: Tensor, dtype: GGMLType)],
                             metadata: [String: String] = [:], to path: String) throws {
        _ = try write(tensors.map { ($0.name, $0.tensor.shape, $0.dtype) }, metadata: metadata, to: path) { tensors[$0].tensor }
    }

    /// Writes one tensor at a time: `tensor(i)` is asked for each entry in order and dropped
    /// after writing, so a whole model is never held in Float32. Returns the file size.
    @discardableResult
    public static func write(_ entries: [(name: String, shape: [Int], dtype: GGMLType)], metadata: [String: String] = [:],
                             to path: String, tensor: (Int) throws -> Tensor) throws -> Int {
        let header = try self.header(entries, metadata: metadata, path: path)
        let out = try AtomicFileWriter(path: path)
        var length = UInt64(header.count).littleEndian
        try out.write(&length, count: 8)
        try out.write(header)
        for (index, entry) in entries.enumerated() {
            let t = try tensor(index)
            guard t.shape == entry.shape else { throw FormatError(path, "'\(entry.name)' came out as \(t.shape), expected \(entry.shape)") }
            let n = t.count
            if entry.dtype == .f32 {
                try out.write(t.data, count: 4 * n)
                continue
            }
            // Half-precision values in chunks, so a large tensor never needs a whole second copy.
            var i = 0
            while i < n {
                let m = min(1 << 16, n - i)
                try out.write(Quantize.encode(entry.dtype, t.data + i, count: m))
                i += m
            }
        }
        try out.commit()
        return 8 + header.count + entries.reduce(0) { $0 + $1.shape.reduce(1, *) * ($1.dtype == .f32 ? 4 : 2) }
    }

    /// The JSON header: names, dtypes, shapes and offsets, padded with spaces so tensor data
    /// starts 8-byte aligned (the format allows trailing spaces).
    static func header(_ entries: [(name: String, shape: [Int], dtype: GGMLType)], metadata: [String: String], path: String) throws -> Data {
        var names = Set<String>()
        var json: [String: Any] = [:]
        var offset = 0
        for e in entries {
            guard names.insert(e.name).inserted else { throw FormatError(path, "tensor '\(e.name)' is written twice") }
            guard e.name != "__metadata__" else { throw FormatError(path, "'__metadata__' is not a tensor name") }
            let dtype: String
            switch e.dtype {
            case .f32: dtype = "F32"
            case .f16: dtype = "F16"
            case .bf16: dtype = "BF16"
            default: throw FormatError(path, "tensor '\(e.name)': cannot write \(e.dtype.name); use f32, f16 or bf16")
            }
            let bytes = e.shape.reduce(1, *) * (e.dtype == .f32 ? 4 : 2)
            json[e.name] = ["dtype": dtype, "shape": e.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        if !metadata.isEmpty { json["__metadata__"] = metadata }
        var header = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
        header.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - (8 + header.count) % 8) % 8))
        return header
    }
}

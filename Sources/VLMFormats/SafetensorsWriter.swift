import Foundation
import VLMTensor
#if canImport(Glibc)
import Glibc
#endif

/// Writes `.safetensors` files: 8-byte little-endian header length, JSON header padded with spaces
/// to a multiple of 8, then the tensors back to back. The file is written next to the target
/// and renamed into place, so `path` never holds a partial file.
public enum SafetensorsWriter {
    public static func write(_ tensors: [(name: String, tensor: Tensor, dtype: GGMLType)],
                             metadata: [String: String] = [:], to path: String) throws {
        var names = Set<String>()
        var entries: [String: Any] = [:]
        var offset = 0
        for t in tensors {
            guard names.insert(t.name).inserted else { throw FormatError(path, "tensor '\(t.name)' is written twice") }
            guard t.name != "__metadata__" else { throw FormatError(path, "'__metadata__' is not a tensor name") }
            let dtype: String
            switch t.dtype {
            case .f32: dtype = "F32"
            case .f16: dtype = "F16"
            case .bf16: dtype = "BF16"
            default: throw FormatError(path, "tensor '\(t.name)': cannot write \(t.dtype.name); use f32, f16 or bf16")
            }
            let bytes = t.tensor.count * (t.dtype == .f32 ? 4 : 2)
            entries[t.name] = ["dtype": dtype, "shape": t.tensor.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        if !metadata.isEmpty { entries["__metadata__"] = metadata }
        var header = try JSONSerialization.data(withJSONObject: entries, options: [.sortedKeys])
        // Pad so tensor data starts 8-byte aligned (the format allows trailing spaces).
        header.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - (8 + header.count) % 8) % 8))

        let folder = (path as NSString).deletingLastPathComponent
        let temp = (folder.isEmpty ? "." : folder) + "/.\((path as NSString).lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        guard let file = fopen(temp, "wb") else {
            throw FormatError(path, "cannot create \(temp): \(String(cString: strerror(errno)))")
        }
        var closed = false
        do {
            defer { if !closed { fclose(file) } }
            func put(_ p: UnsafeRawPointer, _ n: Int) throws {
                guard n == 0 || fwrite(p, 1, n, file) == n else {
                    throw FormatError(path, "write failed: \(String(cString: strerror(errno)))")
                }
            }
            var length = UInt64(header.count).littleEndian
            try put(&length, 8)
            try header.withUnsafeBytes { try put($0.baseAddress!, $0.count) }
            var chunk = [UInt16](repeating: 0, count: 1 << 16)
            for t in tensors {
                let n = t.tensor.count
                if t.dtype == .f32 {
                    try put(t.tensor.data, 4 * n)
                    continue
                }
                var i = 0
                while i < n {
                    let m = min(chunk.count, n - i)
                    for j in 0..<m {
                        let x = t.tensor.data[i + j]
                        chunk[j] = (t.dtype == .f16 ? Half.floatToF16(x) : Half.floatToBF16(x)).littleEndian
                    }
                    try chunk.withUnsafeBytes { try put($0.baseAddress!, 2 * m) }
                    i += m
                }
            }
            guard fflush(file) == 0, fsync(fileno(file)) == 0 else {
                throw FormatError(path, "write failed: \(String(cString: strerror(errno)))")
            }
            closed = true
            guard fclose(file) == 0 else { throw FormatError(path, "write failed: \(String(cString: strerror(errno)))") }
            guard rename(temp, path) == 0 else {
                throw FormatError(path, "cannot move the written file into place: \(String(cString: strerror(errno)))")
            }
        } catch {
            unlink(temp)
            throw error
        }
    }
}

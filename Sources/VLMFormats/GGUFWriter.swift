import Foundation
import VLMTensor

/// One tensor of a GGUF file being written: its name, its shape in PyTorch order (outermost
/// first; the file stores the reverse, ggml's ne0 first) and its encoding.
public struct GGUFTensorEntry: Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var type: GGMLType
    public init(name: String, shape: [Int], type: GGMLType) { self.name = name; self.shape = shape; self.type = type }
}

/// A tensor's data as handed to the writer: Float32 values it encodes as the entry's type, or
/// bytes already in that type (a tensor copied from another GGUF as stored).
public enum GGUFTensorData {
    case floats(Tensor)
    case encoded([UInt8])
}

/// Writes GGUF v3 files as llama.cpp and gguf-py read them: the header (magic, version, counts),
/// the metadata key/values (every value type, arrays included), the tensor table (name, ggml
/// dimensions, type, offset), then the data section starting at a multiple of the alignment
/// (`general.alignment`, default 32) with every tensor's data padded to it. The file is streamed
/// to a temporary name and renamed into place (`AtomicFileWriter`).
public enum GGUFWriter {
    public static let version: UInt32 = 3

    /// Writes `tensors` (asked for one at a time, in order, through `data`) with `metadata` in the
    /// order given. Returns the file size.
    @discardableResult
    public static func write(metadata: [(key: String, value: GGUFValue)], tensors: [GGUFTensorEntry], to path: String,
                             data: (Int) throws -> GGUFTensorData) throws -> Int {
        let alignment = try self.alignment(metadata, path: path)
        var header = Bytes()
        header.raw(Array("GGUF".utf8))
        header.u32(version)
        header.u64(UInt64(tensors.count))
        header.u64(UInt64(metadata.count))
        var keys = Set<String>()
        for (key, value) in metadata {
            guard keys.insert(key).inserted else { throw FormatError(path, "metadata key '\(key)' is written twice") }
            header.string(key)
            header.u32(typeCode(value))
            try header.value(value, key: key, path: path)
        }
        var names = Set<String>()
        var sizes: [Int] = []
        var offset = 0
        for t in tensors {
            guard names.insert(t.name).inserted else { throw FormatError(path, "tensor '\(t.name)' is written twice") }
            let dims = Array(t.shape.reversed())
            guard (1...GGUFFile.maxDims).contains(dims.count), dims.allSatisfy({ $0 > 0 }) else {
                throw FormatError(path, "tensor '\(t.name)' has shape \(t.shape): 1 to \(GGUFFile.maxDims) positive dimensions")
            }
            guard dims[0] % t.type.blockSize == 0, let bytes = t.type.byteCount(elements: dims.reduce(1, *)) else {
                throw FormatError(path, "tensor '\(t.name)' rows of \(dims[0]) values are not whole \(t.type.name) blocks of \(t.type.blockSize)")
            }
            header.string(t.name)
            header.u32(UInt32(dims.count))
            for d in dims { header.u64(UInt64(d)) }
            header.u32(t.type.rawValue)
            header.u64(UInt64(offset))
            sizes.append(bytes)
            offset += padded(bytes, alignment)
        }
        header.raw([UInt8](repeating: 0, count: padded(header.bytes.count, alignment) - header.bytes.count))

        let out = try AtomicFileWriter(path: path)
        try out.write(header.bytes)
        for (i, t) in tensors.enumerated() {
            let bytes: [UInt8]
            switch try data(i) {
            case .floats(let values):
                guard values.count == sizes[i] / t.type.blockBytes * t.type.blockSize, values.shape.reduce(1, *) == t.shape.reduce(1, *) else {
                    throw FormatError(path, "tensor '\(t.name)' came out as \(values.shape), expected \(t.shape)")
                }
                bytes = Quantize.encode(t.type, values.data, count: values.count)
            case .encoded(let raw):
                guard raw.count == sizes[i] else {
                    throw FormatError(path, "tensor '\(t.name)' has \(raw.count) bytes of \(t.type.name), expected \(sizes[i])")
                }
                bytes = raw
            }
            try out.write(bytes)
            try out.write([UInt8](repeating: 0, count: padded(bytes.count, alignment) - bytes.count))
        }
        try out.commit()
        return out.bytesWritten
    }

    static func padded(_ n: Int, _ alignment: Int) -> Int { (n + alignment - 1) / alignment * alignment }

    /// `general.alignment` when given (a power of two, as readers require), else 32.
    static func alignment(_ metadata: [(key: String, value: GGUFValue)], path: String) throws -> Int {
        guard let value = metadata.first(where: { $0.key == "general.alignment" })?.value else { return GGUFFile.defaultAlignment }
        guard case .uint32(let a) = value, a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
            throw FormatError(path, "general.alignment must be a uint32 power of two, got \(value)")
        }
        return Int(a)
    }

    /// The format's type code of a value. An array's elements must all be of one type (an empty
    /// array is written as one of uint8, which readers take as any empty list).
    static func typeCode(_ value: GGUFValue) -> UInt32 {
        switch value {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    /// A little-endian byte buffer for the header.
    struct Bytes {
        var bytes: [UInt8] = []

        mutating func raw(_ b: [UInt8]) { bytes += b }
        mutating func int<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        mutating func u32(_ v: UInt32) { int(v) }
        mutating func u64(_ v: UInt64) { int(v) }
        mutating func string(_ s: String) { u64(UInt64(s.utf8.count)); bytes += s.utf8 }

        mutating func value(_ value: GGUFValue, key: String, path: String) throws {
            switch value {
            case .uint8(let v): int(v)
            case .int8(let v): int(v)
            case .uint16(let v): int(v)
            case .int16(let v): int(v)
            case .uint32(let v): int(v)
            case .int32(let v): int(v)
            case .uint64(let v): int(v)
            case .int64(let v): int(v)
            case .float32(let v): int(v.bitPattern)
            case .float64(let v): int(v.bitPattern)
            case .bool(let v): int(UInt8(v ? 1 : 0))
            case .string(let s): string(s)
            case .array(let items):
                let code = items.first.map(GGUFWriter.typeCode) ?? 0
                for item in items where GGUFWriter.typeCode(item) != code {
                    throw FormatError(path, "metadata array '\(key)' mixes value types (\(items[0]) and \(item))")
                }
                u32(code)
                u64(UInt64(items.count))
                for item in items { try self.value(item, key: key, path: path) }
            }
        }
    }
}

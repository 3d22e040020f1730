import VLMTensor

/// One tensor record from a GGUF header.
public struct GGUFTensorInfo: Sendable, Equatable {
    public let name: String
    /// ggml order: `dims[0]` (ne0) is the fastest-varying (innermost) dimension.
    public let dims: [Int]
    public let type: GGMLType
    /// Absolute byte offset of the tensor data in the file.
    public let offset: Int
    public let byteCount: Int
    public var elementCount: Int { dims.reduce(1, *) }
    /// PyTorch order (outermost first).
    public var shape: [Int] { dims.reversed() }
}

/// A GGUF (v2/v3) file, memory-mapped. Header and metadata are parsed and validated up front;
/// tensor data is never copied — matrices point straight into the mapping.
public final class GGUFFile: WeightSource {
    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order (dictionaries lose it; some tools care).
    public let metadataKeys: [String]
    /// Tensor records in file order.
    public let tensorInfos: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute offset where the tensor data section starts.
    public let dataOffset: Int
    private let file: MappedFile
    private let index: [String: Int]

    public static let defaultAlignment = 32
    /// ggml tensors have at most four dimensions.
    static let maxDims = 4
    /// Deeper nesting than this is certainly corrupt and would risk the stack.
    static let maxArrayDepth = 8

    /// See `MappedFile.commitInterleavedRows`.
    public func commitInterleavedRows() { file.commitInterleavedRows() }

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        var reader = GGUFReader(file: file)

        let magic = try reader.bytes(4)
        guard magic.elementsEqual("GGUF".utf8) else {
            throw FormatError(path, "not a GGUF file (bad magic \(GGUFReader.describe(magic)))")
        }
        let version = Int(try reader.u32())
        if version == 1 { throw FormatError(path, "GGUF version 1 is not supported (re-convert the model with a current llama.cpp)") }
        if [2, 3].contains(Int(UInt32(version).byteSwapped)) {
            throw FormatError(path, "big-endian GGUF files are not supported")
        }
        guard version == 2 || version == 3 else { throw FormatError(path, "unsupported GGUF version \(version) (supported: 2, 3)") }
        self.version = version

        let tensorCount = try reader.count("tensor count", minBytesEach: 24)
        let kvCount = try reader.count("metadata count", minBytesEach: 13)
        (metadata, metadataKeys) = try Self.readMetadata(&reader, count: kvCount, path: path)

        var alignment = Self.defaultAlignment
        if let value = metadata["general.alignment"] {
            guard let a = value.int, a > 0, a & (a - 1) == 0, a <= 1 << 20 else {
                throw FormatError(path, "general.alignment must be a power of two, got \(value)")
            }
            alignment = a
        }
        self.alignment = alignment

        let (raws, index) = try Self.readTensorTable(&reader, count: tensorCount, path: path)
        let dataOffset = (reader.offset + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset
        tensorInfos = try raws.map { try Self.locate($0, dataOffset: dataOffset, alignment: alignment, fileSize: file.size, path: path) }
        self.index = index
    }

    /// The key/value section: every key once, values in the order written.
    private static func readMetadata(_ reader: inout GGUFReader, count: Int, path: String) throws -> ([String: GGUFValue], [String]) {
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        metadata.reserveCapacity(count)
        keys.reserveCapacity(count)
        for _ in 0..<count {
            let key = try reader.name("metadata key")
            let typeCode = try reader.u32()
            let value = try reader.value(typeCode, key: key, depth: 0)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw FormatError(path, "duplicate metadata key '\(key)'")
            }
            keys.append(key)
        }
        return (metadata, keys)
    }

    /// A tensor-table entry as written: name, dimensions (ggml order), type, offset in the data.
    private struct RawTensor { let name: String; let dims: [Int]; let type: GGMLType; let relativeOffset: Int }

    /// The tensor table, each entry checked for what can be checked before the data section.
    private static func readTensorTable(_ reader: inout GGUFReader, count: Int, path: String) throws -> ([RawTensor], [String: Int]) {
        var raws: [RawTensor] = []
        raws.reserveCapacity(count)
        var index: [String: Int] = [:]
        for i in 0..<count {
            let name = try reader.name("tensor name")
            let dimCount = Int(try reader.u32())
            guard dimCount <= Self.maxDims else {
                throw FormatError(path, "tensor '\(name)' has \(dimCount) dimensions (at most \(Self.maxDims))")
            }
            var dims: [Int] = []
            for _ in 0..<dimCount {
                let d = try reader.u64()
                guard d <= UInt64(Int32.max) else { throw FormatError(path, "tensor '\(name)' has an absurd dimension \(d)") }
                dims.append(Int(d))
            }
            let typeCode = try reader.u32()
            guard let type = GGMLType(rawValue: typeCode) else {
                throw FormatError(path, "unknown tensor type \(typeCode) for tensor '\(name)'")
            }
            let offset = try reader.u64()
            guard offset <= UInt64(Int.max / 2) else { throw FormatError(path, "tensor '\(name)' offset \(offset) is past end of file") }
            guard index.updateValue(i, forKey: name) == nil else {
                throw FormatError(path, "duplicate tensor name '\(name)'")
            }
            raws.append(RawTensor(name: name, dims: dims, type: type, relativeOffset: Int(offset)))
        }
        return (raws, index)
    }

    /// Where a tensor's data lies, checked to be whole blocks, aligned and inside the file.
    private static func locate(_ raw: RawTensor, dataOffset: Int, alignment: Int, fileSize: Int, path: String) throws -> GGUFTensorInfo {
        let ne0 = raw.dims.first ?? 1
        guard ne0 % raw.type.blockSize == 0 else {
            throw FormatError(path, "tensor '\(raw.name)' has ne0 = \(ne0), not a whole number of \(raw.type.name) blocks of \(raw.type.blockSize)")
        }
        var elements = 1
        for d in raw.dims {
            let (product, overflow) = elements.multipliedReportingOverflow(by: d)
            guard !overflow, product <= 1 << 48 else { throw FormatError(path, "tensor '\(raw.name)' has an absurd size \(raw.dims)") }
            elements = product
        }
        guard let byteCount = raw.type.byteCount(elements: elements) else {
            throw FormatError(path, "tensor '\(raw.name)' size is not a whole number of \(raw.type.name) blocks")
        }
        guard raw.relativeOffset % alignment == 0 else {
            throw FormatError(path, "tensor '\(raw.name)' offset \(raw.relativeOffset) is misaligned (alignment \(alignment))")
        }
        let start = dataOffset + raw.relativeOffset
        guard start <= fileSize, byteCount <= fileSize - start else {
            throw FormatError(path, "tensor '\(raw.name)' data (\(byteCount) bytes at offset \(start)) runs past end of file (\(fileSize) bytes)")
        }
        return GGUFTensorInfo(name: raw.name, dims: raw.dims, type: raw.type, offset: start, byteCount: byteCount)
    }

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? { index[name].map { tensorInfos[$0] } }

    // MARK: WeightSource

    public var weightNames: [String] { tensorInfos.map(\.name) }

    public func info(_ name: String) -> WeightInfo? {
        tensorInfo(name).map { WeightInfo(shape: $0.shape, type: $0.type) }
    }

    /// Viewed as `[shape[0], product(rest)]` like every weight source; a 2-D tensor is
    /// `[ne1, ne0]`, so each row is one contiguous run of whole blocks.
    public func matrix(_ name: String) throws -> QuantizedMatrix {
        guard let t = tensorInfo(name) else { throw FormatError(path, "no tensor named '\(name)'") }
        let rows = t.shape.first ?? 1
        let cols = rows == 0 ? 0 : t.elementCount / rows
        return QuantizedMatrix(type: t.type, rows: rows, cols: cols, data: file.base + t.offset, owner: file)
    }

    public func floats(_ name: String) throws -> Tensor {
        guard let t = tensorInfo(name) else { throw FormatError(path, "no tensor named '\(name)'") }
        let tensor = Tensor(shape: t.shape, zeroed: false)
        // Decode in rows of ne0 so every thread gets whole blocks.
        let ne0 = t.dims.first ?? 1
        let view = QuantizedMatrix(type: t.type, rows: ne0 == 0 ? 0 : t.elementCount / ne0, cols: ne0,
                                   data: file.base + t.offset, owner: file)
        view.dequantize(into: tensor.data)
        return tensor
    }
}

/// Bounds-checked cursor over the mapped header. Every read checks the remaining bytes first, and
/// every count is checked against what the rest of the file could possibly hold before use.
struct GGUFReader {
    let file: MappedFile
    var offset = 0

    init(file: MappedFile) { self.file = file }

    var remaining: Int { file.size - offset }

    func truncated(_ need: Int) -> FormatError {
        FormatError(file.path, "truncated file (needs \(need) bytes at offset \(offset), file has \(file.size))")
    }

    mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, n <= remaining else { throw truncated(n) }
        defer { offset += n }
        return UnsafeRawBufferPointer(start: file.base + offset, count: n)
    }

    mutating func load<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let size = MemoryLayout<T>.size
        guard size <= remaining else { throw truncated(size) }
        defer { offset += size }
        return T(littleEndian: file.base.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    mutating func u32() throws -> UInt32 { try load(UInt32.self) }
    mutating func u64() throws -> UInt64 { try load(UInt64.self) }

    /// A u64 count of items, each taking at least `minBytesEach` bytes of the rest of the file.
    mutating func count(_ what: String, minBytesEach: Int) throws -> Int {
        let n = try u64()
        guard n <= UInt64(remaining / max(minBytesEach, 1)) else {
            throw FormatError(file.path, "\(what) \(n) is larger than the rest of the file can hold (\(remaining) bytes left; truncated or corrupt file)")
        }
        return Int(n)
    }

    mutating func string(_ what: String) throws -> String {
        let n = try u64()
        guard n <= UInt64(remaining) else {
            throw FormatError(file.path, "\(what) length \(n) at offset \(offset - 8) runs past end of file")
        }
        return String(decoding: try bytes(Int(n)), as: UTF8.self)
    }

    /// Longest metadata key or tensor name accepted (llama.cpp's names are at most 64 bytes).
    static let maxNameBytes = 1024

    /// A metadata key or tensor name: short and printable, as the format's names are, so that a
    /// corrupt length is caught at once and every message quoting a name stays one short line.
    mutating func name(_ what: String) throws -> String {
        let start = offset, n = try u64()
        guard n <= UInt64(Self.maxNameBytes) else {
            throw FormatError(file.path, "\(what) length \(n) at offset \(start) is longer than any name (at most \(Self.maxNameBytes) bytes): corrupt file")
        }
        guard n <= UInt64(remaining) else {
            throw FormatError(file.path, "\(what) length \(n) at offset \(start) runs past end of file")
        }
        let raw = try bytes(Int(n))
        guard !raw.contains(where: { $0 < 0x20 || $0 == 0x7F }) else {
            throw FormatError(file.path, "\(what) at offset \(start) holds control characters: corrupt file")
        }
        return String(decoding: raw, as: UTF8.self)
    }

    /// Bytes a value of this type takes at least (for array count checks), nil for unknown types.
    static func minSize(_ typeCode: UInt32) -> Int? {
        switch typeCode {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 10, 11, 12: return 8
        case 8: return 8
        case 9: return 12
        default: return nil
        }
    }

    mutating func value(_ typeCode: UInt32, key: String, depth: Int) throws -> GGUFValue {
        switch typeCode {
        case 0: return .uint8(try load(UInt8.self))
        case 1: return .int8(try load(Int8.self))
        case 2: return .uint16(try load(UInt16.self))
        case 3: return .int16(try load(Int16.self))
        case 4: return .uint32(try load(UInt32.self))
        case 5: return .int32(try load(Int32.self))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self)))
        case 7:
            let b = try load(UInt8.self)
            guard b <= 1 else { throw FormatError(file.path, "bad bool value \(b) for key '\(key)'") }
            return .bool(b == 1)
        case 8: return .string(try string("string value of '\(key)'"))
        case 9:
            guard depth < GGUFFile.maxArrayDepth else {
                throw FormatError(file.path, "arrays nested deeper than \(GGUFFile.maxArrayDepth) for key '\(key)'")
            }
            let elementType = try u32()
            guard let minSize = Self.minSize(elementType) else {
                throw FormatError(file.path, "unknown metadata value type \(elementType) in array '\(key)'")
            }
            let n = try count("array length of '\(key)'", minBytesEach: minSize)
            var items: [GGUFValue] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try value(elementType, key: key, depth: depth + 1)) }
            return .array(items)
        case 10: return .uint64(try load(UInt64.self))
        case 11: return .int64(try load(Int64.self))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self)))
        default:
            throw FormatError(file.path, "unknown metadata value type \(typeCode) for key '\(key)'")
        }
    }

    static func describe(_ bytes: UnsafeRawBufferPointer) -> String {
        bytes.map { b in (0x20..<0x7F).contains(b) ? String(UnicodeScalar(b)) : "\\x" + String(b, radix: 16) }.joined()
    }
}

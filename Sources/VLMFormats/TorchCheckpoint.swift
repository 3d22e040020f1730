import Foundation
import VLMTensor

/// One stored entry of a zip archive: where its bytes sit in the file.
struct ZipEntry: Sendable {
    let name: String
    /// Absolute offset of the entry's data in the file.
    let offset: Int
    let size: Int
    let crc32: UInt32
}

/// The central directory of a zip archive read over a mapping, for torch.save's files: every
/// entry must be stored (not compressed), so its data is read in place. Zip64 is understood
/// (checkpoint shards pass 4 GB).
struct ZipDirectory {
    let entries: [String: ZipEntry]
    /// Names in directory order (torch names its archive after the first).
    let names: [String]

    static let endSignature: UInt32 = 0x0605_4B50
    static let zip64EndSignature: UInt32 = 0x0606_4B50
    static let zip64LocatorSignature: UInt32 = 0x0706_4B50
    static let centralSignature: UInt32 = 0x0201_4B50
    static let localSignature: UInt32 = 0x0403_4B50

    init(_ file: MappedFile) throws {
        let path = file.path, size = file.size
        func u16(_ at: Int) -> Int { Int(UInt16(littleEndian: file.base.loadUnaligned(fromByteOffset: at, as: UInt16.self))) }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: file.base.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: file.base.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        func int(_ v: UInt64, _ what: String) throws -> Int {
            guard v <= UInt64(size) else { throw FormatError(path, "zip \(what) \(v) is beyond the end of the file (\(size) bytes): truncated?") }
            return Int(v)
        }

        // The end record sits in the last 22 + 65535 (comment) bytes; search backwards.
        guard size >= 22 else { throw FormatError(path, "truncated: \(size) bytes is too short for a zip archive") }
        var end = size - 22
        let lowest = max(0, size - 22 - 65535)
        while end >= lowest, u32(end) != Self.endSignature { end -= 1 }
        guard end >= lowest else { throw FormatError(path, "no zip end-of-directory record: truncated, or not a torch.save file?") }

        var count = u16(end + 10)
        var directorySize = UInt64(u32(end + 12))
        var directoryOffset = UInt64(u32(end + 16))
        if count == 0xFFFF || directorySize == 0xFFFF_FFFF || directoryOffset == 0xFFFF_FFFF {
            let locator = end - 20
            guard locator >= 0, u32(locator) == Self.zip64LocatorSignature else {
                throw FormatError(path, "zip end record points to a zip64 record that is missing")
            }
            let record = try int(u64(locator + 8), "zip64 end record offset")
            guard record <= size - 56, u32(record) == Self.zip64EndSignature else {
                throw FormatError(path, "zip64 end record at \(record) is missing or damaged")
            }
            count = try int(u64(record + 32), "entry count")
            directorySize = u64(record + 40)
            directoryOffset = u64(record + 48)
        }
        let start = try int(directoryOffset, "directory offset")
        let length = try int(directorySize, "directory size")
        guard length <= end - start else {
            throw FormatError(path, "zip directory [\(start), +\(length)] overlaps its end record at \(end): damaged")
        }

        var entries: [String: ZipEntry] = [:]
        var names: [String] = []
        var at = start
        for index in 0..<count {
            guard at <= start + length - 46, u32(at) == Self.centralSignature else {
                throw FormatError(path, "zip directory entry \(index) of \(count) is missing or damaged")
            }
            let flags = u16(at + 8), method = u16(at + 10)
            let crc = u32(at + 16)
            var compressed = UInt64(u32(at + 20)), uncompressed = UInt64(u32(at + 24))
            let nameLength = u16(at + 28), extraLength = u16(at + 30), commentLength = u16(at + 32)
            var local = UInt64(u32(at + 42))
            let next = at + 46 + nameLength + extraLength + commentLength
            guard next <= start + length else { throw FormatError(path, "zip directory entry \(index) runs past the directory") }
            let name = String(decoding: UnsafeRawBufferPointer(start: file.base + at + 46, count: nameLength), as: UTF8.self)

            // Zip64 extra field: the 64-bit values of whichever fields read 0xFFFFFFFF, in order.
            var extra = at + 46 + nameLength
            let extraEnd = extra + extraLength
            while extra + 4 <= extraEnd {
                let id = u16(extra), dataLength = u16(extra + 2)
                guard extra + 4 + dataLength <= extraEnd else { break }
                if id == 0x0001 {
                    var field = extra + 4
                    func next64() throws -> UInt64 {
                        guard field + 8 <= extra + 4 + dataLength else { throw FormatError(path, "zip entry '\(name)': zip64 field is too short") }
                        defer { field += 8 }
                        return u64(field)
                    }
                    if uncompressed == 0xFFFF_FFFF { uncompressed = try next64() }
                    if compressed == 0xFFFF_FFFF { compressed = try next64() }
                    if local == 0xFFFF_FFFF { local = try next64() }
                }
                extra += 4 + dataLength
            }

            guard flags & 1 == 0 else { throw FormatError(path, "zip entry '\(name)' is encrypted") }
            guard method == 0, compressed == uncompressed else {
                throw FormatError(path, "zip entry '\(name)' is compressed (method \(method)); torch.save stores entries uncompressed")
            }
            let header = try int(local, "local header offset")
            guard header <= start - 30, u32(header) == Self.localSignature else {
                throw FormatError(path, "zip entry '\(name)': local header at \(header) is missing or damaged")
            }
            guard u16(header + 26) == nameLength else { throw FormatError(path, "zip entry '\(name)': local header names another file") }
            let dataStart = header + 30 + nameLength + u16(header + 28)
            let dataSize = try int(uncompressed, "entry size")
            // Data must end before the directory starts: no overlap with the structures that describe it.
            guard dataStart <= start, dataSize <= start - dataStart else {
                throw FormatError(path, "zip entry '\(name)': \(dataSize) bytes at \(dataStart) run past the data area (\(start) bytes): truncated?")
            }
            guard entries[name] == nil else { throw FormatError(path, "zip entry '\(name)' appears twice") }
            entries[name] = ZipEntry(name: name, offset: dataStart, size: dataSize, crc32: crc)
            names.append(name)
            at = next
        }
        self.entries = entries
        self.names = names
    }
}

/// CRC-32 (the zip polynomial), for the small records checked on reading and every record written.
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = ~UInt32(0)
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }
}

/// One tensor of a torch checkpoint, validated against its storage record.
struct TorchTensorEntry: Sendable {
    let shape: [Int]
    let strides: [Int]
    let dtype: TorchDType
    /// nil for dtypes vlmsh cannot compute with: listed, not loadable.
    let type: GGMLType?
    /// Absolute byte offset of the tensor's first element in the file.
    let offset: Int
    /// Stored row-major without gaps and aligned for its element type: served from the mapping.
    let inPlace: Bool
}

/// A PyTorch checkpoint written by `torch.save` (≥ 1.6): a zip archive holding `<name>/data.pkl`,
/// the pickled state dict, and `<name>/data/<key>`, one raw record per storage. The pickle is read
/// by `TorchUnpickler` (an allow-list, nothing executed); tensors point into the mapped file.
public final class TorchCheckpointFile: CheckpointShard {
    public let path: String
    public let weightNames: [String]
    /// A `.bin` carries no string metadata.
    public var metadata: [String: String] { [:] }
    let file: MappedFile
    let entries: [String: TorchTensorEntry]

    /// data.pkl of a 70B model is well under a megabyte; a bigger one is not a state dict.
    static let maxPickleBytes = 64 << 20

    static let supported: [TorchDType: GGMLType] = [.float: .f32, .half: .f16, .bfloat16: .bf16]

    /// The first bytes of a pre-1.6 checkpoint: PROTO 2, then LONG1 of torch's magic number.
    static let legacyMagic: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let head = UnsafeRawBufferPointer(start: file.base, count: min(file.size, Self.legacyMagic.count))
        if head.elementsEqual(Self.legacyMagic) {
            throw FormatError(path, "legacy torch.save format (PyTorch before 1.6); re-save it with a newer PyTorch or convert it to safetensors")
        }
        if head.first == 0x80 { throw FormatError(path, "a bare pickle, not torch.save's zip format") }
        guard file.size >= 4, file.base.loadUnaligned(as: UInt32.self) == ZipDirectory.localSignature.littleEndian else {
            throw FormatError(path, "not a PyTorch checkpoint (no zip signature)")
        }
        let zip = try ZipDirectory(file)

        // torch names every record `<archive>/...`; the archive is the folder of data.pkl.
        let pickles = zip.names.filter { $0.hasSuffix("/data.pkl") && $0.split(separator: "/", omittingEmptySubsequences: false).count == 2 }
        guard pickles.count == 1 else {
            throw FormatError(path, pickles.isEmpty ? "no data.pkl in the archive: not a torch.save checkpoint"
                                                    : "\(pickles.count) data.pkl records in the archive")
        }
        let prefix = String(pickles[0].dropLast("data.pkl".count))
        if let order = zip.entries[prefix + "byteorder"] {
            let text = String(decoding: UnsafeRawBufferPointer(start: file.base + order.offset, count: min(order.size, 16)), as: UTF8.self)
            guard text == "little" else { throw FormatError(path, "byte order '\(text)': vlmsh reads little-endian checkpoints only") }
        }

        let pickle = zip.entries[pickles[0]]!
        guard pickle.size <= Self.maxPickleBytes else {
            throw FormatError(path, "data.pkl is \(pickle.size) bytes, more than a state dict needs (\(Self.maxPickleBytes >> 20) MB)")
        }
        let pickleBytes = UnsafeRawBufferPointer(start: file.base + pickle.offset, count: pickle.size)
        guard CRC32.checksum(pickleBytes) == pickle.crc32 else { throw FormatError(path, "data.pkl fails its CRC check: damaged") }
        let tensors: [(String, TorchTensorRecord)]
        do {
            tensors = try TorchUnpickler.load(pickleBytes) { root in
                guard case .dict(let dict) = root else { throw PickleError("the checkpoint holds a \(root.kind), not a state dict") }
                return try dict.items.compactMap { key, value in
                    guard case .string(let name) = key else { throw PickleError("state dict key is a \(key.kind), not a string") }
                    // Non-tensor values (a saved step count, a config string) are not weights.
                    guard case .tensor(let record) = value else { return nil }
                    return (name, record)
                }
            }
        } catch let e as PickleError { throw FormatError(path, e.description) }

        var entries: [String: TorchTensorEntry] = [:]
        for (name, record) in tensors {
            guard entries[name] == nil else { throw FormatError(path, "tensor '\(name)' appears twice") }
            entries[name] = try Self.entry(name, record, archive: zip, prefix: prefix, path: path)
        }
        self.entries = entries
        weightNames = entries.filter { $0.value.type != nil }.keys.sorted()
    }

    /// Checks one tensor against its storage record: the record holds exactly the storage's
    /// elements (the pickle already checked that the view stays inside the storage).
    static func entry(_ name: String, _ t: TorchTensorRecord, archive: ZipDirectory, prefix: String, path: String) throws -> TorchTensorEntry {
        let element = t.storage.dtype.elementBytes
        guard let record = archive.entries[prefix + "data/" + t.storage.key] else {
            throw FormatError(path, "tensor '\(name)': storage record data/\(t.storage.key) is missing")
        }
        let (bytes, overflow) = t.storage.count.multipliedReportingOverflow(by: element)
        guard !overflow, record.size == bytes else {
            throw FormatError(path, "tensor '\(name)': storage data/\(t.storage.key) holds \(record.size) bytes but \(t.storage.count) \(t.storage.dtype.name) elements need \(overflow ? "more" : "\(bytes)")")
        }
        // Row-major strides without gaps; dimensions of size 1 may carry any stride.
        var expected = 1, contiguous = true
        for (size, stride) in zip(t.shape, t.strides).reversed() {
            if size != 1 && stride != expected { contiguous = false }
            expected *= size
        }
        let offset = record.offset + t.offset * element
        return TorchTensorEntry(shape: t.shape, strides: t.strides, dtype: t.storage.dtype, type: supported[t.storage.dtype],
                                offset: offset, inPlace: contiguous && offset % element == 0)
    }

    /// Every tensor in the state dict, including ones with dtypes vlmsh does not load.
    public var allTensorNames: [String] { entries.keys.sorted() }

    /// The dtype in safetensors' spelling ("F32", "I64", ...).
    public func dtype(_ name: String) -> String? { entries[name]?.dtype.name }

    public func info(_ name: String) -> WeightInfo? {
        guard let e = entries[name], let t = e.type else { return nil }
        return WeightInfo(shape: e.shape, type: t)
    }

    func loadable(_ name: String) throws -> (TorchTensorEntry, GGMLType) {
        guard let e = entries[name] else { throw FormatError(path, "no tensor named '\(name)'") }
        guard let t = e.type else {
            throw FormatError(path, "tensor '\(name)' has dtype \(e.dtype.name); vlmsh reads F32, F16, BF16 only")
        }
        return (e, t)
    }

    /// The tensor's bytes row-major: in the mapping when stored that way, else gathered into a
    /// buffer the returned owner keeps alive.
    func contiguousBytes(_ e: TorchTensorEntry) -> (UnsafeRawPointer, AnyObject) {
        if e.inPlace { return (file.base + e.offset, file) }
        let element = e.dtype.elementBytes
        let count = e.shape.reduce(1, *)
        let buffer = OwnedBytes(count: count * element)
        var index = [Int](repeating: 0, count: e.shape.count)
        for i in 0..<count {
            var source = 0
            for (k, stride) in e.strides.enumerated() { source += index[k] * stride }
            (buffer.base + i * element).copyMemory(from: file.base + e.offset + source * element, byteCount: element)
            var k = e.shape.count - 1
            while k >= 0 {
                index[k] += 1
                if index[k] < e.shape[k] { break }
                index[k] = 0; k -= 1
            }
        }
        return (UnsafeRawPointer(buffer.base), buffer)
    }

    public func matrix(_ name: String) throws -> QuantizedMatrix {
        let (e, t) = try loadable(name)
        let rows = e.shape.count >= 2 ? e.shape[0] : 1
        let cols = e.shape.count >= 2 ? e.shape.dropFirst().reduce(1, *) : e.shape.reduce(1, *)
        let (data, owner) = contiguousBytes(e)
        return QuantizedMatrix(type: t, rows: rows, cols: cols, data: data, owner: owner)
    }

    public func floats(_ name: String) throws -> Tensor {
        let (e, t) = try loadable(name)
        let out = Tensor(shape: e.shape, zeroed: false)
        let (src, owner) = contiguousBytes(e)
        let n = e.shape.reduce(1, *)
        withExtendedLifetime(owner) {
            switch t {
            case .f32: UnsafeMutableRawPointer(out.data).copyMemory(from: src, byteCount: 4 * n)
            case .f16: Half.convertF16(src, out.data, count: n)
            default: Half.convertBF16(src, out.data, count: n)
            }
        }
        return out
    }
}

/// A heap buffer that frees itself: the owner of a tensor gathered out of a strided view.
final class OwnedBytes: @unchecked Sendable {
    let base: UnsafeMutableRawPointer
    init(count: Int) { base = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1), alignment: 64) }
    deinit { base.deallocate() }
}

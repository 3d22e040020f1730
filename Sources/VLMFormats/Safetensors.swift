import Foundation
import VLMTensor

/// One tensor entry of a safetensors header, validated against the file.
struct SafetensorsEntry: Sendable {
    let shape: [Int]
    let dtype: String
    /// nil for dtypes vlmsh cannot compute with (I64, U8, ...): they are listed but not loadable.
    let type: GGMLType?
    /// Absolute byte offset of the data in the file.
    let offset: Int
    let byteCount: Int
}

/// A `.safetensors` file: an 8-byte little-endian header length, a JSON header, then raw
/// tensor data. The file is memory-mapped; `matrix` points into the mapping without copying.
public final class SafetensorsFile: CheckpointShard {
    public let path: String
    /// The header's `__metadata__` object (string values only, as the format requires).
    public let metadata: [String: String]
    public let weightNames: [String]
    let file: MappedFile
    let entries: [String: SafetensorsEntry]

    /// The reference implementation refuses headers above 100 MB; so do we, so a corrupt
    /// length fails fast instead of making us parse megabytes of tensor data as JSON.
    static let maxHeaderBytes = 100_000_000

    /// Element sizes of every dtype in the safetensors spec, so entries we cannot compute with
    /// are still bounds-checked. Sub-byte types (F4, F6) are left out and rejected as unknown.
    static let dtypeBytes: [String: Int] = [
        "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
        "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
        "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    ]
    static let supported: [String: GGMLType] = ["F32": .f32, "F16": .f16, "BF16": .bf16]

    public init(path: String) throws {
        self.path = path
        file = try MappedFile(path: path)
        let size = file.size
        guard size >= 8 else {
            throw FormatError(path, "truncated: \(size) bytes, too short for the 8-byte header length")
        }
        let rawLength = file.base.loadUnaligned(as: UInt64.self).littleEndian
        guard rawLength >= 2, rawLength <= UInt64(Self.maxHeaderBytes) else {
            throw FormatError(path, "header length \(rawLength) is not sane (file is \(size) bytes); not a safetensors file?")
        }
        let headerLength = Int(rawLength)
        guard headerLength <= size - 8 else {
            throw FormatError(path, "header length \(headerLength) runs past the end of the file (\(size) bytes): truncated?")
        }
        let dataStart = 8 + headerLength
        let dataSize = size - dataStart

        // The bytes stay in the mapping; Data only borrows them for parsing.
        let headerBytes = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: file.base + 8),
                               count: headerLength, deallocator: .none)
        guard headerBytes.first == UInt8(ascii: "{"),
              let json = try? JSONSerialization.jsonObject(with: headerBytes),
              let header = json as? [String: Any] else {
            throw FormatError(path, "header is not a valid JSON object")
        }

        var metadata: [String: String] = [:]
        var entries: [String: SafetensorsEntry] = [:]
        for (name, value) in header {
            if name == "__metadata__" {
                guard let meta = value as? [String: Any] else {
                    throw FormatError(path, "__metadata__ is not a JSON object")
                }
                for (k, v) in meta {
                    guard let s = v as? String else { throw FormatError(path, "__metadata__ value for '\(k)' is not a string") }
                    metadata[k] = s
                }
                continue
            }
            entries[name] = try Self.entry(name, value, path: path, dataStart: dataStart, dataSize: dataSize)
        }
        self.metadata = metadata
        self.entries = entries
        weightNames = entries.filter { $0.value.type != nil }.keys.sorted()
    }

    /// Parses and checks one header entry: known dtype, non-negative shape, offsets inside the
    /// data region and exactly as long as shape × element size.
    static func entry(_ name: String, _ value: Any, path: String, dataStart: Int, dataSize: Int) throws -> SafetensorsEntry {
        guard let obj = value as? [String: Any] else { throw FormatError(path, "tensor '\(name)': entry is not a JSON object") }
        guard let dtype = obj["dtype"] as? String else { throw FormatError(path, "tensor '\(name)': missing dtype") }
        guard let elementBytes = dtypeBytes[dtype] else {
            throw FormatError(path, "tensor '\(name)': unknown dtype '\(dtype)' (vlmsh reads F32, F16, BF16)")
        }
        guard let shapeValues = obj["shape"] as? [Any] else { throw FormatError(path, "tensor '\(name)': missing shape") }
        var shape: [Int] = []
        var elements = 1
        for v in shapeValues {
            guard let d = jsonInt(v), d >= 0 else { throw FormatError(path, "tensor '\(name)': bad shape \(shapeValues)") }
            let (m, overflow) = elements.multipliedReportingOverflow(by: d)
            guard !overflow else { throw FormatError(path, "tensor '\(name)': shape \(shapeValues) is too large") }
            shape.append(d); elements = m
        }
        guard let offsets = obj["data_offsets"] as? [Any], offsets.count == 2,
              let begin = jsonInt(offsets[0]), let end = jsonInt(offsets[1]), begin >= 0, begin <= end else {
            throw FormatError(path, "tensor '\(name)': data_offsets must be two increasing non-negative integers")
        }
        guard end <= dataSize else {
            throw FormatError(path, "tensor '\(name)': data_offsets [\(begin), \(end)] run past the end of the data (\(dataSize) bytes): truncated?")
        }
        let (expected, overflow) = elements.multipliedReportingOverflow(by: elementBytes)
        guard !overflow, end - begin == expected else {
            throw FormatError(path, "tensor '\(name)': data_offsets [\(begin), \(end)] hold \(end - begin) bytes but \(dtype) \(shape) needs \(expected)")
        }
        return SafetensorsEntry(shape: shape, dtype: dtype, type: supported[dtype], offset: dataStart + begin, byteCount: expected)
    }

    /// JSON integers arrive as NSNumber; reject fractions. (`is Bool` cannot be used to reject
    /// booleans: on Linux every 0/1 NSNumber passes it.)
    static func jsonInt(_ v: Any) -> Int? {
        if let i = v as? Int { return i }
        if let d = v as? Double, d.rounded() == d, let i = Int(exactly: d) { return i }
        return nil
    }

    /// Every tensor in the header, including ones with dtypes vlmsh does not load.
    public var allTensorNames: [String] { entries.keys.sorted() }

    /// The dtype string as written in the header ("F32", "I64", ...).
    public func dtype(_ name: String) -> String? { entries[name]?.dtype }

    public func info(_ name: String) -> WeightInfo? {
        guard let e = entries[name], let t = e.type else { return nil }
        return WeightInfo(shape: e.shape, type: t)
    }

    func loadable(_ name: String) throws -> (SafetensorsEntry, GGMLType) {
        guard let e = entries[name] else { throw FormatError(path, "no tensor named '\(name)'") }
        guard let t = e.type else {
            throw FormatError(path, "tensor '\(name)' has dtype \(e.dtype); vlmsh reads F32, F16, BF16 only")
        }
        return (e, t)
    }

    public func matrix(_ name: String) throws -> QuantizedMatrix {
        let (e, t) = try loadable(name)
        // [shape[0], product(rest)]; 0-D and 1-D tensors are a single row.
        let rows = e.shape.count >= 2 ? e.shape[0] : 1
        let cols = e.shape.count >= 2 ? e.shape.dropFirst().reduce(1, *) : e.shape.reduce(1, *)
        return QuantizedMatrix(type: t, rows: rows, cols: cols, data: file.base + e.offset, owner: file)
    }

    public func floats(_ name: String) throws -> Tensor {
        let (e, t) = try loadable(name)
        let out = Tensor(shape: e.shape, zeroed: false)
        let src = file.base + e.offset
        let n = e.shape.reduce(1, *)
        switch t {
        case .f32: UnsafeMutableRawPointer(out.data).copyMemory(from: src, byteCount: 4 * n)
        case .f16: Half.convertF16(src, out.data, count: n)
        case .bf16: Half.convertBF16(src, out.data, count: n)
        default: throw FormatError(path, "tensor '\(name)': unexpected type \(t.name)")
        }
        return out
    }
}

/// One file of a sharded checkpoint: a safetensors file or a PyTorch `.bin`.
public protocol CheckpointShard: WeightSource {
    var path: String { get }
    /// String metadata the file carries (safetensors' `__metadata__`; none in a `.bin`).
    var metadata: [String: String] { get }
    /// The stored dtype of `name` in safetensors' spelling, also for tensors vlmsh cannot load.
    func dtype(_ name: String) -> String?
}

/// Several checkpoint files seen as one source: a Hugging Face sharded checkpoint
/// (`model.safetensors.index.json` or `pytorch_model.bin.index.json` mapping each tensor to its
/// shard) or a folder of safetensors shards without an index.
public final class ShardedCheckpoint: WeightSource {
    /// The index file, or the folder when there is none; errors about the whole set name it.
    public let path: String
    public let shards: [any CheckpointShard]
    public let weightNames: [String]
    let owner: [String: any CheckpointShard]

    /// Opens `model.safetensors.index.json` (or any index in that format) and every shard it
    /// lists; shards named `*.bin` are read as PyTorch checkpoints.
    public init(index path: String) throws {
        self.path = path
        let data = try SmallFile.read(path)
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw FormatError(path, "index is not a valid JSON object")
        }
        guard let map = json["weight_map"] as? [String: Any], !map.isEmpty else {
            throw FormatError(path, "index has no weight_map")
        }
        let folder = (path as NSString).deletingLastPathComponent
        var byShard: [String: [String]] = [:]
        for (name, v) in map {
            guard let shard = v as? String, !shard.isEmpty else { throw FormatError(path, "weight_map entry for '\(name)' is not a file name") }
            byShard[shard, default: []].append(name)
        }
        var files: [any CheckpointShard] = []
        var owner: [String: any CheckpointShard] = [:]
        for shard in byShard.keys.sorted() {
            let names = byShard[shard]!.sorted()
            let shardPath = folder.isEmpty ? shard : (folder as NSString).appendingPathComponent(shard)
            guard FileManager.default.fileExists(atPath: shardPath) else {
                throw FormatError(path, "shard '\(shard)' is missing (it holds \(names.count) tensors, e.g. '\(names[0])')")
            }
            let file: any CheckpointShard = shard.hasSuffix(".bin") ? try TorchCheckpointFile(path: shardPath)
                                                                    : try SafetensorsFile(path: shardPath)
            for name in names {
                guard file.dtype(name) != nil else {
                    throw FormatError(path, "tensor '\(name)' is listed in shard '\(shard)' but absent from it")
                }
                // Only computable tensors are served; others stay out of weightNames like in a single file.
                if file.info(name) != nil { owner[name] = file }
            }
            files.append(file)
        }
        shards = files
        self.owner = owner
        weightNames = owner.keys.sorted()
    }

    /// Several shards without an index: each tensor must appear in exactly one of them.
    public init(files paths: [String], folder: String) throws {
        path = folder
        var files: [any CheckpointShard] = []
        var owner: [String: any CheckpointShard] = [:]
        for p in paths.sorted() {
            let file = try SafetensorsFile(path: p)
            for name in file.weightNames {
                if let other = owner[name] {
                    throw FormatError(p, "tensor '\(name)' also appears in \(other.path)")
                }
                owner[name] = file
            }
            files.append(file)
        }
        shards = files
        self.owner = owner
        weightNames = owner.keys.sorted()
    }

    /// Metadata of every shard merged (the first shard wins on conflicts).
    public var metadata: [String: String] {
        shards.reversed().reduce(into: [:]) { acc, s in acc.merge(s.metadata) { _, new in new } }
    }

    public func info(_ name: String) -> WeightInfo? { owner[name]?.info(name) }

    func shard(_ name: String) throws -> any CheckpointShard {
        guard let f = owner[name] else { throw FormatError(path, "no tensor named '\(name)'") }
        return f
    }

    public func matrix(_ name: String) throws -> QuantizedMatrix { try shard(name).matrix(name) }
    public func floats(_ name: String) throws -> Tensor { try shard(name).floats(name) }
}

/// Opens the weights of a Hugging Face model folder, in the order transformers looks for them:
/// `model.safetensors`, `model.safetensors.index.json`, then PyTorch's `pytorch_model.bin` and
/// `pytorch_model.bin.index.json`; failing those, whatever `*.safetensors` are there.
public func openCheckpoint(folder: String) throws -> WeightSource {
    let fm = FileManager.default
    let url = URL(fileURLWithPath: folder)
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: folder, isDirectory: &isDir), isDir.boolValue else {
        throw FormatError(folder, "not a folder")
    }
    let single = url.appendingPathComponent("model.safetensors").path
    if fm.fileExists(atPath: single) { return try SafetensorsFile(path: single) }
    let index = url.appendingPathComponent("model.safetensors.index.json").path
    if fm.fileExists(atPath: index) { return try ShardedCheckpoint(index: index) }
    let torchSingle = url.appendingPathComponent("pytorch_model.bin").path
    if fm.fileExists(atPath: torchSingle) { return try TorchCheckpointFile(path: torchSingle) }
    let torchIndex = url.appendingPathComponent("pytorch_model.bin.index.json").path
    if fm.fileExists(atPath: torchIndex) { return try ShardedCheckpoint(index: torchIndex) }
    let found = ((try? fm.contentsOfDirectory(atPath: folder)) ?? [])
        .filter { $0.hasSuffix(".safetensors") }.sorted()
        .map { url.appendingPathComponent($0).path }
    switch found.count {
    case 0: throw FormatError(folder, "no model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json or *.safetensors files")
    case 1: return try SafetensorsFile(path: found[0])
    default: return try ShardedCheckpoint(files: found, folder: folder)
    }
}

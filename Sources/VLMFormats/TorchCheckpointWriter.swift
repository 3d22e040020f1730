import Foundation
import VLMTensor

/// Writes a state dict of Float32 tensors the way `torch.save(dict, path)` does, so that
/// `torch.load(path, weights_only=True)` reads it: a zip archive of stored entries named
/// `<archive>/...` (the file name without its extension), with `data.pkl` (pickle protocol 2),
/// `byteorder`, one `data/<index>` record per tensor whose data starts on a 64-byte boundary
/// (torch pads each local header with an `FB` extra field), and `version`.
/// The file is built in memory and renamed into place (meant for projector-sized files).
public enum TorchCheckpointWriter {
    /// torch aligns every record's data to this (`kFieldAlignment`), which lets it map storages.
    static let alignment = 64

    public static func write(_ tensors: [(name: String, tensor: Tensor)], to path: String) throws {
        var names = Set<String>()
        for t in tensors where !names.insert(t.name).inserted { throw FormatError(path, "tensor '\(t.name)' is written twice") }
        let stem = ((path as NSString).lastPathComponent as NSString).deletingPathExtension
        let archive = stem.isEmpty || stem.contains("/") ? "archive" : stem

        var records: [(String, Data)] = [("data.pkl", pickle(tensors)),
                                         (".format_version", Data("1".utf8)),
                                         (".storage_alignment", Data("\(alignment)".utf8)),
                                         ("byteorder", Data("little".utf8))]
        for (index, t) in tensors.enumerated() {
            var data = Data(count: 4 * t.tensor.count)
            data.withUnsafeMutableBytes { raw in
                let out = raw.bindMemory(to: UInt32.self)
                for i in 0..<t.tensor.count { out[i] = t.tensor.data[i].bitPattern.littleEndian }
            }
            records.append(("data/\(index)", data))
        }
        records.append(("version", Data("3\n".utf8)))
        let bytes = try zip(records.map { (archive + "/" + $0.0, $0.1) }, path: path)
        try writeAtomically(bytes, to: path)
    }

    // MARK: the pickle

    /// `{name: _rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())}` as protocol 2
    /// opcodes, storages as persistent ids `('storage', torch.FloatStorage, '<index>', 'cpu', numel)`.
    static func pickle(_ tensors: [(name: String, tensor: Tensor)]) -> Data {
        var p = PickleWriter()
        p.op(0x80); p.op(2)                                     // PROTO 2
        p.op(0x7D)                                              // EMPTY_DICT
        if !tensors.isEmpty {
            p.op(0x28)                                          // MARK
            for (index, t) in tensors.enumerated() {
                let shape = t.tensor.shape
                var strides = [Int](repeating: 1, count: shape.count)
                for k in stride(from: shape.count - 2, through: 0, by: -1) { strides[k] = strides[k + 1] * shape[k + 1] }
                p.string(t.name)
                p.global("torch._utils", "_rebuild_tensor_v2")
                p.op(0x28)                                      // MARK: the rebuild arguments
                p.op(0x28)                                      // MARK: the persistent id
                p.string("storage"); p.global("torch", "FloatStorage"); p.string("\(index)"); p.string("cpu"); p.int(t.tensor.count)
                p.op(0x74)                                      // TUPLE
                p.op(0x51)                                      // BINPERSID
                p.int(0)
                p.tuple(shape); p.tuple(strides)
                p.op(0x89)                                      // NEWFALSE: requires_grad
                p.global("collections", "OrderedDict"); p.op(0x29); p.op(0x52)   // OrderedDict()
                p.op(0x74)                                      // TUPLE
                p.op(0x52)                                      // REDUCE
            }
            p.op(0x75)                                          // SETITEMS
        }
        p.op(0x2E)                                              // STOP
        return p.bytes
    }

    struct PickleWriter {
        var bytes = Data()
        mutating func op(_ b: UInt8) { bytes.append(b) }
        /// BINUNICODE: SHORT_BINUNICODE is a protocol 4 opcode, and this is a protocol 2 pickle.
        mutating func string(_ s: String) {
            let utf8 = Array(s.utf8)
            op(0x58); le(UInt32(utf8.count))
            bytes.append(contentsOf: utf8)
        }
        mutating func global(_ module: String, _ name: String) {
            op(0x63); bytes.append(contentsOf: Array((module + "\n" + name + "\n").utf8))
        }
        mutating func int(_ v: Int) {
            switch v {
            case 0..<256: op(0x4B); op(UInt8(v))                                // BININT1
            case 256..<65536: op(0x4D); le(UInt16(v))                           // BININT2
            case Int(Int32.min)...Int(Int32.max): op(0x4A); le(UInt32(bitPattern: Int32(v)))   // BININT
            default: op(0x8A); op(8); le(UInt64(bitPattern: Int64(v)))         // LONG1
            }
        }
        mutating func tuple(_ values: [Int]) {
            switch values.count {
            case 0: op(0x29)
            case 1...3: values.forEach { int($0) }; op([0x85, 0x86, 0x87][values.count - 1])
            default: op(0x28); values.forEach { int($0) }; op(0x74)
            }
        }
        mutating func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    }

    // MARK: the archive

    /// Stored entries, each local header padded so the data lands on a 64-byte boundary, then the
    /// central directory and its end record (no zip64: projector files are far below 4 GB).
    static func zip(_ records: [(name: String, data: Data)], path: String) throws -> Data {
        var out = Data()
        var central = Data()
        func le<T: FixedWidthInteger>(_ v: T, _ d: inout Data) { withUnsafeBytes(of: v.littleEndian) { d.append(contentsOf: $0) } }
        let dosDate: UInt16 = 0x21   // 1980-01-01, as reproducible writers use
        for record in records {
            let name = Array(record.name.utf8)
            let crc = record.data.withUnsafeBytes { CRC32.checksum($0) }
            let headerOffset = out.count
            guard headerOffset + 30 + name.count + 4 + alignment + record.data.count < Int(UInt32.max) else {
                throw FormatError(path, "checkpoint would pass 4 GB; vlmsh writes torch checkpoints below that")
            }
            let unpadded = headerOffset + 30 + name.count + 4
            let padding = (alignment - unpadded % alignment) % alignment
            le(ZipDirectory.localSignature, &out)
            le(UInt16(20), &out); le(UInt16(0), &out); le(UInt16(0), &out)          // version needed, flags, stored
            le(UInt16(0), &out); le(dosDate, &out)
            le(crc, &out); le(UInt32(record.data.count), &out); le(UInt32(record.data.count), &out)
            le(UInt16(name.count), &out); le(UInt16(4 + padding), &out)
            out.append(contentsOf: name)
            out.append(contentsOf: Array("FB".utf8)); le(UInt16(padding), &out)
            out.append(contentsOf: [UInt8](repeating: UInt8(ascii: "Z"), count: padding))
            out.append(record.data)

            le(ZipDirectory.centralSignature, &central)
            le(UInt16(20), &central); le(UInt16(20), &central); le(UInt16(0), &central); le(UInt16(0), &central)
            le(UInt16(0), &central); le(dosDate, &central)
            le(crc, &central); le(UInt32(record.data.count), &central); le(UInt32(record.data.count), &central)
            le(UInt16(name.count), &central); le(UInt16(0), &central); le(UInt16(0), &central)   // extra, comment
            le(UInt16(0), &central); le(UInt16(0), &central); le(UInt32(0), &central)           // disk, attributes
            le(UInt32(headerOffset), &central)
            central.append(contentsOf: name)
        }
        let directoryOffset = out.count
        out.append(central)
        le(ZipDirectory.endSignature, &out)
        le(UInt16(0), &out); le(UInt16(0), &out)
        le(UInt16(records.count), &out); le(UInt16(records.count), &out)
        le(UInt32(central.count), &out); le(UInt32(directoryOffset), &out)
        le(UInt16(0), &out)
        return out
    }
}

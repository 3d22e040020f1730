import VLMTensor

/// Finds NaN and ±Inf in weights so a broken checkpoint is refused at load instead of generating
/// garbage. A value is non-finite exactly when its exponent bits are all ones; the scan ORs that
/// test over blocks without branches (it vectorizes) and only looks for the index in a block that
/// has one. In quantized types only the F16 block scales can be non-finite (the quants are small
/// integers, K-quant sub-block scales 6-bit integers), so only those are read.
public enum FiniteScan {
    /// Elements per block: small enough to stay in cache, large enough to vectorize.
    static let block = 4096

    /// Byte offsets of the F16 scale fields in one block of a quantized type (d, and the min term
    /// where there is one); nil for plain floats.
    static func scaleOffsets(_ type: GGMLType) -> [Int]? {
        switch type {
        case .f32, .f16, .bf16: return nil
        case .q4_0, .q5_0, .q8_0: return [0]
        case .q4_1, .q5_1, .q8_1, .q4_K, .q5_K: return [0, 2]
        case .q2_K: return [80, 82]
        case .q3_K: return [108]
        case .q6_K: return [208]
        case .q8_K: return []   // an F32 scale; only ever made in memory, never read from a file
        }
    }

    /// The first non-finite element of `count` values of `type` at `data`, or nil. For a
    /// quantized type, the first element of the first block whose scale is not finite.
    public static func firstNonFinite(_ data: UnsafeRawPointer, type: GGMLType, count: Int) -> (index: Int, value: Float)? {
        if let offsets = scaleOffsets(type) {
            guard !offsets.isEmpty else { return nil }
            // Units are quantized blocks; only their scale fields are read.
            let stride = type.blockBytes
            func scale(_ b: Int, _ offset: Int) -> UInt16 { data.loadUnaligned(fromByteOffset: b * stride + offset, as: UInt16.self) }
            return firstNonFinite(units: count / type.blockSize, minChunk: 16, chunkHasOne: { range in
                var acc: UInt16 = 0
                for b in range { for offset in offsets { acc |= ((scale(b, offset) & 0x7C00) &+ 0x0400) >> 15 } }
                return acc != 0
            }, value: { b in
                offsets.lazy.map { Half.f16ToFloat(scale(b, $0)) }.first { !$0.isFinite }.map { (b * type.blockSize, $0) }
            })
        }
        return firstNonFinite(units: count, minChunk: 64, chunkHasOne: { range in
            blockHasNonFinite(data, type: type, start: range.lowerBound, count: range.count)
        }, value: { i in
            let value = element(data, type: type, i)
            return value.isFinite ? nil : (i, value)
        })
    }

    /// Splits `units` into chunks of `block`, tests the chunks over all cores with the branch-free
    /// `chunkHasOne`, and looks for the unit only in the first chunk that has one (`value` gives
    /// its element index and value, or nil for a finite unit).
    private static func firstNonFinite(units: Int, minChunk: Int, chunkHasOne: (Range<Int>) -> Bool,
                                       value: (Int) -> (index: Int, value: Float)?) -> (index: Int, value: Float)? {
        let chunks = (units + block - 1) / block
        let flags = UnsafeMutablePointer<UInt8>.allocate(capacity: max(chunks, 1))
        defer { flags.deallocate() }
        flags.initialize(repeating: 0, count: max(chunks, 1))
        Parallel.forEach(chunks, minChunk: minChunk) { range in
            for c in range { flags[c] = chunkHasOne((c * block)..<min((c + 1) * block, units)) ? 1 : 0 }
        }
        guard let bad = (0..<chunks).first(where: { flags[$0] != 0 }) else { return nil }
        return ((bad * block)..<min((bad + 1) * block, units)).lazy.compactMap(value).first
    }

    private static func blockHasNonFinite(_ data: UnsafeRawPointer, type: GGMLType, start: Int, count: Int) -> Bool {
        switch type {
        case .f32:
            // exponent 0xFF: (bits & 0x7F800000) + 0x00800000 reaches bit 31.
            var acc: UInt32 = 0
            for i in start..<(start + count) {
                acc |= ((data.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x7F80_0000) &+ 0x0080_0000) >> 31
            }
            return acc != 0
        case .f16:
            var acc: UInt16 = 0
            for i in start..<(start + count) {
                acc |= ((data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & 0x7C00) &+ 0x0400) >> 15
            }
            return acc != 0
        case .bf16:
            var acc: UInt16 = 0
            for i in start..<(start + count) {
                acc |= ((data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & 0x7F80) &+ 0x0080) >> 15
            }
            return acc != 0
        default:
            return false
        }
    }

    private static func element(_ data: UnsafeRawPointer, type: GGMLType, _ i: Int) -> Float {
        switch type {
        case .f32: return Float(bitPattern: data.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))
        case .f16: return Half.f16ToFloat(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        case .bf16: return Half.bf16ToFloat(data.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
        default: return 0
        }
    }
}

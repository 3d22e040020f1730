import VLMTensor

/// Finds NaN and ±Inf in plain float weights (F32, F16, BF16) so a broken checkpoint is refused at
/// load instead of generating garbage. A value is non-finite exactly when its exponent bits are all
/// ones; the scan ORs that test over blocks without branches (it vectorizes) and only looks for
/// the index in a block that has one. Quantized types are not scanned.
public enum FiniteScan {
    /// Elements per block: small enough to stay in cache, large enough to vectorize.
    static let block = 4096

    /// The first non-finite element of `count` values of `type` at `data`, or nil (also for
    /// types that are not plain floats).
    public static func firstNonFinite(_ data: UnsafeRawPointer, type: GGMLType, count: Int) -> (index: Int, value: Float)? {
        let blocks = (count + block - 1) / block
        let flags = UnsafeMutablePointer<UInt8>.allocate(capacity: max(blocks, 1))
        defer { flags.deallocate() }
        flags.initialize(repeating: 0, count: max(blocks, 1))
        Parallel.forEach(blocks, minChunk: 64) { range in
            for b in range {
                let start = b * block, n = min(block, count - start)
                flags[b] = blockHasNonFinite(data, type: type, start: start, count: n) ? 1 : 0
            }
        }
        guard let bad = (0..<blocks).first(where: { flags[$0] != 0 }) else { return nil }
        for i in (bad * block)..<min((bad + 1) * block, count) {
            let value = element(data, type: type, i)
            if !value.isFinite { return (i, value) }
        }
        return nil
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

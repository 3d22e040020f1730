/// Encoding of Float32 values into ggml types, the inverse of `Dequantize` for the types vlmsh
/// writes. Q8_0 follows ggml's reference quantizer (`quantize_row_q8_0_ref`, which gguf-py's
/// `quants.quantize` reproduces bit for bit): per block of 32, d = max|x| / 127 in Float32,
/// q = x · (1/d) rounded half away from zero, d stored as IEEE half.
public enum Quantize {
    /// The types `encode` writes.
    public static let writableTypes: [GGMLType] = [.f32, .f16, .bf16, .q8_0]

    /// `count` values as `type`'s bytes (`type.byteCount(elements: count)` of them). `count` must
    /// be a whole number of blocks (callers check the row length first); other types trap.
    public static func encode(_ type: GGMLType, _ src: UnsafePointer<Float>, count: Int) -> [UInt8] {
        let bytes = type.byteCount(elements: count)!
        var out = [UInt8](repeating: 0, count: bytes)
        out.withUnsafeMutableBytes { dst in
            let p = dst.baseAddress!
            switch type {
            case .f32:
                for i in 0..<count { p.storeBytes(of: src[i].bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            case .f16:
                for i in 0..<count { p.storeBytes(of: Half.floatToF16(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            case .bf16:
                for i in 0..<count { p.storeBytes(of: Half.floatToBF16(src[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
            case .q8_0:
                for b in 0..<count / 32 { q8_0Block(src + 32 * b, p + 34 * b) }
            default:
                preconditionFailure("no encoder for \(type.name)")
            }
        }
        return out
    }

    /// One Q8_0 block: f16 d, then 32 signed bytes.
    static func q8_0Block(_ x: UnsafePointer<Float>, _ p: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d == 0 ? 0 : 1 / d
        p.storeBytes(of: Half.floatToF16(d).littleEndian, as: UInt16.self)
        for j in 0..<32 {
            let q = (x[j] * id).rounded(.toNearestOrAwayFromZero)
            p.storeBytes(of: Int8(max(-128, min(127, q))), toByteOffset: 2 + j, as: Int8.self)
        }
    }
}

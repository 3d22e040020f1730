/// IEEE half and bfloat16 conversion. Both are exact widenings to Float32.
public enum Half {
    @inlinable public static func f16ToFloat(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
    @inlinable public static func floatToF16(_ x: Float) -> UInt16 { Float16(x).bitPattern }
    @inlinable public static func bf16ToFloat(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }
    /// Round-to-nearest-even, as torch does when casting to bfloat16; NaN stays NaN.
    @inlinable public static func floatToBF16(_ x: Float) -> UInt16 {
        if x.isNaN { return 0x7FC0 }
        let b = x.bitPattern
        return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
    }

    public static func convertF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { dst[i] = f16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    }
    public static func convertBF16(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { dst[i] = bf16ToFloat(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) }
    }
}

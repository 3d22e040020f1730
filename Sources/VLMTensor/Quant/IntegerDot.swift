import CVLMKernels
import Foundation

/// Decode-time dot products in ggml's integer form: the Float32 activation row is quantized once
/// per mat-vec to 8-bit blocks (32 elements, or 256 with per-16 sums for K-quants), then each
/// weight row is dotted with it in integers, one float multiply per block (Sources/CVLMKernels).
///
/// The result equals dot(dequantized row, dequantized activations) up to float rounding; against
/// the Float32 activations it differs by at most Σ |w_i| · d_b / 2, d_b = max|x| / 127 of the
/// activation block b holding i (the rounding of each quant). llama.cpp computes decode this way.
public enum IntegerDot {
    /// The vector path compiled in: "avx512vnni", "avxvnni", "avx2" or "scalar".
    public static var instructionSet: String { String(cString: vlm_dot_instruction_set()) }

    /// Whether `type` has an integer kernel (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K).
    public static func supports(_ type: GGMLType) -> Bool { vlm_activation_block_elements(type.rawValue) != 0 }

    /// Elements per activation block for weights of `type`: 32, or 256 for K-quants.
    public static func activationBlockElements(_ type: GGMLType) -> Int { Int(vlm_activation_block_elements(type.rawValue)) }

    /// Bytes one activation block takes: `{ Float d; Float d·Σq; Int8 q[32] }` or
    /// `{ Float d; Int8 q[256]; Int16 Σq per 16 }`.
    public static func activationBlockBytes(_ type: GGMLType) -> Int {
        activationBlockElements(type) == 256 ? MemoryLayout<vlm_q8_256>.stride : MemoryLayout<vlm_q8_32>.stride
    }

    /// Bytes of quantized activations for a row of `cols` elements (`cols` a whole number of blocks).
    public static func activationBytes(_ type: GGMLType, cols: Int) -> Int {
        cols / activationBlockElements(type) * activationBlockBytes(type)
    }

    /// x (`cols` floats) → activation blocks for weights of `type` at `out` (`activationBytes` bytes).
    public static func quantizeActivations(_ type: GGMLType, _ x: UnsafePointer<Float>, cols: Int,
                                           into out: UnsafeMutableRawPointer, reference: Bool = false) {
        let n = Int32(cols)
        if activationBlockElements(type) == 256 {
            let blocks = out.assumingMemoryBound(to: vlm_q8_256.self)
            reference ? vlm_quantize_q8_256_ref(x, blocks, n) : vlm_quantize_q8_256(x, blocks, n)
        } else {
            let blocks = out.assumingMemoryBound(to: vlm_q8_32.self)
            reference ? vlm_quantize_q8_32_ref(x, blocks, n) : vlm_quantize_q8_32(x, blocks, n)
        }
    }

    /// One encoded row of `cols` elements dotted with its quantized activations.
    public static func dot(_ type: GGMLType, _ row: UnsafeRawPointer, _ activations: UnsafeRawPointer, cols: Int,
                           reference: Bool = false) -> Float {
        reference ? vlm_dot_ref(type.rawValue, Int32(cols), row, activations)
                  : vlm_dot(type.rawValue, Int32(cols), row, activations)
    }
}

/// A byte buffer per thread for the quantized activations of the mat-vec that thread runs, grown
/// when a wider row comes and kept for the thread's life: decode allocates nothing per token.
enum ActivationScratch {
    /// Holds a pointer to `[capacity: Int][bytes…]`, freed when the thread exits.
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    static func buffer(bytes: Int) -> UnsafeMutableRawPointer {
        let header = MemoryLayout<Int>.stride * 8   // keeps the payload 64-byte aligned
        if let current = pthread_getspecific(key), current.load(as: Int.self) >= bytes {
            return current + header
        }
        if let old = pthread_getspecific(key) { free(old) }
        var raw: UnsafeMutableRawPointer?
        // Rounded up so a slowly growing row width does not reallocate every time.
        let capacity = max(bytes, 4096).roundedUpToPowerOfTwo
        guard posix_memalign(&raw, 64, header + capacity) == 0, let raw else { fatalError("out of memory") }
        raw.storeBytes(of: capacity, as: Int.self)
        pthread_setspecific(key, raw)
        return raw + header
    }
}

private extension Int {
    var roundedUpToPowerOfTwo: Int { self <= 1 ? 1 : 1 << (Int.bitWidth - (self - 1).leadingZeroBitCount) }
}

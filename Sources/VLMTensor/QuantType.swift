/// ggml tensor element types, numbered as in GGUF files.
public enum GGMLType: UInt32, Sendable, CaseIterable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case bf16 = 30

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1: return 32
        case .q2_K, .q3_K, .q4_K, .q5_K, .q6_K, .q8_K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q8_1: return 36
        case .q2_K: return 84
        case .q3_K: return 110
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        case .q8_K: return 292
        }
    }

    public var name: String { String(describing: self).uppercased() }

    /// Bytes taken by `elements` values, or nil when `elements` is not a whole number of blocks.
    public func byteCount(elements: Int) -> Int? {
        guard elements >= 0, elements % blockSize == 0 else { return nil }
        let (bytes, overflow) = (elements / blockSize).multipliedReportingOverflow(by: blockBytes)
        return overflow ? nil : bytes
    }
}

/// A 2-D weight matrix `[rows, cols]` kept in its file encoding (usually memory-mapped).
/// Row `r` starts at `data + r * rowBytes`; `owner` keeps the mapping alive.
/// How inference multiplies block-quantized weights by activations.
/// - f32: activations stay Float32, so the numbers are the dequantized model's (transformers');
/// - int8: activations are quantized to 8-bit blocks and multiplied in integers, as llama.cpp
///   does: faster decode and large-model prefill, and llama.cpp's numbers. Small models with
///   outlier channels can answer differently (SmolLM2-135M's greedy reply to "What is the
///   capital of France?" becomes llama.cpp's "L'Étoile, la Marseillaise, …" instead of Paris).
/// Training always keeps Float32 activations.
public enum ActivationPrecision: String, Sendable, CaseIterable {
    case f32, int8
}

public struct QuantizedMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let owner: AnyObject?

    public init(type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer, owner: AnyObject?) {
        self.type = type; self.rows = rows; self.cols = cols; self.data = data; self.owner = owner
    }

    public var rowBytes: Int { type.byteCount(elements: cols)! }
    public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }
}

import CVLMKernels
import Foundation

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

/// A 2-D weight matrix `[rows, cols]` kept in its file encoding (usually memory-mapped).
/// Row `r` starts at `data + r * rowBytes`; `owner` keeps the mapping alive.
public struct QuantizedMatrix: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let owner: AnyObject?
    /// The rows again, interleaved eight at a time for the integer kernels
    /// (`interleavedForIntegerProducts`); nil when they only exist as stored.
    public private(set) var interleaved: InterleavedRows?

    public init(type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer, owner: AnyObject?) {
        self.type = type; self.rows = rows; self.cols = cols; self.data = data; self.owner = owner
    }

    public var rowBytes: Int { type.byteCount(elements: cols)! }

    /// This matrix with `interleaved` holding its rows eight at a time, when the integer kernels
    /// take its type that way (Q4_0, Q4_K, Q6_K, rows a multiple of 8): one pass then dots eight
    /// rows with a token into one register. It costs a second copy of the weights, so only
    /// inference with int8 activations asks for it. The copy comes from the owner when it keeps
    /// one across runs (`InterleavedRowsCaching`: a large GGUF's cache file), else it is made in
    /// anonymous memory and handed to the owner to keep. Otherwise (or when the copy cannot be
    /// allocated) the matrix is returned as it is.
    public func interleavedForIntegerProducts() -> QuantizedMatrix {
        let groupBytes = vlm_interleaved_group_bytes(type.rawValue, Int32(cols))
        guard groupBytes > 0, rows > 0, rows % 8 == 0, interleaved == nil else { return self }
        let bytes = rows / 8 * groupBytes
        let cache = owner as? InterleavedRowsCaching
        let packed: InterleavedRows
        if let cached = cache?.interleavedRows(of: data, bytes: bytes) {
            packed = cached
        } else {
            guard let fresh = InterleavedRows(bytes: bytes) else { return self }
            let rowBytes = self.rowBytes, cols = Int32(self.cols), data = self.data, type = self.type.rawValue
            Parallel.forEach(rows / 8, minChunk: max(1, 65536 / groupBytes)) { groups in
                vlm_interleave(type, data, rowBytes, cols, Int32(groups.lowerBound), Int32(groups.upperBound), fresh.pointer)
            }
            cache?.didInterleave(data, into: fresh, bytes: bytes)
            packed = fresh
        }
        // Inference reads only the copy from now on: the stored rows need not stay resident.
        if let file = owner as? PageReleasing { file.releasePages(of: data, bytes: rows * rowBytes) }
        var copy = self
        copy.interleaved = packed
        return copy
    }
    public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }
}

/// An owner of stored weights that can let the kernel drop their pages from the process (a
/// read-only file mapping: the pages come back from the page cache when touched again).
public protocol PageReleasing: AnyObject {
    func releasePages(of pointer: UnsafeRawPointer, bytes: Int)
}

/// An owner of stored weights that keeps their interleaved copies across runs (a GGUF file's
/// cache in the model store: repacking a 7B model takes seconds at every load otherwise).
public protocol InterleavedRowsCaching: AnyObject {
    /// The `bytes`-long interleaved copy of the rows stored at `data` an earlier run kept, if any.
    func interleavedRows(of data: UnsafeRawPointer, bytes: Int) -> InterleavedRows?
    /// The rows stored at `data` were just interleaved into `rows`, for the owner to keep.
    func didInterleave(_ data: UnsafeRawPointer, into rows: InterleavedRows, bytes: Int)
}

/// Memory holding interleaved rows (`QuantizedMatrix.interleaved`): anonymous memory unmapped
/// with it, or a range of a cache mapping that `keeper` keeps alive.
public final class InterleavedRows: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    private let anonymousBytes: Int
    private let keeper: AnyObject?

    init?(bytes: Int) {
        guard bytes > 0, let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            return nil
        }
        pointer = p
        anonymousBytes = bytes
        keeper = nil
        // The pages are made present up front, a share per thread (MADV_POPULATE_WRITE, Linux
        // 5.14; older kernels refuse it and the copy faults them in): a 7B model's copy would
        // otherwise take a million page faults. Measured on the 7B Q4_K_M, 16-token prompt,
        // 2 threads: first token in 2.9-3.0 s against 3.1-3.6 s. Huge pages (MADV_HUGEPAGE)
        // measured slower, 2.6-5.0 s: the kernel compacts memory to find them.
        let span = 1 << 21
        Parallel.forEach((bytes + span - 1) / span) { spans in
            let start = spans.lowerBound * span, end = min(bytes, spans.upperBound * span)
            _ = madvise(p + start, end - start, MADV_POPULATE_WRITE)
        }
    }

    /// Rows at `pointer` inside a mapping `keeper` owns.
    public init(pointer: UnsafeMutableRawPointer, keeper: AnyObject) {
        self.pointer = pointer
        anonymousBytes = 0
        self.keeper = keeper
    }

    deinit { if anonymousBytes > 0 { munmap(pointer, anonymousBytes) } }
}

import CVLMKernels
import Foundation

extension QuantizedMatrix {
    /// Rows per thread chunk so each chunk moves at least ~64 KB (smaller splits cost more in
    /// dispatch than they save).
    private var minRowsPerChunk: Int { max(1, 65536 / max(rowBytes, 1)) }

    /// Decodes row `r` (`cols` floats) into `dst`.
    public func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        Dequantize.fast(type, row(r), dst, count: cols)
    }

    /// Decodes the whole matrix row-major into `dst` (`rows * cols` floats), over all cores.
    public func dequantize(into dst: UnsafeMutablePointer<Float>) {
        let rowBytes = self.rowBytes, cols = self.cols, type = self.type, data = self.data
        Parallel.forEach(rows, minChunk: minRowsPerChunk) { range in
            for r in range { Dequantize.fast(type, data + r * rowBytes, dst + r * cols, count: cols) }
        }
    }

    /// y[r] = dot(row r, x) for every row; x has `cols` floats, y has `rows`. Threaded over rows.
    /// With `activations` int8, block-quantized types go through `IntegerDot` (x quantized to
    /// 8 bits once, as llama.cpp decodes); otherwise, and for F32/F16/BF16 and the types without
    /// an integer kernel, x stays Float32.
    public func matVec(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        if Self.activations == .int8 && IntegerDot.supports(type) { matVecInteger(x, y) } else { matVecFloat(x, y) }
    }

    /// How inference multiplies block-quantized weights (`--activations`, `VLMSH_ACTIVATIONS`).
    nonisolated(unsafe) public static var activations: ActivationPrecision =
        ActivationPrecision(rawValue: ProcessInfo.processInfo.environment["VLMSH_ACTIVATIONS"] ?? "") ?? .f32

    /// Whether inference multiplies `tokens` tokens by this matrix through `matMulInteger`: with
    /// int8 activations, for a type with an integer kernel and a matrix of at least 4 M weights;
    /// rows stored as they are only up to 128 tokens, interleaved rows (Q4_0, Q4_K, Q6_K) at any
    /// length. Smaller matrices (a 135M model's) and longer prompts over stored rows go faster
    /// through sgemm on dequantized rows (measured on AVX2: a 7B Q4_0 prompt of 64 tokens 9.6
    /// against 8.9 tok/s, of 512 tokens 7.6 against 9.8; interleaved, 512 tokens take 14.6, and
    /// 20 on the 7B Q4_K_M), and a short prompt then skips dequantizing the whole model.
    public func prefersIntegerProduct(tokens: Int) -> Bool {
        Self.activations == .int8 && IntegerDot.supports(type) && rows * cols >= 4_000_000 && (tokens <= 128 || interleaved != nil)
    }

    /// matVec with 8-bit activations: one quantization of x into this thread's scratch, then
    /// every thread's share of rows in one call into the C kernels. Types without an integer
    /// kernel go through matVecFloat.
    public func matVecInteger(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        guard IntegerDot.supports(type) else { return matVecFloat(x, y) }
        let rowBytes = self.rowBytes, cols = self.cols, type = self.type, data = self.data
        let activations = ActivationScratch.buffer(bytes: IntegerDot.activationBytes(type, cols: cols))
        IntegerDot.quantizeActivations(type, x, cols: cols, into: activations)
        let blocks = UnsafeRawPointer(activations)
        if let packed = interleaved?.pointer {
            // Eight chunks per thread, taken in turn: a thread slowed by the other's memory
            // traffic takes fewer instead of keeping the other waiting at the end.
            let groups = rows / 8, chunks = min(8 * Parallel.threads, max(1, groups / 4))
            Parallel.run(chunks) { c in
                let lo = c * groups / chunks, hi = (c + 1) * groups / chunks
                vlm_mat_x8(type.rawValue, Int32(cols), packed, Int32(lo), Int32(hi), blocks, 1, y, rows)
            }
            return
        }
        Parallel.forEach(rows, minChunk: minRowsPerChunk) { range in
            vlm_mat_vec_rows(type.rawValue, Int32(cols), data, rowBytes, Int32(range.lowerBound), Int32(range.upperBound), blocks, y)
        }
    }

    /// y `[tokens, rows]` = x `[tokens, cols]` · Wᵀ with every row of x quantized to 8 bits, as
    /// llama.cpp's prefill multiplies block-quantized weights: integer dot products, each weight
    /// row unpacked once per four tokens (vlm_mat_mat_rows), no Float32 copy of W. Types without
    /// an integer kernel are not accepted (check `IntegerDot.supports`).
    public func matMulInteger(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, tokens: Int) {
        precondition(IntegerDot.supports(type), "matMulInteger: \(type.name) has no integer kernel")
        let rowBytes = self.rowBytes, cols = self.cols, type = self.type, data = self.data, rows = self.rows
        let tokenBytes = IntegerDot.activationBytes(type, cols: cols)
        let activations = ActivationScratch.buffer(bytes: tokens * tokenBytes)
        Parallel.forEach(tokens, minChunk: 4) { range in
            for t in range { IntegerDot.quantizeActivations(type, x + t * cols, cols: cols, into: activations + t * tokenBytes) }
        }
        let blocks = UnsafeRawPointer(activations)
        // Chunks of rows taken in turn by the threads (a slower thread takes fewer), each about
        // 96 KB so it stays in L2 while every token's activations pass over it.
        let chunkRows = max(8, 96 * 1024 / max(rowBytes, 1)) / 8 * 8, chunks = (rows + chunkRows - 1) / chunkRows
        if let packed = interleaved?.pointer {
            Parallel.run(chunks) { c in
                let lo = c * chunkRows / 8, hi = min(rows, (c + 1) * chunkRows) / 8
                vlm_mat_x8(type.rawValue, Int32(cols), packed, Int32(lo), Int32(hi), blocks, Int32(tokens), y, rows)
            }
            return
        }
        Parallel.run(chunks) { c in
            let lo = c * chunkRows, hi = min(rows, lo + chunkRows)
            vlm_mat_mat_rows(type.rawValue, Int32(cols), data, rowBytes, Int32(lo), Int32(hi), blocks, Int32(tokens), y, rows)
        }
    }

    /// matVec with x kept in Float32: equals dequantize-then-dot up to float rounding, for
    /// callers that need exactly that.
    public func matVecFloat(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let rowBytes = self.rowBytes, cols = self.cols, type = self.type, data = self.data
        if let kernel = QuantDot.kernel(for: type) {
            let run = { (sums: UnsafePointer<Float>) in
                Parallel.forEach(rows, minChunk: minRowsPerChunk) { range in
                    for r in range { y[r] = kernel(data + r * rowBytes, x, sums, cols) }
                }
            }
            if QuantDot.needsBlockSums(type) {
                // cols / 32 floats on the stack (a 4096-wide row needs 512 bytes).
                withUnsafeTemporaryAllocation(of: Float.self, capacity: max(cols / 32, 1)) { sums in
                    QuantDot.blockSums(x, cols: cols, into: sums.baseAddress!)
                    run(sums.baseAddress!)
                }
            } else {
                withUnsafePointer(to: Float(0)) { run($0) }
            }
            return
        }
        // Other types: decode one block at a time into a stack buffer, then dot.
        let blockSize = type.blockSize, blockBytes = type.blockBytes, blocks = cols / blockSize
        Parallel.forEach(rows, minChunk: minRowsPerChunk) { range in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 256) { buffer in
                let tmp = buffer.baseAddress!
                for r in range {
                    var sum: Float = 0
                    var p = data + r * rowBytes
                    for b in 0..<blocks {
                        Dequantize.fast(type, p, tmp, count: blockSize)
                        sum += Vec.dot(tmp, x + b * blockSize, count: blockSize)
                        p += blockBytes
                    }
                    y[r] = sum
                }
            }
        }
    }

    /// Plain single-threaded matVec: decode each row with the reference decoder, then a scalar dot.
    public func matVecReference(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(cols, 1))
        defer { tmp.deallocate() }
        for r in 0..<rows {
            Dequantize.reference(type, row(r), tmp, count: cols)
            var sum: Float = 0
            for c in 0..<cols { sum += tmp[c] * x[c] }
            y[r] = sum
        }
    }
}

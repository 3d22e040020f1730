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
    /// With `integerDecode` on, block-quantized types go through `IntegerDot` (x quantized to
    /// 8 bits once, as llama.cpp decodes); otherwise, and for F32/F16/BF16 and the types without
    /// an integer kernel, x stays Float32.
    public func matVec(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        if Self.integerDecode && IntegerDot.supports(type) { matVecInteger(x, y) } else { matVecFloat(x, y) }
    }

    /// Whether `matVec` quantizes x to 8 bits for block-quantized weights (`VLMSH_INT8_DECODE=1`).
    /// Off by default: the 8-bit activations move decode logits by tenths on SmolLM2 (its hidden
    /// states have outlier channels that coarsen their 32-element blocks), enough to change
    /// greedy replies and break parity with transformers and with the Float32 prefill.
    nonisolated(unsafe) public static var integerDecode: Bool = ProcessInfo.processInfo.environment["VLMSH_INT8_DECODE"] == "1"

    /// matVec with 8-bit activations: one quantization of x into this thread's scratch, then
    /// every thread's share of rows in one call into the C kernels. Types without an integer
    /// kernel go through matVecFloat.
    public func matVecInteger(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        guard IntegerDot.supports(type) else { return matVecFloat(x, y) }
        let rowBytes = self.rowBytes, cols = self.cols, type = self.type, data = self.data
        let activations = ActivationScratch.buffer(bytes: IntegerDot.activationBytes(type, cols: cols))
        IntegerDot.quantizeActivations(type, x, cols: cols, into: activations)
        let blocks = UnsafeRawPointer(activations)
        Parallel.forEach(rows, minChunk: minRowsPerChunk) { range in
            vlm_mat_vec_rows(type.rawValue, Int32(cols), data, rowBytes, Int32(range.lowerBound), Int32(range.upperBound), blocks, y)
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

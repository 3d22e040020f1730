import Foundation
import VLMTensor

// AdamW's moments in 8 bits, as bitsandbytes' blockwise 8-bit optimizers keep them (the HF
// Trainer's `--optim adamw_bnb_8bit`): each block of 256 values is scaled by its largest
// magnitude and every value stored as the index of the nearest entry of a 256-entry "dynamic"
// code (a dynamic exponent and a fraction: dense near zero, where most moments are). The first
// moment uses the signed code, the second (never negative) the unsigned one. An update
// dequantizes a block, steps it in Float32 and quantizes it again, so no Float32 copy of the
// state exists: 2 bytes and 1/32 of a scale per parameter instead of 8.

/// bitsandbytes' dynamic 8-bit code (`create_dynamic_map`, 7 exponent bits), built the same way in
/// Float32 so the 256 values are the same numbers.
enum DynamicCode {
    static let signed = build(signed: true)
    static let unsigned = build(signed: false)

    /// For exponents 10⁻⁶…10⁰, the midpoints of an even split of [0.1, 1] into 2^i (signed) or
    /// 2^(i+1) (unsigned) parts, scaled by the exponent (and negated, signed); plus 0 and 1.
    static func build(signed: Bool) -> [Float] {
        let exponentBits = 7
        var values: [Float] = []
        for i in 0..<exponentBits {
            let items = (1 << (signed ? i : i + 1)) + 1
            let bounds = linspace(0.1, 1, count: items)
            let scale = Float(pow(10.0, Double(i - (exponentBits - 1))))
            for j in 0..<(items - 1) {
                let mean = (bounds[j] + bounds[j + 1]) / 2
                values.append(scale * mean)
                if signed { values.append(-(scale * mean)) }
            }
        }
        values += [0, 1]
        precondition(values.count == 256)
        return values.sorted()
    }

    /// `torch.linspace` in Float32: the first half counts up from `start`, the second down from
    /// `end`, each a fused multiply-add as its vectorized kernel computes it.
    static func linspace(_ start: Float, _ end: Float, count: Int) -> [Float] {
        let step = (end - start) / Float(count - 1)
        return (0..<count).map { i in
            i < count / 2 ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(count - i - 1))
        }
    }

    /// The index of the entry of `code` nearest to `x` (ties to the lower entry): the last entry
    /// ≤ x, or the next one when that is strictly nearer. (bitsandbytes' CPU kernel finds the
    /// entry with an approximate search that can land a few entries off for values below about
    /// 1 % of the block's scale; its GPU kernels, where its optimizers run, pick the nearest.)
    @inline(__always)
    static func nearest(_ x: Float, in code: UnsafePointer<Float>) -> UInt8 {
        // A branch-free search (eight halvings of the 256 entries): every moment of every step
        // goes through here, and the branches of a plain binary search would be coin flips.
        var low = 0, remaining = 256
        while remaining > 1 {
            let half = remaining / 2
            low = code[low + half] <= x ? low + half : low
            remaining -= half
        }
        if low < 255, abs(x - code[low + 1]) < abs(x - code[low]) { low += 1 }
        return UInt8(low)
    }
}

/// One parameter's two moments, blockwise 8-bit.
final class BlockwiseMoments: @unchecked Sendable {
    static let blockSize = 256
    let count: Int
    let blocks: Int
    /// Code indices of m (signed code) and v (unsigned code), one byte per element.
    let first: UnsafeMutablePointer<UInt8>
    let second: UnsafeMutablePointer<UInt8>
    /// Each block's scale (its largest magnitude).
    let firstScale: UnsafeMutablePointer<Float>
    let secondScale: UnsafeMutablePointer<Float>

    init(count: Int) {
        self.count = count
        blocks = (count + Self.blockSize - 1) / Self.blockSize
        first = .allocate(capacity: count); first.initialize(repeating: 0, count: count)
        second = .allocate(capacity: count); second.initialize(repeating: 0, count: count)
        firstScale = .allocate(capacity: blocks); firstScale.initialize(repeating: 0, count: blocks)
        secondScale = .allocate(capacity: blocks); secondScale.initialize(repeating: 0, count: blocks)
    }

    deinit {
        first.deallocate(); second.deallocate(); firstScale.deallocate(); secondScale.deallocate()
    }

    /// Bytes the state takes.
    var bytes: Int { 2 * count + 8 * blocks }

    /// One AdamW step of `x` with gradient `g`, block by block: dequantize m and v, update them and
    /// x in Float32 in bitsandbytes' order, quantize them again.
    func step(_ x: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ h: AdamW.StepConstants) {
        let signedCode = DynamicCode.signed, unsignedCode = DynamicCode.unsigned
        signedCode.withUnsafeBufferPointer { sc in
            unsignedCode.withUnsafeBufferPointer { uc in
                let sc = sc.baseAddress!, uc = uc.baseAddress!
                Parallel.forEach(blocks, minChunk: 16) { range in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * Self.blockSize) { scratch in
                        let m = scratch.baseAddress!, v = m + Self.blockSize
                        for block in range {
                            let start = block * Self.blockSize, n = min(Self.blockSize, count - start)
                            let ms = firstScale[block], vs = secondScale[block]
                            for j in 0..<n {
                                let i = start + j
                                m[j] = sc[Int(first[i])] * ms * h.beta1 + h.oneMinusBeta1 * g[i]
                                v[j] = uc[Int(second[i])] * vs * h.beta2 + h.oneMinusBeta2 * (g[i] * g[i])
                                let denominator = v[j].squareRoot() / h.correction2Root + h.epsilon
                                x[i] *= h.keep
                                x[i] -= h.stepSize * (m[j] / denominator)
                            }
                            firstScale[block] = Self.quantize(m, n, sc, into: first + start)
                            secondScale[block] = Self.quantize(v, n, uc, into: second + start)
                        }
                    }
                }
            }
        }
    }

    /// Stores `n` values as code indices relative to their largest magnitude, which it returns.
    static func quantize(_ values: UnsafePointer<Float>, _ n: Int, _ code: UnsafePointer<Float>,
                         into out: UnsafeMutablePointer<UInt8>) -> Float {
        var scale: Float = 0
        for j in 0..<n { scale = max(scale, abs(values[j])) }
        // An all-zero block stores index 0 under scale 0, which dequantizes to 0 whatever index 0 is.
        for j in 0..<n { out[j] = scale > 0 ? DynamicCode.nearest(values[j] / scale, in: code) : 0 }
        return scale
    }

    /// m and v dequantized (checkpoints and tests).
    func dequantized() -> (m: Tensor, v: Tensor) {
        let m = Tensor(shape: [count]), v = Tensor(shape: [count])
        for i in 0..<count {
            m.data[i] = DynamicCode.signed[Int(first[i])] * firstScale[i / Self.blockSize]
            v.data[i] = DynamicCode.unsigned[Int(second[i])] * secondScale[i / Self.blockSize]
        }
        return (m, v)
    }

    // MARK: - Checkpoints

    /// The state as four Float32 tensors (the indices as whole numbers: checkpoints hold float tensors).
    var tensors: [(suffix: String, tensor: Tensor)] {
        func floats(_ p: UnsafeMutablePointer<UInt8>) -> Tensor {
            let t = Tensor(shape: [count]); for i in 0..<count { t.data[i] = Float(p[i]) }; return t
        }
        func scales(_ p: UnsafeMutablePointer<Float>) -> Tensor {
            let t = Tensor(shape: [blocks]); t.data.update(from: p, count: blocks); return t
        }
        return [(".state1", floats(first)), (".absmax1", scales(firstScale)),
                (".state2", floats(second)), (".absmax2", scales(secondScale))]
    }

    /// Restores what `tensors` wrote; false when a tensor is missing, the wrong size or not a code index.
    func restore(_ tensors: [String: Tensor], name: String) -> Bool {
        guard let s1 = tensors[name + ".state1"], let a1 = tensors[name + ".absmax1"],
              let s2 = tensors[name + ".state2"], let a2 = tensors[name + ".absmax2"],
              s1.count == count, s2.count == count, a1.count == blocks, a2.count == blocks else { return false }
        for i in 0..<count {
            let a = s1.data[i], b = s2.data[i]
            guard a >= 0, a <= 255, a == a.rounded(), b >= 0, b <= 255, b == b.rounded() else { return false }
            first[i] = UInt8(a); second[i] = UInt8(b)
        }
        for i in 0..<blocks {
            guard a1.data[i].isFinite, a2.data[i].isFinite else { return false }
            firstScale[i] = a1.data[i]; secondScale[i] = a2.data[i]
        }
        return true
    }
}

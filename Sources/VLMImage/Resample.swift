import Foundation
import VLMTensor

/// PIL's resampling filters, numbered as `PIL.Image.Resampling` (and `resample` in
/// preprocessor_config.json).
public enum ResampleFilter: Int, Codable, Sendable {
    case nearest = 0, lanczos = 1, bilinear = 2, bicubic = 3, box = 4, hamming = 5

    var support: Double {
        switch self {
        case .nearest, .box: return 0.5
        case .bilinear, .hamming: return 1
        case .bicubic: return 2
        case .lanczos: return 3
        }
    }

    /// The kernels of Pillow's Resample.c, in double precision as there.
    func weight(_ t: Double) -> Double {
        switch self {
        case .nearest, .box:
            return t > -0.5 && t <= 0.5 ? 1 : 0
        case .bilinear:
            let x = abs(t)
            return x < 1 ? 1 - x : 0
        case .hamming:
            let x = abs(t)
            if x == 0 { return 1 }
            if x >= 1 { return 0 }
            let px = x * Double.pi
            // Pillow writes these constants as C floats.
            return sin(px) / px * (Double(Float(0.54)) + Double(Float(0.46)) * cos(px))
        case .bicubic:
            let a = -0.5, x = abs(t)
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        case .lanczos:
            func sinc(_ v: Double) -> Double { v == 0 ? 1 : sin(v * Double.pi) / (v * Double.pi) }
            return t >= -3 && t < 3 ? sinc(t) * sinc(t / 3) : 0
        }
    }
}

/// Fixed-point filter taps for one axis: output `i` reads `count[i]` inputs from `start[i]`.
struct ResampleCoefficients {
    static let precisionBits: Int32 = 32 - 8 - 2
    let taps: Int
    var start: [Int]
    var count: [Int]
    /// `taps` weights per output, scaled by 2^22 and rounded away from zero as Pillow does.
    var weights: [Int32]

    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: the filter is stretched by the
    /// downscale factor (antialiasing), and each output's weights are normalised to sum to 1.
    init(inSize: Int, outSize: Int, filter: ResampleFilter) {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        taps = Int(support.rounded(.up)) * 2 + 1
        start = [Int](repeating: 0, count: outSize)
        count = [Int](repeating: 0, count: outSize)
        weights = [Int32](repeating: 0, count: outSize * taps)
        let inverseScale = 1 / filterScale
        var k = [Double](repeating: 0, count: taps)
        for out in 0..<outSize {
            let center = (Double(out) + 0.5) * scale
            // C casts truncate toward zero.
            let lo = max(0, Int((center - support + 0.5).rounded(.towardZero)))
            let hi = min(inSize, Int((center + support + 0.5).rounded(.towardZero)))
            let n = max(0, hi - lo)
            var sum = 0.0
            for x in 0..<n {
                let w = filter.weight((Double(x + lo) - center + 0.5) * inverseScale)
                k[x] = w
                sum += w
            }
            for x in 0..<n {
                let w = sum != 0 ? k[x] / sum : k[x]
                let scaled = w * Double(1 << Self.precisionBits)
                weights[out * taps + x] = Int32((w < 0 ? scaled - 0.5 : scaled + 0.5).rounded(.towardZero))
            }
            start[out] = lo
            count[out] = n
        }
    }
}

extension RGBImage {
    /// `Image.resize((width, height), resample=filter)` on an RGB image as Pillow 13 does it: two
    /// separable passes (see `verticalFirst` for their order), each with 22-bit fixed-point
    /// weights, a rounding bias and clipping to 0...255 (the first pass's bytes feed the second).
    public func resized(width outWidth: Int, height outHeight: Int, filter: ResampleFilter) -> RGBImage {
        precondition(outWidth > 0 && outHeight > 0, "resize target must be positive")
        if outWidth == width && outHeight == height { return self }
        if filter == .nearest { return nearest(width: outWidth, height: outHeight) }

        let vertical = ResampleCoefficients(inSize: height, outSize: outHeight, filter: filter)
        if outWidth != width && outHeight != height && Self.verticalFirst(width, height, outWidth, outHeight) {
            // Each pass rounds to bytes, so the order is visible in the output.
            let columns = Self.resampleColumns(self, rowOffset: 0, height: outHeight, coefficients: vertical)
            let horizontal = ResampleCoefficients(inSize: width, outSize: outWidth, filter: filter)
            return Self.resampleRows(columns, rows: 0..<outHeight, width: outWidth, coefficients: horizontal)
        }
        var source = self
        var firstRow = 0
        if outWidth != width {
            // Only rows some output row reads are resampled horizontally.
            firstRow = vertical.start[0]
            let lastRow = vertical.start[outHeight - 1] + vertical.count[outHeight - 1]
            let horizontal = ResampleCoefficients(inSize: width, outSize: outWidth, filter: filter)
            source = Self.resampleRows(self, rows: firstRow..<lastRow, width: outWidth, coefficients: horizontal)
        }
        if outHeight == height { return source }
        return Self.resampleColumns(source, rowOffset: firstRow, height: outHeight, coefficients: vertical)
    }

    /// Pass order of Pillow 13 when both axes change: the vertical pass goes first when the height
    /// shrinks and loses more than twice as many pixels as the width does (so whenever the height
    /// shrinks and the width grows); otherwise horizontal first. Checked against Pillow 13.0.0 on
    /// random sizes of every kind (both shrinking, both growing, mixed): it picks Pillow's order
    /// in all of them.
    static func verticalFirst(_ w: Int, _ h: Int, _ outW: Int, _ outH: Int) -> Bool {
        outH < h && h - outH > 2 * (w - outW)
    }

    static func resampleRows(_ image: RGBImage, rows: Range<Int>, width outWidth: Int, coefficients c: ResampleCoefficients) -> RGBImage {
        let inStride = image.width * 3, outStride = outWidth * 3
        var out = [UInt8](repeating: 0, count: rows.count * outStride)
        let bias: Int32 = 1 << (ResampleCoefficients.precisionBits - 1)
        image.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                c.weights.withUnsafeBufferPointer { weights in
                    c.start.withUnsafeBufferPointer { starts in
                        c.count.withUnsafeBufferPointer { counts in
                            nonisolated(unsafe) let src = src.baseAddress!, dst = dst.baseAddress!
                            nonisolated(unsafe) let weights = weights.baseAddress!, starts = starts.baseAddress!, counts = counts.baseAddress!
                            Parallel.forEach(rows.count, minChunk: 16) { range in
                                for r in range {
                                    let line = src + (rows.lowerBound + r) * inStride
                                    let target = dst + r * outStride
                                    for x in 0..<outWidth {
                                        let k = weights + x * c.taps
                                        let p = line + 3 * starts[x]
                                        var s0 = bias, s1 = bias, s2 = bias
                                        for t in 0..<counts[x] {
                                            let w = k[t]
                                            s0 &+= Int32(p[3 * t]) &* w
                                            s1 &+= Int32(p[3 * t + 1]) &* w
                                            s2 &+= Int32(p[3 * t + 2]) &* w
                                        }
                                        target[3 * x] = clip8(s0)
                                        target[3 * x + 1] = clip8(s1)
                                        target[3 * x + 2] = clip8(s2)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        return RGBImage(width: outWidth, height: rows.count, pixels: out)
    }

    static func resampleColumns(_ image: RGBImage, rowOffset: Int, height outHeight: Int, coefficients c: ResampleCoefficients) -> RGBImage {
        let stride = image.width * 3
        var out = [UInt8](repeating: 0, count: outHeight * stride)
        let bias: Int32 = 1 << (ResampleCoefficients.precisionBits - 1)
        image.pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                c.weights.withUnsafeBufferPointer { weights in
                    nonisolated(unsafe) let src = src.baseAddress!, dst = dst.baseAddress!
                    nonisolated(unsafe) let weights = weights.baseAddress!
                    let starts = c.start, counts = c.count, taps = c.taps
                    Parallel.forEach(outHeight, minChunk: 8) { range in
                        // One accumulator row; taps outer, columns inner so the loop vectorises.
                        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: stride)
                        defer { acc.deallocate() }
                        for y in range {
                            acc.update(repeating: bias, count: stride)
                            let k = weights + y * taps
                            let first = starts[y] - rowOffset
                            for t in 0..<counts[y] {
                                let w = k[t]
                                let line = src + (first + t) * stride
                                for i in 0..<stride { acc[i] &+= Int32(line[i]) &* w }
                            }
                            let target = dst + y * stride
                            for i in 0..<stride { target[i] = clip8(acc[i]) }
                        }
                    }
                }
            }
        }
        return RGBImage(width: image.width, height: outHeight, pixels: out)
    }

    /// Nearest neighbour: sample at pixel centres, as Pillow's affine nearest transform.
    func nearest(width outWidth: Int, height outHeight: Int) -> RGBImage {
        let sx = Double(width) / Double(outWidth), sy = Double(height) / Double(outHeight)
        var out = [UInt8](repeating: 0, count: outWidth * outHeight * 3)
        for y in 0..<outHeight {
            let srcY = min(height - 1, Int((Double(y) + 0.5) * sy))
            for x in 0..<outWidth {
                let srcX = min(width - 1, Int((Double(x) + 0.5) * sx))
                for ch in 0..<3 { out[3 * (y * outWidth + x) + ch] = pixels[3 * (srcY * width + srcX) + ch] }
            }
        }
        return RGBImage(width: outWidth, height: outHeight, pixels: out)
    }
}

/// Pillow's clip8: drop the 22 fraction bits (arithmetic shift), clamp to a byte.
@inline(__always)
func clip8(_ v: Int32) -> UInt8 {
    let shifted = v >> ResampleCoefficients.precisionBits
    return shifted < 0 ? 0 : shifted > 255 ? 255 : UInt8(truncatingIfNeeded: shifted)
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B — the layout PIL gives
/// `np.array(image.convert("RGB"))`.
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && pixels.count == width * height * 3,
                     "RGBImage \(width)x\(height) needs \(width * height * 3) bytes, got \(pixels.count)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A uniform image, e.g. the background of LLaVA's pad-to-square.
    public init(width: Int, height: Int, filledWith color: (UInt8, UInt8, UInt8)) {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        pixels.withUnsafeMutableBufferPointer { p in
            for i in 0..<(width * height) {
                p[3 * i] = color.0; p[3 * i + 1] = color.1; p[3 * i + 2] = color.2
            }
        }
        self.init(width: width, height: height, pixels: pixels)
    }

    /// The `width`×`height` region whose top-left pixel is (`x`, `y`); it must lie inside the image.
    public func cropped(x: Int, y: Int, width cropWidth: Int, height cropHeight: Int) -> RGBImage {
        precondition(x >= 0 && y >= 0 && cropWidth > 0 && cropHeight > 0 && x + cropWidth <= width && y + cropHeight <= height,
                     "crop \(cropWidth)x\(cropHeight) at (\(x), \(y)) is outside the \(width)x\(height) image")
        var out = [UInt8](repeating: 0, count: cropWidth * cropHeight * 3)
        let rowBytes = cropWidth * 3
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for row in 0..<cropHeight {
                    (dst.baseAddress! + row * rowBytes).update(from: src.baseAddress! + ((y + row) * width + x) * 3, count: rowBytes)
                }
            }
        }
        return RGBImage(width: cropWidth, height: cropHeight, pixels: out)
    }

    /// `canvas` with this image drawn over it, top-left pixel at (`x`, `y`); it must fit.
    public func drawn(onto canvas: RGBImage, x: Int, y: Int) -> RGBImage {
        precondition(x >= 0 && y >= 0 && x + width <= canvas.width && y + height <= canvas.height,
                     "a \(width)x\(height) image at (\(x), \(y)) does not fit the \(canvas.width)x\(canvas.height) canvas")
        var out = canvas
        let rowBytes = width * 3
        pixels.withUnsafeBufferPointer { src in
            out.pixels.withUnsafeMutableBufferPointer { dst in
                for row in 0..<height {
                    (dst.baseAddress! + ((y + row) * canvas.width + x) * 3).update(from: src.baseAddress! + row * rowBytes, count: rowBytes)
                }
            }
        }
        return out
    }
}

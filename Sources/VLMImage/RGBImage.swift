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
}

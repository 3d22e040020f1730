import CPNG
import VLMFormats

/// PNG decoding through libpng's simplified API, which reports errors by return code and
/// `png_image.message` (it catches libpng's longjmp internally), so nothing unwinds through Swift.
///
/// PIL ignores colour-space chunks and takes raw samples, while the simplified API converts
/// gamma and composites alpha. So the chunk list is walked here first: IHDR is checked (size limit
/// before any allocation), gAMA/cHRM/sRGB/iCCP/tRNS are dropped so libpng reads samples as they
/// are stored, and eXIf gives the orientation. Then, like `convert("RGB")`: alpha is dropped,
/// gray is replicated, 16-bit colour keeps the high byte, 16-bit gray ("I;16") clips to 255.
enum PNGDecoder {
    static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
    /// Chunks that would make libpng change sample values PIL leaves alone.
    static let droppedChunks: Set<String> = ["gAMA", "cHRM", "sRGB", "iCCP", "tRNS"]

    static func decode(_ b: UnsafeRawBufferPointer, path: String, maxPixels: Int) throws -> RGBImage {
        func fail(_ message: String) -> FormatError { FormatError(path, "PNG: \(message)") }
        func u32(_ o: Int) -> Int { Int(b[o]) << 24 | Int(b[o + 1]) << 16 | Int(b[o + 2]) << 8 | Int(b[o + 3]) }

        guard b.count >= 8 + 25, zip(signature, b).allSatisfy({ $0 == $1 }) else { throw fail("truncated before IHDR") }
        guard u32(8) == 13, String(decoding: b[12..<16], as: UTF8.self) == "IHDR" else { throw fail("first chunk is not IHDR") }
        let width = u32(16), height = u32(20)
        let depth = Int(b[24]), colorType = Int(b[25])
        guard width > 0, height > 0 else { throw fail("image size \(width)x\(height) is empty") }
        guard width <= maxPixels, height <= maxPixels, width * height <= maxPixels else {
            throw fail("image size \(width)x\(height) exceeds the limit of \(maxPixels) pixels")
        }

        // Rebuild the stream without the dropped chunks (CRCs are per chunk, so the rest stay valid).
        var kept = [UInt8](signature)
        kept.reserveCapacity(b.count)
        var orientation = Orientation.normal
        var pos = 8
        var sawData = false, sawEnd = false
        while pos < b.count {
            guard pos + 12 <= b.count else { throw fail("truncated in chunk header") }
            let length = u32(pos)
            guard length <= 0x7FFF_FFFF, pos + 12 + length <= b.count else { throw fail("truncated in chunk data") }
            let type = String(decoding: b[(pos + 4)..<(pos + 8)], as: UTF8.self)
            let data = UnsafeRawBufferPointer(rebasing: b[(pos + 8)..<(pos + 8 + length)])
            if type == "IDAT" { sawData = true }
            if type == "eXIf" {
                // PIL keeps the last eXIf chunk; some writers prefix it with "Exif\0\0".
                let tiff = data.starts(with: "Exif\0\0".utf8) ? UnsafeRawBufferPointer(rebasing: data[6...]) : data
                orientation = Orientation.fromTIFF(tiff) ?? .normal
            }
            if !droppedChunks.contains(type) { kept.append(contentsOf: b[pos..<(pos + 12 + length)]) }
            pos += 12 + length
            if type == "IEND" { sawEnd = true; break }
        }
        guard sawData else { throw fail("no image data (IDAT)") }
        guard sawEnd else { throw fail("truncated: no IEND chunk") }

        let sixteen = depth == 16
        let hasAlpha = colorType == 4 || colorType == 6
        let isGray = colorType == 0 || colorType == 4
        var format: UInt32 = 0
        if !isGray { format |= UInt32(PNG_FORMAT_FLAG_COLOR) }
        if hasAlpha { format |= UInt32(PNG_FORMAT_FLAG_ALPHA) }
        if sixteen { format |= UInt32(PNG_FORMAT_FLAG_LINEAR) }
        let channels = (isGray ? 1 : 3) + (hasAlpha ? 1 : 0)

        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let begun = kept.withUnsafeBytes { png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }
        guard begun != 0 else { throw fail(message(image)) }
        guard Int(image.width) == width, Int(image.height) == height else { throw fail("libpng disagrees about the image size") }
        image.format = format

        let samples = width * height * channels
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        if sixteen {
            var buffer = [UInt16](repeating: 0, count: samples)
            let done = buffer.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
            guard done != 0 else { throw fail(message(image)) }
            convert16(buffer, channels: channels, gray: isGray, alpha: hasAlpha, into: &rgb)
        } else {
            var buffer = [UInt8](repeating: 0, count: samples)
            let done = buffer.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
            guard done != 0 else { throw fail(message(image)) }
            buffer.withUnsafeBufferPointer { src in
                rgb.withUnsafeMutableBufferPointer { dst in
                    for i in 0..<(width * height) {
                        let s = i * channels
                        if isGray {
                            dst[3 * i] = src[s]; dst[3 * i + 1] = src[s]; dst[3 * i + 2] = src[s]
                        } else {
                            dst[3 * i] = src[s]; dst[3 * i + 1] = src[s + 1]; dst[3 * i + 2] = src[s + 2]
                        }
                    }
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: rgb).oriented(orientation)
    }

    /// 16-bit samples as PIL converts them. With alpha, libpng's linear output is premultiplied;
    /// un-premultiplying is exact for opaque pixels and approximate for translucent ones (fully
    /// transparent pixels come out black where PIL keeps the stored colour).
    static func convert16(_ src: [UInt16], channels: Int, gray: Bool, alpha: Bool, into dst: inout [UInt8]) {
        let pixels = dst.count / 3
        src.withUnsafeBufferPointer { s in
            dst.withUnsafeMutableBufferPointer { d in
                for i in 0..<pixels {
                    let base = i * channels
                    let a = alpha ? Int(s[base + channels - 1]) : 65535
                    func sample(_ c: Int) -> Int {
                        let v = Int(s[base + c])
                        if a == 65535 { return v }
                        if a == 0 { return 0 }
                        return min(65535, (v * 65535 + a / 2) / a)
                    }
                    if gray {
                        // PIL: gray without alpha is "I;16" and clips; gray+alpha keeps the high byte.
                        let v = sample(0)
                        let g = UInt8(alpha ? v >> 8 : min(v, 255))
                        d[3 * i] = g; d[3 * i + 1] = g; d[3 * i + 2] = g
                    } else {
                        for c in 0..<3 { d[3 * i + c] = UInt8(sample(c) >> 8) }
                    }
                }
            }
        }
    }

    static func message(_ image: png_image) -> String {
        var m = image.message
        let text = withUnsafeBytes(of: &m) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return text.isEmpty ? "libpng could not decode the image" : text
    }
}

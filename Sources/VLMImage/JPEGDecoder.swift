import CJPEGShim
import VLMFormats

/// JPEG decoding through libjpeg(-turbo), producing exactly what PIL produces: PIL drives the same
/// library with default settings (islow IDCT, fancy upsampling), so the pixels match.
///
/// libjpeg reports fatal errors by a callback that must not return; the C shim (CJPEGShim) catches
/// them with setjmp/longjmp, which Swift cannot do, and hands back libjpeg's message. The header is
/// read first so the size limit is checked before any pixel memory is allocated.
enum JPEGDecoder {
    static func decode(_ bytes: UnsafeRawBufferPointer, path: String, maxPixels: Int) throws -> RGBImage {
        func fail(_ message: String) -> FormatError { FormatError(path, "JPEG: \(message)") }
        guard let start = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
              let decoder = vlm_jpeg_create(start, bytes.count) else { throw fail("cannot start the decoder") }
        defer { vlm_jpeg_destroy(decoder) }

        var header = VLMJPEGHeader()
        let headerCode = vlm_jpeg_read_header(decoder, &header)
        guard headerCode == 0 else { throw fail(explain(headerCode, decoder, header)) }
        let width = Int(header.width), height = Int(header.height), channels = Int(header.components)
        if vlm_jpeg_truncated(decoder) != 0 { throw fail("image file is truncated") }
        guard channels == 1 || channels == 3 || channels == 4 else { throw fail("\(channels) components are not supported") }
        guard width * height <= maxPixels else {
            throw fail("image size \(width)x\(height) exceeds the limit of \(maxPixels) pixels")
        }
        let orientation = Self.orientation(decoder)

        var stored = [UInt8](repeating: 0, count: width * height * channels)
        let decodeCode = stored.withUnsafeMutableBufferPointer { vlm_jpeg_decode(decoder, $0.baseAddress, $0.count) }
        guard decodeCode == 0 else { throw fail(explain(decodeCode, decoder, header)) }
        // libjpeg pads a file that ends early with gray; PIL raises "image file is truncated".
        if vlm_jpeg_truncated(decoder) != 0 { throw fail("image file is truncated") }
        let rgb = channels == 3 ? stored : toRGB(stored, channels: channels, pixels: width * height)
        return RGBImage(width: width, height: height, pixels: rgb).oriented(orientation)
    }

    /// libjpeg's message, reworded where it hides what the user needs (the size, the bit depth).
    static func explain(_ code: Int32, _ decoder: OpaquePointer, _ header: VLMJPEGHeader) -> String {
        let parameter = vlm_jpeg_message_parameter(decoder)
        switch UInt32(code) {
        case JERR_BAD_PRECISION.rawValue: return "\(parameter)-bit samples are not supported"
        case JERR_DHT_INDEX.rawValue: return "bad Huffman table index \(parameter)"
        case JERR_IMAGE_TOO_BIG.rawValue:
            return "image size \(header.width)x\(header.height) exceeds libjpeg's limit of 65500 pixels a side"
        default:
            let message = String(cString: vlm_jpeg_message(decoder))
            return vlm_jpeg_truncated(decoder) != 0 ? "image file is truncated (\(message))" : message
        }
    }

    /// EXIF orientation, else XMP's, from the APP1 segments libjpeg kept (as PIL's exif_transpose).
    static func orientation(_ decoder: OpaquePointer) -> Orientation {
        var exif: Orientation?, xmp: Orientation?
        var index: Int32 = 0
        var length: UInt32 = 0
        while let data = vlm_jpeg_app1(decoder, index, &length) {
            let segment = UnsafeRawBufferPointer(start: data, count: Int(length))
            if exif == nil, segment.starts(with: "Exif\0\0".utf8) {
                exif = Orientation.fromTIFF(UnsafeRawBufferPointer(rebasing: segment[6...]))
            } else if xmp == nil, segment.starts(with: "http://ns.adobe.com/xap/1.0/\0".utf8) {
                xmp = Orientation.fromXMP(segment)
            }
            index += 1
        }
        return exif ?? xmp ?? .normal
    }

    /// Gray is replicated; CMYK follows PIL: stored values are Adobe-inverted ("CMYK;I"), then
    /// `cmyk2rgb`: channel = 255 - k - c·(255 - k)/255 with PIL's MULDIV255 rounding.
    static func toRGB(_ stored: [UInt8], channels: Int, pixels: Int) -> [UInt8] {
        var rgb = [UInt8](repeating: 0, count: pixels * 3)
        stored.withUnsafeBufferPointer { src in
            rgb.withUnsafeMutableBufferPointer { dst in
                for x in 0..<pixels {
                    if channels == 1 {
                        let v = src[x]; dst[3 * x] = v; dst[3 * x + 1] = v; dst[3 * x + 2] = v
                        continue
                    }
                    let nk = Int(src[4 * x + 3])          // 255 - k, with k = 255 - stored
                    for c in 0..<3 {
                        let value = 255 - Int(src[4 * x + c])
                        let t = value * nk + 128
                        let product = ((t >> 8) + t) >> 8
                        dst[3 * x + c] = UInt8(clamping: nk - product)
                    }
                }
            }
        }
        return rgb
    }
}

import CPNG
import Foundation
import VLMFormats

/// PNG encoding through libpng's simplified write API (8-bit RGB, no alpha, no interlace), which,
/// like the simplified read API, catches libpng's longjmp internally and reports by return code.
/// The output is a pure function of the pixels (no time or text chunks), so the same image always
/// gives the same bytes, and `ImageLoader` reads back exactly the pixels written.
public enum PNGEncoder {
    /// The PNG file for `image`; `path` only names the file in errors.
    public static func encode(_ image: RGBImage, path: String = "<memory>") throws -> [UInt8] {
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        png.width = UInt32(image.width)
        png.height = UInt32(image.height)
        png.format = UInt32(PNG_FORMAT_RGB)
        // libpng's "fast" mode: no row filters, zlib level 3 — several times quicker than the
        // defaults, and for flat synthetic images barely larger.
        png.flags = UInt32(PNG_IMAGE_FLAG_FAST)
        defer { png_image_free(&png) }

        // Raw rows plus filter bytes plus chunk overhead: enough unless zlib expands the data,
        // in which case libpng reports the size it needs and the write is repeated once.
        var capacity = image.width * image.height * 3 + image.height + 1024
        for _ in 0..<2 {
            var out = [UInt8](repeating: 0, count: capacity)
            var bytes = png_alloc_size_t(capacity)
            let ok = out.withUnsafeMutableBytes { dst in
                image.pixels.withUnsafeBytes { src in
                    png_image_write_to_memory(&png, dst.baseAddress, &bytes, 0, src.baseAddress,
                                              png_int_32(image.width * 3), nil)
                }
            }
            if ok != 0 {
                out.removeSubrange(Int(bytes)...)
                return out
            }
            guard Int(bytes) > capacity else { break }
            capacity = Int(bytes)
        }
        var m = png.message
        let text = withUnsafeBytes(of: &m) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        throw FormatError(path, "PNG: \(text.isEmpty ? "libpng could not encode the image" : text)")
    }

    /// Writes `image` to `path` as a PNG. The file is written next to the target and renamed into
    /// place, so `path` never holds a partial file; any failure is one FormatError naming `path`.
    public static func write(_ image: RGBImage, to path: String) throws {
        try writeAtomically(Data(try encode(image, path: path)), to: path)
    }
}

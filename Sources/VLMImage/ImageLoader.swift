import Foundation
import VLMFormats
import VLMTensor

/// Reads JPEG and PNG files into RGB, matching `ImageOps.exif_transpose(Image.open(path)).convert("RGB")`.
public enum ImageLoader {
    /// Decodes the file at `path`, detecting the format by its first bytes. Any problem with the file
    /// (unknown format, truncation, corruption, a declared size above `maxPixels`) is a FormatError
    /// naming it; the size limit is checked from the header, before pixels are allocated.
    public static func load(path: String, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        let file = try MappedFile(path: path)
        return try decode(UnsafeRawBufferPointer(start: file.base, count: file.size), path: path, maxPixels: maxPixels)
    }

    /// 192 MB of RGB: far above any photo, far below what would hurt.
    public static let defaultMaxPixels = 64_000_000
    /// What decoding takes per pixel: the RGB result and about as much again in the decoder.
    static let bytesPerDecodedPixel = 6

    /// Decodes an in-memory file; `path` only names it in errors. `maxPixels` is lowered to what
    /// the memory budget has room for.
    public static func decode(_ bytes: UnsafeRawBufferPointer, path: String, maxPixels: Int = defaultMaxPixels) throws -> RGBImage {
        let room = max(MemoryBudget.limit - MemoryBudget.residentBytes(), 0)
        let maxPixels = max(min(maxPixels, room / bytesPerDecodedPixel), 1)
        if bytes.count >= 3, bytes[0] == 0xFF, bytes[1] == 0xD8, bytes[2] == 0xFF {
            return try JPEGDecoder.decode(bytes, path: path, maxPixels: maxPixels)
        }
        if bytes.count >= 8, zip(PNGDecoder.signature, bytes).allSatisfy({ $0 == $1 }) {
            return try PNGDecoder.decode(bytes, path: path, maxPixels: maxPixels)
        }
        throw FormatError(path, "not a JPEG or PNG file (unrecognised leading bytes)")
    }
}

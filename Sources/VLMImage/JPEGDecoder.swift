import CJPEG
import Foundation
import VLMFormats

/// JPEG decoding through libjpeg(-turbo), producing exactly what PIL produces: PIL drives the same
/// library with default settings (islow IDCT, fancy upsampling), so the pixels match.
///
/// Safety: `JPEGStructure` refuses every file libjpeg would call `error_exit` on, so libjpeg only
/// ever sees well-formed marker streams. As a last line of defence against an error we did not
/// foresee, decoding runs on its own thread and `error_exit` parks that thread forever (it must not
/// return into libjpeg, cannot longjmp through Swift, and must not call exit()); the caller gets a
/// FormatError and the parked thread's memory is leaked. That path should be unreachable.
enum JPEGDecoder {
    static func decode(_ bytes: UnsafeRawBufferPointer, path: String, maxPixels: Int) throws -> RGBImage {
        let structure = try JPEGStructure(bytes, path: path, maxPixels: maxPixels)
        let job = DecodeJob(bytes: bytes, structure: structure)
        let thread = Thread { job.run() }
        thread.stackSize = 1 << 20
        thread.start()
        job.finished.wait()
        if let message = job.failure { throw FormatError(path, "JPEG: \(message)") }
        guard let image = job.image else { throw FormatError(path, "JPEG: decoder produced no image") }
        return image.oriented(structure.orientation)
    }
}

/// One decode, shared between the caller and the decoding thread.
private final class DecodeJob: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer
    let structure: JPEGStructure
    let finished = DispatchSemaphore(value: 0)
    var image: RGBImage?
    var failure: String?
    var truncated = false

    init(bytes: UnsafeRawBufferPointer, structure: JPEGStructure) {
        self.bytes = bytes
        self.structure = structure
    }

    func run() {
        var err = jpeg_error_mgr()
        var cinfo = jpeg_decompress_struct()
        cinfo.err = jpeg_std_error(&err)
        err.error_exit = { common in
            let job = Unmanaged<DecodeJob>.fromOpaque(common!.pointee.client_data).takeUnretainedValue()
            job.failure = DecodeJob.message(common!)
            job.finished.signal()
            // Never return into libjpeg: park this thread for good.
            while true { sleep(3600) }
        }
        err.emit_message = { common, level in
            // Warnings (level -1) about corrupt entropy data are ignored, as PIL does; running out
            // of data is not (PIL raises "image file is truncated").
            guard level < 0 else { return }
            let job = Unmanaged<DecodeJob>.fromOpaque(common!.pointee.client_data).takeUnretainedValue()
            if DecodeJob.message(common!).hasPrefix("Premature end") { job.truncated = true }
        }
        jpeg_CreateDecompress(&cinfo, JPEG_LIB_VERSION, MemoryLayout<jpeg_decompress_struct>.size)
        cinfo.client_data = Unmanaged.passUnretained(self).toOpaque()
        defer { jpeg_destroy_decompress(&cinfo); finished.signal() }

        jpeg_mem_src(&cinfo, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt(bytes.count))
        _ = jpeg_read_header(&cinfo, 1)
        let channels = Int(cinfo.num_components)
        switch channels {
        case 1: cinfo.out_color_space = JCS_GRAYSCALE
        case 3: cinfo.out_color_space = JCS_RGB
        default: cinfo.out_color_space = JCS_CMYK   // YCCK is converted to CMYK by libjpeg
        }
        _ = jpeg_start_decompress(&cinfo)
        let width = Int(cinfo.output_width), height = Int(cinfo.output_height)
        let outChannels = Int(cinfo.output_components)
        guard width == structure.width, height == structure.height, outChannels == channels else {
            failure = "decoder reports \(width)x\(height)x\(outChannels), header says \(structure.width)x\(structure.height)x\(channels)"
            return
        }
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        var row = [UInt8](repeating: 0, count: width * outChannels)
        pixels.withUnsafeMutableBufferPointer { out in
            row.withUnsafeMutableBufferPointer { rowBuffer in
                var rowPointer: JSAMPROW? = rowBuffer.baseAddress
                while cinfo.output_scanline < cinfo.output_height {
                    let y = Int(cinfo.output_scanline)
                    guard jpeg_read_scanlines(&cinfo, &rowPointer, 1) == 1 else { break }
                    Self.convertRow(rowBuffer.baseAddress!, channels: outChannels, width: width, into: out.baseAddress! + 3 * width * y)
                }
            }
        }
        if truncated { failure = "image file is truncated"; return }
        image = RGBImage(width: width, height: height, pixels: pixels)
    }

    /// Gray is replicated; CMYK follows PIL: stored values are Adobe-inverted ("CMYK;I"), then
    /// `cmyk2rgb`: channel = 255 - k - c·(255 - k)/255 with PIL's MULDIV255 rounding.
    static func convertRow(_ src: UnsafeMutablePointer<UInt8>, channels: Int, width: Int, into dst: UnsafeMutablePointer<UInt8>) {
        switch channels {
        case 1:
            for x in 0..<width { let v = src[x]; dst[3 * x] = v; dst[3 * x + 1] = v; dst[3 * x + 2] = v }
        case 3:
            dst.update(from: src, count: 3 * width)
        default:
            for x in 0..<width {
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

    static func message(_ common: j_common_ptr) -> String {
        var buffer = [CChar](repeating: 0, count: Int(JMSG_LENGTH_MAX))
        common.pointee.err.pointee.format_message(common, &buffer)
        return String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

import Foundation
import VLMFormats
import VLMTensor

/// A `size` or `crop_size` entry of preprocessor_config.json: `{"shortest_edge": n}`,
/// `{"height": h, "width": w}`, or a bare integer (older CLIP configs).
public struct ImageSize: Codable, Sendable, Equatable {
    public var shortestEdge: Int?
    public var height: Int?
    public var width: Int?
    /// A bare integer; what it means depends on the field (transformers' `get_size_dict`).
    public var single: Int?

    public init(shortestEdge: Int? = nil, height: Int? = nil, width: Int? = nil) {
        self.shortestEdge = shortestEdge; self.height = height; self.width = width
    }

    enum CodingKeys: String, CodingKey { case shortestEdge = "shortest_edge", height, width }

    public init(from decoder: Decoder) throws {
        if let n = try? decoder.singleValueContainer().decode(Int.self) { single = n; return }
        let c = try decoder.container(keyedBy: CodingKeys.self)
        shortestEdge = try c.decodeIfPresent(Int.self, forKey: .shortestEdge)
        height = try c.decodeIfPresent(Int.self, forKey: .height)
        width = try c.decodeIfPresent(Int.self, forKey: .width)
    }

    public func encode(to encoder: Encoder) throws {
        if let single { var c = encoder.singleValueContainer(); try c.encode(single); return }
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(shortestEdge, forKey: .shortestEdge)
        try c.encodeIfPresent(height, forKey: .height)
        try c.encodeIfPresent(width, forKey: .width)
    }
}

/// preprocessor_config.json of a CLIP, SigLIP or LLaVA vision tower, applied as transformers'
/// PIL backend does (`CLIPImageProcessorPil`, `SiglipImageProcessorPil`, `LlavaImageProcessorPil`):
/// resize with PIL, center crop, rescale in float64 then float32, normalize in float32.
/// LLaVA-NeXT's tiling on top of this is `preprocessAnyResolution` (AnyResolution.swift).
/// Missing fields take the class defaults of transformers 5.
public struct ImageProcessor: Codable, Sendable {
    public var imageProcessorType: String?
    public var doResize: Bool?
    public var size: ImageSize?
    public var resample: Int?
    public var doCenterCrop: Bool?
    public var cropSize: ImageSize?
    public var doRescale: Bool?
    public var rescaleFactor: Double?
    public var doNormalize: Bool?
    public var imageMean: [Double]?
    public var imageStd: [Double]?
    public var doConvertRGB: Bool?
    /// LLaVA-NeXT's candidate resolutions, `[height, width]` each (`LlavaNextImageProcessor`).
    public var imageGridPinpoints: [[Int]]?

    enum CodingKeys: String, CodingKey {
        case imageProcessorType = "image_processor_type", doResize = "do_resize", size, resample
        case doCenterCrop = "do_center_crop", cropSize = "crop_size", doRescale = "do_rescale"
        case rescaleFactor = "rescale_factor", doNormalize = "do_normalize", imageMean = "image_mean"
        case imageStd = "image_std", doConvertRGB = "do_convert_rgb", imageGridPinpoints = "image_grid_pinpoints"
    }

    public init(imageProcessorType: String? = nil, doResize: Bool? = nil, size: ImageSize? = nil, resample: Int? = nil,
                doCenterCrop: Bool? = nil, cropSize: ImageSize? = nil, doRescale: Bool? = nil, rescaleFactor: Double? = nil,
                doNormalize: Bool? = nil, imageMean: [Double]? = nil, imageStd: [Double]? = nil, doConvertRGB: Bool? = nil,
                imageGridPinpoints: [[Int]]? = nil) {
        self.imageProcessorType = imageProcessorType; self.doResize = doResize; self.size = size; self.resample = resample
        self.doCenterCrop = doCenterCrop; self.cropSize = cropSize; self.doRescale = doRescale; self.rescaleFactor = rescaleFactor
        self.doNormalize = doNormalize; self.imageMean = imageMean; self.imageStd = imageStd; self.doConvertRGB = doConvertRGB
        self.imageGridPinpoints = imageGridPinpoints
    }

    /// Reads `preprocessor_config.json` from a model folder and checks the values preprocessing relies on.
    public static func load(folder: String) throws -> ImageProcessor {
        let path = URL(fileURLWithPath: folder).appendingPathComponent("preprocessor_config.json").path
        let data = try SmallFile.read(path)
        let processor: ImageProcessor
        do { processor = try JSONDecoder().decode(ImageProcessor.self, from: data) }
        catch { throw FormatError(path, "not a valid preprocessor config: \(Self.describe(error))") }
        try processor.validate(path: path)
        return processor
    }

    /// Sizes above this are corrupt (released towers take at most about 1000 pixels a side).
    public static let maxSide = 4096

    /// Checks what `preprocess` would otherwise trip over.
    public func validate(path: String) throws {
        guard ResampleFilter(rawValue: resample ?? 3) != nil else { throw FormatError(path, "unknown resample filter \(resample!)") }
        guard effectiveMean.count == 3, effectiveStd.count == 3, effectiveStd.allSatisfy({ $0 != 0 }) else {
            throw FormatError(path, "image_mean and image_std need 3 values and a non-zero std")
        }
        guard (effectiveMean + effectiveStd + [rescaleFactor ?? 1]).allSatisfy(\.isFinite) else {
            throw FormatError(path, "image_mean, image_std and rescale_factor must be finite numbers")
        }
        do {
            if resizes { try Self.checkSides(effectiveSize, key: "size", needsShortestEdge: true) }
            if cropsCenter { try Self.checkSides(effectiveCropSize, key: "crop_size", needsShortestEdge: false) }
            if let imageGridPinpoints { try AnyResolutionLayout.checkPinpoints(imageGridPinpoints) }
        } catch let e as ConfigValueError {
            throw FormatError(path, e.description)
        }
    }

    /// `size` needs shortest_edge or height and width, `crop_size` height and width; each side in 1...maxSide.
    static func checkSides(_ size: ImageSize, key: String, needsShortestEdge: Bool) throws {
        let sides = [("shortest_edge", size.shortestEdge), ("height", size.height), ("width", size.width)]
        for case let (name, value?) in sides { try ConfigValueError.check("\(key).\(name)", value, in: 1...maxSide) }
        let complete = size.height != nil && size.width != nil
        guard complete || (needsShortestEdge && size.shortestEdge != nil) else {
            throw ConfigValueError(key, needsShortestEdge ? "needs shortest_edge or height and width" : "needs height and width")
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c), DecodingError.dataCorrupted(let c):
            let key = c.codingPath.map(\.stringValue).joined(separator: ".")
            return key.isEmpty ? c.debugDescription : "\(key): \(c.debugDescription)"
        default: return "\(error)"
        }
    }

    // MARK: Class defaults (transformers 5)

    var isSiglip: Bool { imageProcessorType?.lowercased().contains("siglip") ?? false }
    static let clipMean = [0.48145466, 0.4578275, 0.40821073]
    static let clipStd = [0.26862954, 0.26130258, 0.27577711]

    var resizes: Bool { doResize ?? true }
    var cropsCenter: Bool { doCenterCrop ?? !isSiglip }
    var filter: ResampleFilter { ResampleFilter(rawValue: resample ?? 3) ?? .bicubic }
    var effectiveMean: [Double] { imageMean ?? (isSiglip ? [0.5, 0.5, 0.5] : Self.clipMean) }
    var effectiveStd: [Double] { imageStd ?? (isSiglip ? [0.5, 0.5, 0.5] : Self.clipStd) }

    /// `size` as a dict: a bare integer is a shortest edge (both classes have default_to_square=False).
    var effectiveSize: ImageSize {
        guard let size else { return isSiglip ? ImageSize(height: 224, width: 224) : ImageSize(shortestEdge: 224) }
        if let n = size.single { return ImageSize(shortestEdge: n) }
        return size
    }

    /// `crop_size` as a dict: a bare integer is a square.
    var effectiveCropSize: ImageSize {
        guard let crop = cropSize else { return ImageSize(height: 224, width: 224) }
        if let n = crop.single { return ImageSize(height: n, width: n) }
        return crop
    }

    /// The (height, width) the resize step produces, as transformers computes it.
    public func resizedSize(width: Int, height: Int) -> (height: Int, width: Int) {
        let s = effectiveSize
        if let edge = s.shortestEdge {
            // get_resize_output_image_size(default_to_square=False): long side scaled, truncated.
            let short = min(width, height), long = max(width, height)
            let newLong = Int(Double(edge * long) / Double(short))
            return width <= height ? (newLong, edge) : (edge, newLong)
        }
        return (s.height ?? height, s.width ?? width)
    }

    // MARK: Preprocessing

    /// LLaVA's `expand2square`: the image centred on a square of the mean colour (`int(m * 255)`).
    public func padToSquare(_ image: RGBImage) -> RGBImage {
        if image.width == image.height { return image }
        let side = max(image.width, image.height)
        let mean = effectiveMean
        let color = (UInt8(clamping: Int(mean[0] * 255)), UInt8(clamping: Int(mean[1] * 255)), UInt8(clamping: Int(mean[2] * 255)))
        let background = RGBImage(width: side, height: side, filledWith: color)
        return image.drawn(onto: background, x: (side - image.width) / 2, y: (side - image.height) / 2)
    }

    /// What `preprocess` may allocate for one image. A decoded image is at most 64M pixels
    /// (192 MB); only an aspect ratio that resizing blows up (1 000 000×1 to a 96-pixel short
    /// side is 96 000 000×96) goes past this.
    public static let maxPreprocessingBytes = 1_000_000_000

    /// Bytes `preprocess` allocates for a `width`×`height` image (the padded square, both resize
    /// passes and their filter taps, the Float32 output), and the size it resizes to.
    public func preprocessingBytes(width: Int, height: Int, padToSquare pad: Bool) -> (bytes: Double, resized: (height: Int, width: Int)) {
        var w = width, h = height, bytes = 0.0
        if pad && w != h {
            w = max(w, h); h = w
            bytes += 3 * Double(w) * Double(h)
        }
        if resizes {
            let target = resizedSize(width: w, height: h)
            let tw = max(1, target.width), th = max(1, target.height)
            bytes += resizeBytes(width: w, height: h, toWidth: tw, toHeight: th)
            w = tw; h = th
        }
        let crop = cropsCenter ? effectiveCropSize : ImageSize()
        bytes += 4 * 3 * Double(crop.height ?? h) * Double(crop.width ?? w)
        return (bytes, (h, w))
    }

    /// Bytes `RGBImage.resized` allocates from `width`×`height` to `toWidth`×`toHeight`.
    func resizeBytes(width w: Int, height h: Int, toWidth tw: Int, toHeight th: Int) -> Double {
        if (tw, th) == (w, h) { return 0 }
        // The larger of the two first-pass orders, then the output; taps as ResampleCoefficients sizes them.
        var bytes = 3 * max(Double(h) * Double(tw), Double(th) * Double(w)) + 3 * Double(tw) * Double(th)
        func taps(_ inSize: Int, _ outSize: Int) -> Double {
            let taps = (filter.support * max(Double(inSize) / Double(outSize), 1)).rounded(.up) * 2 + 1
            return Double(outSize) * (4 * taps + 16)
        }
        if filter != .nearest { bytes += taps(w, tw) + taps(h, th) }
        return bytes
    }

    /// Refuses an image whose preprocessing would allocate more than `maxPreprocessingBytes`, or
    /// more than the memory budget leaves.
    public func checkPreprocessingSize(width: Int, height: Int, padToSquare pad: Bool) throws {
        let (bytes, resized) = preprocessingBytes(width: width, height: height, padToSquare: pad)
        try requirePreprocessing(bytes, "image \(width)×\(height): preprocessing it (resized to \(resized.width)×\(resized.height))")
    }

    /// `bytes` of preprocessing for `what`: at most `maxPreprocessingBytes`, and within the memory budget.
    func requirePreprocessing(_ bytes: Double, _ what: String) throws {
        guard bytes <= Double(Self.maxPreprocessingBytes) else {
            throw PreprocessingError("\(what) would allocate \(MemoryBudget.describe(bytes)), "
                                     + "more than the \(MemoryBudget.describe(Double(Self.maxPreprocessingBytes))) allowed")
        }
        try MemoryBudget.require(bytes, for: what)
    }

    /// The model input for one image: `[3, H, W]` Float32, equal to transformers' `pixel_values[0]`.
    /// `padToSquare` is LLaVA's `image_aspect_ratio: pad`. What it would allocate is checked first.
    public func preprocess(_ image: RGBImage, padToSquare pad: Bool = false) throws -> Tensor {
        try checkPreprocessingSize(width: image.width, height: image.height, padToSquare: pad)
        var image = pad ? padToSquare(image) : image
        if resizes {
            let target = resizedSize(width: image.width, height: image.height)
            image = image.resized(width: max(1, target.width), height: max(1, target.height), filter: filter)
        }

        // Center crop as transformers' numpy center_crop: offsets floor((size - crop) / 2); a crop
        // larger than the image pads with zeros, centred with ceil((crop - size) / 2).
        var outH = image.height, outW = image.width, offY = 0, offX = 0
        if cropsCenter, let ch = effectiveCropSize.height, let cw = effectiveCropSize.width {
            func offset(_ size: Int, _ crop: Int) -> Int {
                crop <= size ? (size - crop) / 2 : -((crop - size + 1) / 2)
            }
            offY = offset(image.height, ch); offX = offset(image.width, cw)
            outH = ch; outW = cw
        }

        let rescale = doRescale ?? true, factor = rescaleFactor ?? 1.0 / 255.0
        let normalize = doNormalize ?? true
        let mean = effectiveMean.map { Float($0) }, std = effectiveStd.map { Float($0) }
        // The value of every byte, per channel: the pipeline is elementwise after the crop.
        var table = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 {
            for v in 0..<256 {
                var x = rescale ? Float(Double(v) * factor) : Float(v)
                if normalize { x = (x - mean[c]) / std[c] }
                table[c * 256 + v] = x
            }
        }

        let out = Tensor(shape: [3, outH, outW], zeroed: false)
        let plane = outH * outW
        let srcW = image.width, srcH = image.height
        image.pixels.withUnsafeBufferPointer { src in
            table.withUnsafeBufferPointer { lut in
                for c in 0..<3 {
                    let dst = out.data + c * plane
                    let zero = lut[c * 256]
                    for y in 0..<outH {
                        let sy = y + offY
                        for x in 0..<outW {
                            let sx = x + offX
                            let inside = sy >= 0 && sy < srcH && sx >= 0 && sx < srcW
                            dst[y * outW + x] = inside ? lut[c * 256 + Int(src[(sy * srcW + sx) * 3 + c])] : zero
                        }
                    }
                }
            }
        }
        return out
    }
}

/// An image preprocessing refuses (one line: the image size and why).
public struct PreprocessingError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

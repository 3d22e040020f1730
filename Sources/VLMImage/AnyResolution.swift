import Foundation
import VLMFormats
import VLMTensor

/// LLaVA-NeXT's (LLaVA-1.6) "anyres" layout of one image: the candidate resolution
/// (`image_grid_pinpoints`) it is fitted into, the grid of tiles that makes, and how many
/// embedding rows the model builds from it. Sizes are (height, width), as in transformers.
public struct AnyResolutionLayout: Sendable, Equatable {
    /// Candidate resolutions, `[height, width]` each.
    public var gridPinpoints: [[Int]]
    /// One tile's side: the vision tower's input (`vision_config.image_size`, 336 in LLaVA-1.6).
    public var tileSize: Int
    /// The vision tower's patch side (`vision_config.patch_size`, 14 in LLaVA-1.6).
    public var patchSize: Int

    /// `LlavaNextImageProcessor`'s default pinpoints, those of every LLaVA-1.6 checkpoint.
    public static let llavaNextPinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    /// More candidates than any released model lists (they have 5 to 36).
    public static let maxPinpoints = 256
    /// More tiles than any released model cuts (LLaVA-1.6 at most 4, anyres_max_9 grids 36): each
    /// is a vision-tower pass, so a config asking for thousands is corrupt, not ambitious.
    public static let maxTiles = 1024

    public init(gridPinpoints: [[Int]] = Self.llavaNextPinpoints, tileSize: Int = 336, patchSize: Int = 14) {
        self.gridPinpoints = gridPinpoints; self.tileSize = tileSize; self.patchSize = patchSize
    }

    /// `image_grid_pinpoints` must be 1...maxPinpoints pairs of sides in 1...ImageProcessor.maxSide.
    /// For a model, `tile` (the tower's image size and the key it is read from) must divide every
    /// side: the model cuts best / image_size tiles down and across, the processor ceil(best /
    /// tile), and they agree only on multiples.
    public static func checkPinpoints(_ pinpoints: [[Int]], key: String = "image_grid_pinpoints",
                                      tile: (size: Int, key: String)? = nil) throws {
        guard (1...maxPinpoints).contains(pinpoints.count) else {
            throw ConfigValueError(key, "needs 1…\(maxPinpoints) [height, width] pairs, has \(pinpoints.count)")
        }
        for (i, pair) in pinpoints.enumerated() {
            guard pair.count == 2 else { throw ConfigValueError("\(key)[\(i)]", "needs [height, width], has \(pair.count) values") }
            for side in pair { try ConfigValueError.check("\(key)[\(i)]", side, in: 1...ImageProcessor.maxSide) }
            if let tile, pair.contains(where: { $0 % tile.size != 0 }) {
                throw ConfigValueError("\(key)[\(i)]", "\(pair) is not a multiple of \(tile.key) \(tile.size)")
            }
        }
    }

    /// transformers' `select_best_resolution`: the candidate that keeps the most of the image's
    /// pixels once it is scaled to fit (at most its own count: upscaling gains nothing), ties
    /// broken by the least area left empty. The first such candidate in list order wins.
    public static func bestResolution(height: Int, width: Int, candidates: [[Int]]) -> (height: Int, width: Int) {
        precondition(!candidates.isEmpty && height > 0 && width > 0)
        var best = (height: candidates[0][0], width: candidates[0][1])
        var mostKept = 0, leastWasted = Int.max
        for candidate in candidates {
            let (h, w) = (candidate[0], candidate[1])
            // Same float operations as the Python: true division, then int() truncation.
            let scale = min(Double(w) / Double(width), Double(h) / Double(height))
            let kept = min(Int(Double(width) * scale) * Int(Double(height) * scale), width * height)
            let wasted = w * h - kept
            if kept > mostKept || (kept == mostKept && wasted < leastWasted) {
                mostKept = kept; leastWasted = wasted; best = (h, w)
            }
        }
        return best
    }

    public func bestResolution(height: Int, width: Int) -> (height: Int, width: Int) {
        Self.bestResolution(height: height, width: width, candidates: gridPinpoints)
    }

    /// transformers' `get_patch_output_size`: the image scaled to fit `target` keeping its aspect
    /// ratio, the side that does not fill the target rounded up (and capped by it).
    public static func fittedSize(height: Int, width: Int, into target: (height: Int, width: Int)) -> (height: Int, width: Int) {
        let scaleWidth = Double(target.width) / Double(width), scaleHeight = Double(target.height) / Double(height)
        if scaleWidth < scaleHeight {
            return (min(Int((Double(height) * scaleWidth).rounded(.up)), target.height), target.width)
        }
        return (target.height, min(Int((Double(width) * scaleHeight).rounded(.up)), target.width))
    }

    /// `get_anyres_image_grid_shape`: tiles down and across for an image of this size.
    public func gridShape(height: Int, width: Int) -> (rows: Int, columns: Int) {
        let best = bestResolution(height: height, width: width)
        return (best.height / tileSize, best.width / tileSize)
    }

    /// The tiles' patch features laid out as one grid, then `unpad_image`: the rows (or columns)
    /// that only saw the black padding around the fitted image are dropped.
    public func unpaddedFeatureSize(height: Int, width: Int) -> (height: Int, width: Int) {
        let side = tileSize / patchSize
        let grid = gridShape(height: height, width: width)
        var featureHeight = grid.rows * side, featureWidth = grid.columns * side
        // Python compares the two aspect ratios as floats and rounds to 7 decimals before int().
        if Double(width) / Double(height) > Double(featureWidth) / Double(featureHeight) {
            let scaledHeight = Int(Self.roundedTo7Decimals(Double(height) * (Double(featureWidth) / Double(width))))
            featureHeight -= 2 * Self.floorHalf(featureHeight - scaledHeight)
        } else {
            let scaledWidth = Int(Self.roundedTo7Decimals(Double(width) * (Double(featureHeight) / Double(height))))
            featureWidth -= 2 * Self.floorHalf(featureWidth - scaledWidth)
        }
        return (featureHeight, featureWidth)
    }

    /// Embedding rows LLaVA-NeXT builds for one image (`pack_image_features`): the whole-image tile
    /// (its CLS row dropped), then the unpadded grid row by row, each row followed by
    /// `image_newline` when the model has one. With llava-hf's processor settings
    /// (`vision_feature_select_strategy` "default", `num_additional_image_tokens` 1) this is also
    /// `LlavaNextProcessor`'s count of `<image>` placeholders.
    public func imageFeatureCount(height: Int, width: Int, newline: Bool = true) -> Int {
        let side = tileSize / patchSize
        let unpadded = unpaddedFeatureSize(height: height, width: width)
        return side * side + unpadded.height * (unpadded.width + (newline ? 1 : 0))
    }

    /// Python's `int(round(x, 7))` for the non-negative sizes here: round half to even at the
    /// seventh decimal, so 23.99999999 counts as 24.
    static func roundedTo7Decimals(_ x: Double) -> Double { (x * 1e7).rounded(.toNearestOrEven) / 1e7 }

    /// Python's `n // 2`.
    static func floorHalf(_ n: Int) -> Int { n >= 0 ? n / 2 : -((-n + 1) / 2) }
}

/// One image as `LlavaNextImageProcessor` hands it to the model.
public struct AnyResolutionImage: Sendable {
    /// `[1 + tiles, 3, H, W]`: the whole image squeezed to one tile, then the tiles of the fitted
    /// and padded image, row by row (transformers' `pixel_values[0]`).
    public let pixelValues: Tensor
    /// The image's size before preprocessing (transformers' `image_sizes[0]`): what the token
    /// count and the model's unpadding are computed from.
    public let originalSize: (height: Int, width: Int)
    /// The candidate resolution the image was fitted into.
    public let bestResolution: (height: Int, width: Int)

    public var tileCount: Int { pixelValues.shape[0] - 1 }
}

extension ImageProcessor {
    /// `image_grid_pinpoints`, or `LlavaNextImageProcessor`'s default.
    public var effectiveGridPinpoints: [[Int]] { imageGridPinpoints ?? AnyResolutionLayout.llavaNextPinpoints }

    /// The side the whole image is squeezed to (`size` as height and width, or shortest_edge
    /// squared) and the tile side (`crop_size.height`), as `LlavaNextImageProcessor._preprocess`.
    var anyResolutionSizes: (base: (height: Int, width: Int), tile: Int) {
        let size = effectiveSize
        // `validate` guarantees shortest_edge or height and width; the last fallback is the class default.
        let edge = size.shortestEdge ?? size.height ?? size.width ?? 224
        let base = size.height != nil && size.width != nil ? (size.height!, size.width!) : (edge, edge)
        return (base, effectiveCropSize.height ?? size.height ?? edge)
    }

    /// A `LlavaNextImageProcessor` config: images go through `preprocessAnyResolution`.
    public var isAnyResolution: Bool { imageProcessorType?.hasPrefix("LlavaNext") ?? false }

    /// Bytes `preprocessAnyResolution` allocates for a `width`×`height` image.
    public func anyResolutionBytes(width: Int, height: Int, gridPinpoints: [[Int]]? = nil) -> Double {
        let best = AnyResolutionLayout.bestResolution(height: height, width: width, candidates: gridPinpoints ?? effectiveGridPinpoints)
        let fitted = AnyResolutionLayout.fittedSize(height: height, width: width, into: best)
        let (base, tile) = anyResolutionSizes
        let tiles = Double((best.height + tile - 1) / tile) * Double((best.width + tile - 1) / tile)
        let cropped = cropsCenter ? Double(effectiveCropSize.height ?? tile) * Double(effectiveCropSize.width ?? tile) : Double(tile * tile)
        // The fitted image, its padded canvas and the tiles cut from it; the base resize; one
        // tile's preprocessing at a time; the stacked Float32 output.
        return resizeBytes(width: width, height: height, toWidth: fitted.width, toHeight: fitted.height)
            + 2 * 3 * Double(best.height) * Double(best.width)
            + resizeBytes(width: width, height: height, toWidth: base.width, toHeight: base.height)
            + preprocessingBytes(width: max(tile, base.width), height: max(tile, base.height), padToSquare: false).bytes
            + 4 * 3 * (tiles + 1) * cropped
    }

    /// `LlavaNextImageProcessor` on one image: the candidate resolution that keeps most of it is
    /// chosen, the image is resized to fit it (aspect ratio kept) and centred on black, cut into
    /// tiles of `crop_size`; the whole image resized to the base size goes first. Every piece then
    /// takes the usual resize / center crop / rescale / normalize. `gridPinpoints` overrides the
    /// config's (e.g. with the model config's `image_grid_pinpoints`).
    public func preprocessAnyResolution(_ image: RGBImage, gridPinpoints: [[Int]]? = nil) throws -> AnyResolutionImage {
        let pinpoints = gridPinpoints ?? effectiveGridPinpoints
        do { try AnyResolutionLayout.checkPinpoints(pinpoints) } catch let e as ConfigValueError { throw PreprocessingError(e.description) }
        let bytes = anyResolutionBytes(width: image.width, height: image.height, gridPinpoints: pinpoints)
        try requirePreprocessing(bytes, "image \(image.width)×\(image.height): its any-resolution tiles")
        let best = AnyResolutionLayout.bestResolution(height: image.height, width: image.width, candidates: pinpoints)
        let (base, tile) = anyResolutionSizes
        let tiles = ((best.height + tile - 1) / tile) * ((best.width + tile - 1) / tile)
        guard tiles <= AnyResolutionLayout.maxTiles else {
            throw PreprocessingError("image \(image.width)×\(image.height): fitting it to \(best.width)×\(best.height) in tiles of "
                                     + "\(tile) makes \(tiles) tiles, more than the \(AnyResolutionLayout.maxTiles) allowed")
        }
        let fitted = AnyResolutionLayout.fittedSize(height: image.height, width: image.width, into: best)
        // These two resizes happen whatever do_resize says, as in transformers.
        let resized = image.resized(width: fitted.width, height: fitted.height, filter: filter)
        let black = RGBImage(width: best.width, height: best.height, filledWith: (0, 0, 0))
        // Centred; the odd pixel of padding goes after (divmod in transformers).
        let canvas = resized.drawn(onto: black, x: (best.width - fitted.width) / 2, y: (best.height - fitted.height) / 2)

        var pieces = [image.resized(width: base.width, height: base.height, filter: filter)]
        for y in stride(from: 0, to: best.height, by: tile) {
            for x in stride(from: 0, to: best.width, by: tile) {
                pieces.append(canvas.cropped(x: x, y: y, width: min(tile, best.width - x), height: min(tile, best.height - y)))
            }
        }

        var stacked: Tensor?
        for (i, piece) in pieces.enumerated() {
            let values = try preprocess(piece)
            if stacked == nil { stacked = Tensor(shape: [pieces.count] + values.shape, zeroed: false) }
            guard values.shape == Array(stacked!.shape.dropFirst()) else {
                throw PreprocessingError("image \(image.width)×\(image.height): its tiles preprocess to different shapes "
                                         + "\(stacked!.shape.dropFirst()) and \(values.shape); the config needs do_center_crop")
            }
            (stacked!.data + i * values.count).update(from: values.data, count: values.count)
        }
        return AnyResolutionImage(pixelValues: stacked!, originalSize: (image.height, image.width), bestResolution: best)
    }
}

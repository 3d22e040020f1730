import Foundation
import VLMAutodiff
import VLMFormats
import VLMImage
import VLMTensor

// LLaVA-NeXT (LLaVA-1.6, `LlavaNextForConditionalGeneration`): LLaVA's tower, projector and
// decoder, fed any-resolution images. Each image is the whole picture squeezed to one tile plus
// the tiles of the picture fitted into the best `image_grid_pinpoints` resolution; every tile
// goes through the tower and the projector, then `pack_image_features` lays the tiles' patch rows
// out as one grid, drops the rows or columns that only saw padding (`unpad_image`), closes each
// grid row with the learned `image_newline`, and puts the whole-picture tile's rows first.

/// config.json of `LlavaNextForConditionalGeneration` (`model_type` `llava_next`): LLaVA's fields
/// plus `image_grid_pinpoints`.
public struct LlavaNextConfiguration: Codable, Sendable {
    public var llava: LlavaConfiguration
    /// Candidate resolutions, `[height, width]` each, multiples of the tower's image size.
    public var imageGridPinpoints: [[Int]]

    enum CodingKeys: String, CodingKey { case imageGridPinpoints = "image_grid_pinpoints" }

    public init(llava: LlavaConfiguration, imageGridPinpoints: [[Int]]) {
        self.llava = llava; self.imageGridPinpoints = imageGridPinpoints
    }

    public init(from decoder: Decoder) throws {
        llava = try LlavaConfiguration(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        imageGridPinpoints = try c.decodeIfPresent([[Int]].self, forKey: .imageGridPinpoints) ?? AnyResolutionLayout.llavaNextPinpoints
        try AnyResolutionLayout.checkPinpoints(imageGridPinpoints, tile: (llava.visionConfig.imageSize, "vision_config.image_size"))
    }

    public func encode(to encoder: Encoder) throws {
        try llava.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(imageGridPinpoints, forKey: .imageGridPinpoints)
    }
}

extension LlavaVisionConfiguration {
    public var imageSize: Int {
        switch self { case .clip(let c): return c.imageSize; case .siglip(let s): return s.imageSize }
    }

    public var patchSize: Int {
        switch self { case .clip(let c): return c.patchSize; case .siglip(let s): return s.patchSize }
    }
}

/// What LLaVA-NeXT adds to a LLaVA model: the tile layout and the row separator.
public final class LlavaNextParts: @unchecked Sendable {
    public let layout: AnyResolutionLayout
    /// `image_newline` `[1, text hidden]`: appended after each row of the unpadded grid. A leaf, so
    /// gradients reach it through the same pack as inference.
    public let imageNewline: Variable

    init(layout: AnyResolutionLayout, imageNewline: Variable) {
        self.layout = layout; self.imageNewline = imageNewline
    }
}

extension LlavaModel {
    /// Loads a transformers LLaVA-NeXT folder (llava-hf hub or transformers 5 layout).
    static func loadNext(folder: String, file: ModelConfigFile) throws -> LlavaModel {
        let config = try TextModel.decodeConfig(LlavaNextConfiguration.self, from: file.data, path: file.path, expected: "LLaVA-NeXT config")
        let base = config.llava
        guard LlamaConfiguration.supportedTypes.contains(base.textConfig.modelType) else {
            throw FormatError(file.path, "unsupported text model_type '\(base.textConfig.modelType)'")
        }
        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlavaWeights.sanitizeHF)
        let (vision, projector) = try visionParts(base, weights: weights, visionWeights: nil)
        let hidden = base.textConfig.hiddenSize
        let newline = Variable(Tensor(reshaping: try weights.floats("image_newline", shape: [hidden]), to: [1, hidden]))
        let decoder = try LlamaModel(config: base.textConfig, weights: weights.scoped("language_model."), ropePairing: .halves)
        try weights.finish()

        let layout = AnyResolutionLayout(gridPinpoints: config.imageGridPinpoints, tileSize: base.visionConfig.imageSize,
                                         patchSize: base.visionConfig.patchSize)
        let model = LlavaModel(config: base, vision: vision, projector: projector, decoder: decoder,
                               imageProcessor: try ImageProcessor.load(folder: folder))
        // pack_image_features views each tile's rows as a side×side grid: a tower whose selected
        // rows are not exactly that (a class token kept by "full") cannot be packed.
        let side = layout.tileSize / layout.patchSize
        guard model.featureCount == side * side else {
            throw FormatError(file.path, "vision_feature_select_strategy '\(base.visionFeatureSelectStrategy.rawValue)' leaves \(model.featureCount) "
                              + "rows per tile, not the \(side)×\(side) patch grid LLaVA-NeXT packs (a class-token tower needs 'default')")
        }
        model.anyResolution = LlavaNextParts(layout: layout, imageNewline: newline)
        return model
    }

    /// The embedding rows one `height`×`width` image takes: `featureCount` for LLaVA, the base tile
    /// plus the unpadded grid and its newlines for LLaVA-NeXT (what `LlavaNextProcessor` counts).
    public func imageTokenCount(height: Int, width: Int) -> Int {
        guard let next = anyResolution else { return featureCount }
        return next.layout.imageFeatureCount(height: height, width: width, newline: true)
    }

    /// The model input of one image: `[3, H, W]` for LLaVA, `[1 + tiles, 3, H, W]` (base, then
    /// the tiles row by row) for LLaVA-NeXT.
    public func modelInput(_ image: RGBImage) throws -> Tensor {
        guard let next = anyResolution else { return try preprocess(image) }
        return try imageProcessor.preprocessAnyResolution(image, gridPinpoints: next.layout.gridPinpoints).pixelValues
    }

    /// The tiles of a model input, `[3, H, W]` each (one for LLaVA).
    public func tiles(_ pixels: Tensor) throws -> [Tensor] {
        guard pixels.shape.count == 4 else { return [pixels] }
        let n = pixels.shape[0], plane = pixels.count / max(n, 1), shape = Array(pixels.shape.dropFirst())
        return (0..<n).map { i in
            let t = Tensor(shape: shape, zeroed: false)
            t.data.update(from: pixels.data + i * plane, count: plane)
            return t
        }
    }

    /// The projector's input for a model input: each tile's selected features stacked,
    /// `[tiles·featureCount, hidden·layers]`.
    public func tileFeatures(pixels: Tensor) throws -> Tensor {
        let blocks = try tiles(pixels).map { try visionFeatures(pixels: $0) }
        if blocks.count == 1 { return blocks[0] }
        let out = Tensor(shape: [blocks.reduce(0) { $0 + $1.shape[0] }, blocks[0].shape[1]], zeroed: false)
        var offset = 0
        for b in blocks { (out.data + offset).update(from: b.data, count: b.count); offset += b.count }
        return out
    }

    /// What one image contributes to the input embeddings, `[imageTokenCount, text hidden]`, for
    /// an image of `size` (its size before preprocessing; needed by LLaVA-NeXT).
    public func imageFeatures(pixels: Tensor, size: (height: Int, width: Int)) throws -> Tensor {
        guard anyResolution != nil else { return try imageFeatures(pixels: pixels) }
        let tape = Tape(recording: false)
        let projected = projector.forward(Variable(try tileFeatures(pixels: pixels)), tape: tape)
        return try packImageFeatures(projected, sizes: [size], tape: tape).value
    }

    /// transformers' `pack_image_features` over projected tile rows of several images (each image
    /// `(1 + tiles)·featureCount` rows, images in order), as one gather on `tape`: the result is
    /// each image's rows in prompt order, images stacked. LLaVA's projected rows pass unchanged.
    public func packImageFeatures(_ projected: Variable, sizes: [(height: Int, width: Int)], tape: Tape) throws -> Variable {
        guard let next = anyResolution else { return projected }
        let d = projected.columns, rows = projected.rows
        var indices: [Int] = [], offset = 0
        for size in sizes {
            let (local, used) = try packIndices(height: size.height, width: size.width, newlineRow: rows - offset)
            guard offset + used <= rows else {
                throw ModelError("image \(size.width)×\(size.height): \(rows - offset) projected rows left, its tiles need \(used)")
            }
            indices += local.map { $0 + offset }
            offset += used
        }
        guard offset == rows else { throw ModelError("\(rows) projected rows for images that take \(offset)") }
        // The newline becomes row `rows` of one table the gather reads (its gradient accumulates there).
        var table = tape.scatterRows(Variable(Tensor(shape: [rows + 1, d], zeroed: true)), positions: Array(0..<rows), source: projected)
        table = tape.scatterRows(table, positions: [rows], source: next.imageNewline)
        return tape.gather(table, indices: indices)
    }

    /// The rows `pack_image_features` takes, in order, for one image whose tile rows start at 0:
    /// the base tile, then the grid row by row (tile rows and columns interleaved as
    /// `view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3)` lays them out), cropped by
    /// `unpad_image`, each row closed by `newlineRow`. Also returns how many tile rows the image has.
    func packIndices(height: Int, width: Int, newlineRow: Int) throws -> (indices: [Int], tileRows: Int) {
        guard let layout = anyResolution?.layout else { return (Array(0..<featureCount), featureCount) }
        let side = layout.tileSize / layout.patchSize, perTile = side * side
        let grid = layout.gridShape(height: height, width: width)
        let fullHeight = grid.rows * side, fullWidth = grid.columns * side
        let kept = layout.unpaddedFeatureSize(height: height, width: width)
        guard kept.height > 0, kept.width > 0, kept.height <= fullHeight, kept.width <= fullWidth else {
            throw ModelError("image \(width)×\(height): unpadding its \(fullHeight)×\(fullWidth) feature grid leaves \(kept.height)×\(kept.width)")
        }
        let top = (fullHeight - kept.height) / 2, left = (fullWidth - kept.width) / 2
        var indices = Array(0..<perTile)
        indices.reserveCapacity(perTile + kept.height * (kept.width + 1))
        for y in top..<(top + kept.height) {
            for x in left..<(left + kept.width) {
                let tile = (y / side) * grid.columns + x / side
                indices.append(perTile * (1 + tile) + (y % side) * side + x % side)
            }
            indices.append(newlineRow)
        }
        return (indices, perTile * (1 + grid.rows * grid.columns))
    }
}

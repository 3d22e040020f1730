import Foundation
import VLMFormats
import VLMImage
import VLMTensor

// LLaVA-1.5 as llama.cpp, Ollama and LM Studio ship it: a text GGUF (the Llama decoder, tokenizer
// and chat template) plus an "mmproj" GGUF holding the CLIP vision tower and the mlp2x_gelu
// projector under llama.cpp's `clip.*` metadata and `v.*` / `mm.*` tensor names. Both map onto
// the ordinary LLaVA composition: the tower is the CLIP ViT, the projector is
// `MultiModalProjector`, the decoder is the text GGUF loaded like any text model.
//
// Which hidden state feeds the projector: llama.cpp's legacy converter drops the encoder layers
// after LLaVA's feature layer (the last one for -2) and records no `clip.vision.feature_layer`,
// so the file's last stored layer is LLaVA's feature layer; newer conversions record the
// feature layers as non-negative hidden-state indices (0 = the embeddings) and store the layers
// up to the deepest. (llama.cpp's own graph runs one stored layer fewer in the legacy case.)

/// The `clip.*` metadata of an mmproj GGUF, key by key.
public struct MMProjConfiguration: Sendable, Equatable {
    public var projectorType: String                 // clip.projector_type
    public var hasVisionEncoder: Bool                // clip.has_vision_encoder
    public var hasLlavaProjector: Bool               // clip.has_llava_projector
    public var imageSize: Int                        // clip.vision.image_size
    public var patchSize: Int                        // clip.vision.patch_size
    public var embeddingLength: Int                  // clip.vision.embedding_length
    public var feedForwardLength: Int                // clip.vision.feed_forward_length
    public var blockCount: Int                       // clip.vision.block_count
    public var headCount: Int                        // clip.vision.attention.head_count
    public var layerNormEpsilon: Float               // clip.vision.attention.layer_norm_epsilon
    public var imageMean: [Double]                   // clip.vision.image_mean
    public var imageStd: [Double]                    // clip.vision.image_std
    public var featureLayers: [Int]?                 // clip.vision.feature_layer
    public var useGelu: Bool                         // clip.use_gelu
    public var useSilu: Bool                         // clip.use_silu
    public var imageAspectRatio: String?             // clip.vision.image_aspect_ratio
    public var imageCropResolution: Int?             // clip.vision.image_crop_resolution
    public var imageGridPinpoints: [[Int]]?          // clip.vision.image_grid_pinpoints (LLaVA-1.6), as [height, width] pairs
    public var mmPatchMergeType: String?             // clip.vision.mm_patch_merge_type (LLaVA-1.6)

    /// The converter's defaults (OpenAI CLIP's), for files without image_mean / image_std.
    static let clipMean = [0.48145466, 0.4578275, 0.40821073], clipStd = [0.26862954, 0.26130258, 0.27577711]

    /// Reads and range-checks every key before anything is sized from it; the error names the key.
    public init(gguf: GGUFFile) throws {
        let m = gguf.metadata, file = gguf.path
        guard m["general.architecture"]?.string == "clip" else {
            throw FormatError(file, "not an mmproj file (general.architecture is '\(m["general.architecture"]?.string ?? "missing")', expected 'clip')")
        }
        func int(_ key: String, in range: ClosedRange<Int>) throws -> Int {
            guard let value = m[key] else { throw FormatError(file, "\(key) missing") }
            guard let v = value.int else { throw FormatError(file, "\(key) is not an integer") }
            do { try ConfigValueError.check(key, v, in: range) } catch let e as ConfigValueError { throw FormatError(file, e.description) }
            return v
        }
        func bool(_ key: String) -> Bool { m[key]?.bool ?? false }
        func floats(_ key: String, default value: [Double]) throws -> [Double] {
            guard let raw = m[key] else { return value }
            let v = raw.array?.compactMap(\.double) ?? []
            guard raw.array?.count == 3, v.count == 3, v.allSatisfy(\.isFinite) else {
                throw FormatError(file, "\(key) must be three finite numbers")
            }
            return v
        }
        projectorType = m["clip.projector_type"]?.string ?? "mlp"
        hasVisionEncoder = m["clip.has_vision_encoder"]?.bool ?? true
        hasLlavaProjector = bool("clip.has_llava_projector")
        imageSize = try int("clip.vision.image_size", in: 1...VisionShape.maxImageSize)
        patchSize = try int("clip.vision.patch_size", in: 1...imageSize)
        embeddingLength = try int("clip.vision.embedding_length", in: 1...VisionShape.maxHidden)
        feedForwardLength = try int("clip.vision.feed_forward_length", in: 1...VisionShape.maxIntermediate)
        blockCount = try int("clip.vision.block_count", in: 1...VisionShape.maxLayers)
        headCount = try int("clip.vision.attention.head_count", in: 1...VisionShape.maxHeads)
        guard embeddingLength % headCount == 0 else {
            throw FormatError(file, "clip.vision.embedding_length \(embeddingLength) is not a multiple of clip.vision.attention.head_count \(headCount)")
        }
        let grid = imageSize / patchSize
        guard grid * grid <= VisionShape.maxPatches else {
            throw FormatError(file, "clip.vision.image_size \(imageSize) with patch_size \(patchSize) makes \(grid * grid) patches (at most \(VisionShape.maxPatches))")
        }
        let epsKey = "clip.vision.attention.layer_norm_epsilon"
        guard let eps = m[epsKey] == nil ? 1e-5 : m[epsKey]?.double, eps.isFinite, eps > 0, eps < 1 else {
            throw FormatError(file, "clip.vision.attention.layer_norm_epsilon must be a finite number in (0, 1)")
        }
        layerNormEpsilon = Float(eps)
        imageMean = try floats("clip.vision.image_mean", default: Self.clipMean)
        imageStd = try floats("clip.vision.image_std", default: Self.clipStd)
        guard imageStd.allSatisfy({ $0 > 0 }) else { throw FormatError(file, "clip.vision.image_std must be above 0") }
        if let raw = m["clip.vision.feature_layer"] {
            guard let items = raw.array, (1...16).contains(items.count) else {
                throw FormatError(file, "clip.vision.feature_layer must be a list of 1 to 16 layer indices")
            }
            var layers: [Int] = []
            for item in items {
                guard let v = item.int, (0...blockCount).contains(v) else {
                    throw FormatError(file, "clip.vision.feature_layer holds \(item.int.map(String.init) ?? "a non-integer"), outside the \(blockCount + 1) hidden states (0…\(blockCount)) the file's layers make")
                }
                layers.append(v)
            }
            featureLayers = layers
        }
        useGelu = bool("clip.use_gelu")
        useSilu = bool("clip.use_silu")
        guard !(useGelu && useSilu) else { throw FormatError(file, "clip.use_gelu and clip.use_silu are both set") }
        imageAspectRatio = m["clip.vision.image_aspect_ratio"]?.string
        if m["clip.vision.image_crop_resolution"] != nil {
            imageCropResolution = try int("clip.vision.image_crop_resolution", in: 1...VisionShape.maxImageSize)
        }
        if let raw = m["clip.vision.image_grid_pinpoints"] {
            guard let items = raw.array, items.count <= 256 else { throw FormatError(file, "clip.vision.image_grid_pinpoints is not a short list of integers") }
            imageGridPinpoints = try Self.pinpointPairs(items.map(\.int), imageSize: imageSize, file: file)
        }
        mmPatchMergeType = m["clip.vision.mm_patch_merge_type"]?.string
    }

    /// LLaVA-1.6's candidate resolutions as `[height, width]` pairs (the converter flattens the
    /// config's list in order), checked; nil for an empty list (LLaVA-1.5).
    static func pinpointPairs(_ flat: [Int?], imageSize: Int, file: String) throws -> [[Int]]? {
        guard !flat.isEmpty else { return nil }
        let values = flat.compactMap { $0 }
        guard values.count == flat.count, values.count % 2 == 0 else {
            throw FormatError(file, "clip.vision.image_grid_pinpoints holds \(flat.count) values, not [height, width] integer pairs")
        }
        let pairs = stride(from: 0, to: values.count, by: 2).map { [values[$0], values[$0 + 1]] }
        do {
            try AnyResolutionLayout.checkPinpoints(pairs, key: "clip.vision.image_grid_pinpoints", tile: (imageSize, "clip.vision.image_size"))
        } catch let e as ConfigValueError {
            throw FormatError(file, e.description)
        }
        return pairs
    }

    /// The hidden states (transformers' numbering over the file's layers) the projector reads.
    public var projectorFeatureLayers: [Int] { featureLayers ?? [blockCount] }

    /// The tower's MLP activation: llama.cpp's rule (gelu, silu, else CLIP's quick_gelu).
    public var hiddenAct: Activation { useGelu ? .gelu : useSilu ? .silu : .quickGelu }

    /// The CLIP `vision_config` these keys describe.
    public var visionConfiguration: CLIPVisionConfiguration {
        CLIPVisionConfiguration(hiddenSize: embeddingLength, intermediateSize: feedForwardLength, numHiddenLayers: blockCount,
                                numAttentionHeads: headCount, numChannels: 3, imageSize: imageSize, patchSize: patchSize,
                                hiddenAct: hiddenAct, layerNormEps: layerNormEpsilon)
    }

    /// A tower without `v.class_embd` (SigLIP's shape: no class token or pre-norm, a patch bias)
    /// as llama.cpp runs it: its plain ViT over every patch, gelu being ggml's tanh approximation.
    public var siglipConfiguration: SiglipVisionConfiguration {
        SiglipVisionConfiguration(hiddenSize: embeddingLength, intermediateSize: feedForwardLength, numHiddenLayers: blockCount,
                                  numAttentionHeads: headCount, numChannels: 3, imageSize: imageSize, patchSize: patchSize,
                                  hiddenAct: useGelu ? .geluPytorchTanh : hiddenAct, layerNormEps: layerNormEpsilon)
    }

    /// CLIPImageProcessor as LLaVA-1.5 uses it: shortest edge to the image size (bicubic), center
    /// crop, rescale, normalize with the file's mean and std; LLaVA-1.6's LlavaNextImageProcessor
    /// treats each tile the same way.
    public var imageProcessor: ImageProcessor {
        let crop = imageCropResolution ?? imageSize
        return ImageProcessor(imageProcessorType: imageGridPinpoints != nil ? "LlavaNextImageProcessor" : "CLIPImageProcessor",
                              doResize: true, size: ImageSize(shortestEdge: imageSize),
                              resample: 3, doCenterCrop: true, cropSize: ImageSize(height: crop, width: crop), doRescale: true,
                              rescaleFactor: 1.0 / 255.0, doNormalize: true, imageMean: imageMean, imageStd: imageStd,
                              doConvertRGB: true, imageGridPinpoints: imageGridPinpoints)
    }

    /// What vlmsh can run: a CLIP tower with LLaVA's mlp projector, at one image size (LLaVA-1.5) or
    /// any resolution with LLaVA-NeXT's unpadded packing (LLaVA-1.6).
    func checkSupported(file: String) throws {
        let anyResolution = imageGridPinpoints != nil
        if anyResolution != (mmPatchMergeType == "spatial_unpad") {
            throw FormatError(file, anyResolution
                ? "clip.vision.mm_patch_merge_type '\(mmPatchMergeType ?? "missing")' with grid pinpoints: only LLaVA-1.6's spatial_unpad is supported"
                : "clip.vision.mm_patch_merge_type spatial_unpad without clip.vision.image_grid_pinpoints")
        }
        guard hasVisionEncoder else { throw FormatError(file, "clip.has_vision_encoder is false: the file holds no image encoder") }
        guard projectorType == "mlp" else {
            throw FormatError(file, "unsupported clip.projector_type '\(projectorType)' (supported: mlp, LLaVA-1.5's)")
        }
        guard hasLlavaProjector else { throw FormatError(file, "clip.has_llava_projector is false: the file holds no LLaVA projector") }
    }
}

public enum MMProjWeights {
    static let tower = "vision_tower.vision_model."
    /// LLaVA-1.6's row separator: the legacy converter keeps llava_surgery_v2's name, newer
    /// converters write it under `v.`.
    static let imageNewlineNames = ["model.image_newline", "v.image_newline"]
    static let projector = [("mm.0.", "linear_1."), ("mm.2.", "linear_2.")]
    static let top = [("v.class_embd", "embeddings.class_embedding"), ("v.patch_embd.weight", "embeddings.patch_embedding.weight"),
                      ("v.patch_embd.bias", "embeddings.patch_embedding.bias"),
                      ("v.position_embd.weight", "embeddings.position_embedding.weight"),
                      ("v.pre_ln.weight", "pre_layrnorm.weight"), ("v.pre_ln.bias", "pre_layrnorm.bias"),
                      ("v.post_ln.weight", "post_layernorm.weight"), ("v.post_ln.bias", "post_layernorm.bias")]
    static func block(legacyFFN: Bool) -> [(String, String)] {
        [("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
         ("attn_out", "self_attn.out_proj"), ("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
         ("ffn_down", legacyFFN ? "mlp.fc1" : "mlp.fc2"), ("ffn_up", legacyFFN ? "mlp.fc2" : "mlp.fc1")]
    }

    /// llama.cpp's mmproj names → the names the LLaVA loader takes (`vision_tower.vision_model.*`,
    /// `multi_modal_projector.linear_{1,2}.*`); anything else keeps its name, so strict loading
    /// reports it. `legacyFFN`: the legacy converter writes CLIP's fc1 as `ffn_down` and fc2 as
    /// `ffn_up` (llama.cpp tells them apart by shape, as `legacyFFN(in:)` does).
    public static func sanitize(_ name: String, legacyFFN: Bool) -> String? {
        for (from, to) in projector where name.hasPrefix(from) { return "multi_modal_projector." + to + name.dropFirst(from.count) }
        if let entry = top.first(where: { $0.0 == name }) { return tower + entry.1 }
        let parts = name.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "v", parts[1] == "blk", let layer = Int(parts[2]) else { return name }
        let pieces = parts[3].split(separator: ".", maxSplits: 1).map(String.init)
        guard pieces.count == 2, let entry = block(legacyFFN: legacyFFN).first(where: { $0.0 == pieces[0] }) else { return name }
        return tower + "encoder.layers.\(layer).\(entry.1).\(pieces[1])"
    }

    /// The file's name for a loader name, scoped or not (`encoder.layers.1.mlp.fc1.weight` →
    /// `v.blk.1.ffn_down.weight`), so messages name what the user can find in the file.
    public static func fileName(_ canonical: String, legacyFFN: Bool) -> String? {
        var n = canonical
        for prefix in ["vision_tower.", "vision_model.", "multi_modal_projector."] where n.hasPrefix(prefix) { n = String(n.dropFirst(prefix.count)) }
        for (file, ours) in projector where n.hasPrefix(ours) { return file + n.dropFirst(ours.count) }
        if let entry = top.first(where: { $0.1 == n }) { return entry.0 }
        guard n.hasPrefix("encoder.layers.") else { return nil }
        let rest = n.dropFirst("encoder.layers.".count)
        guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]) else { return nil }
        let tail = String(rest[rest.index(after: dot)...])
        for (file, ours) in block(legacyFFN: legacyFFN) where tail.hasPrefix(ours + ".") {
            return "v.blk.\(layer).\(file)" + tail.dropFirst(ours.count)
        }
        return nil
    }

    /// A loading error about the mmproj with its weight names as the file spells them.
    static func inFileNames(_ error: FormatError, legacyFFN: Bool) -> FormatError {
        let parts = error.message.components(separatedBy: "'")
        guard parts.count >= 3, let name = fileName(parts[1], legacyFFN: legacyFFN) else { return error }
        return FormatError(error.file, ([parts[0], name] + parts[2...]).joined(separator: "'"))
    }

    /// Whether `ffn_down` is the layer that reads the hidden size (CLIP's fc1): the legacy naming.
    public static func legacyFFN(in gguf: GGUFFile, hiddenSize: Int) -> Bool {
        gguf.info("v.blk.0.ffn_down.weight")?.shape.last == hiddenSize
    }
}

extension LlavaModel {
    /// LLaVA-1.5 or 1.6 from llama.cpp's two files: `text` (a GGUF, or any text model path) supplies
    /// the decoder, tokenizer and chat template, `mmproj` the vision tower and projector (and, for
    /// 1.6, the grid pinpoints and `image_newline`). `select` overrides which rows of the tower
    /// are image tokens (vlmsh's own pairs record it: llama.cpp's keys cannot say `full` for CLIP).
    public static func load(text textPath: String, mmproj mmprojPath: String, select: VisionFeatureSelect? = nil) throws -> LlavaModel {
        let gguf = try GGUFFile(path: mmprojPath)
        let mm = try MMProjConfiguration(gguf: gguf)
        try mm.checkSupported(file: mmprojPath)
        let pinpoints = mm.imageGridPinpoints
        let text = try TextModel(path: textPath)
        let hidden = text.decoder.config.hiddenSize
        if let out = gguf.info("mm.2.weight")?.shape.first, out != hidden {
            throw FormatError(mmprojPath, "the projector outputs \(out) values per image token, the text model \((textPath as NSString).lastPathComponent) takes \(hidden): not a matching pair")
        }
        let weights = try WeightMap(file: mmprojPath, source: gguf)
        let legacy = MMProjWeights.legacyFFN(in: gguf, hiddenSize: mm.embeddingLength)
        weights.rename { MMProjWeights.sanitize($0, legacyFFN: legacy) }
        let imageID = text.tokenizer.tokenID("<image>")
        // Without a class embedding llama.cpp keeps every patch and its projector's gelu is the
        // tanh approximation: vlmsh computes the same (a file with one is read as LLaVA-1.5's CLIP).
        let siglip = pinpoints == nil && gguf.info("v.class_embd") == nil
        let config = LlavaConfiguration(
            visionConfig: siglip ? .siglip(mm.siglipConfiguration) : .clip(mm.visionConfiguration), textConfig: text.decoder.config,
            imageTokenIndex: imageID ?? -200, visionFeatureLayers: mm.projectorFeatureLayers,
            visionFeatureSelectStrategy: select ?? (siglip ? .full : .default), projectorHiddenAct: siglip ? .geluPytorchTanh : .gelu,
            multimodalProjectorBias: true, textModel: textPath)
        let processor = mm.imageProcessor
        try processor.validate(path: mmprojPath)
        let vision: VisionTower, projector: MultiModalProjector
        var newline: Tensor?
        do {
            (vision, projector) = try visionParts(config, weights: weights, visionWeights: nil)
            if pinpoints != nil {
                let name = MMProjWeights.imageNewlineNames.first(where: weights.contains) ?? MMProjWeights.imageNewlineNames[0]
                newline = try weights.floats(name, shape: [hidden])
            }
            try weights.finish()
        } catch let error as FormatError where error.file == mmprojPath {
            throw MMProjWeights.inFileNames(error, legacyFFN: legacy)
        }
        let model = LlavaModel(config: config, vision: vision, projector: projector, decoder: text.decoder,
                               imageProcessor: processor, padToSquare: mm.imageAspectRatio == "pad",
                               imageTokenInVocabulary: imageID != nil)
        model.textModel = text
        if let pinpoints, let newline {
            let layout = AnyResolutionLayout(gridPinpoints: pinpoints, tileSize: mm.imageSize, patchSize: mm.patchSize)
            model.anyResolution = LlavaNextParts(layout: layout, imageNewline: Variable(Tensor(reshaping: newline, to: [1, hidden])))
        }
        return model
    }
}

/// A text GGUF and its mmproj registered in the model store under one name: a folder holding
/// `mmproj.json`, `{"model": "TEXT.gguf", "mmproj": "MMPROJ.gguf"}` (paths relative to the folder,
/// absolute, or `~/`), and for a CLIP tower whose class token is an image token too (what
/// `export-gguf` writes for such a model) `"vision_feature_select_strategy": "full"`.
public struct GGUFPair: Codable, Sendable, Equatable {
    public var model: String
    public var mmproj: String
    public var visionFeatureSelectStrategy: VisionFeatureSelect?

    enum CodingKeys: String, CodingKey {
        case model, mmproj, visionFeatureSelectStrategy = "vision_feature_select_strategy"
    }

    public static let fileName = "mmproj.json"

    public init(model: String, mmproj: String, visionFeatureSelectStrategy: VisionFeatureSelect? = nil) {
        self.model = model; self.mmproj = mmproj; self.visionFeatureSelectStrategy = visionFeatureSelectStrategy
    }

    /// The pair a store folder names, its paths resolved; nil when `folder` holds no mmproj.json.
    public static func read(folder: String) throws -> GGUFPair? {
        let path = folder + "/" + fileName
        guard let data = try SmallFile.readIfPresent(path) else { return nil }
        let pair: GGUFPair
        do { pair = try JSONDecoder().decode(GGUFPair.self, from: data) } catch {
            throw FormatError(path, "not a model pair (\(TextModel.describe(error))); expected {\"model\": \"TEXT.gguf\", \"mmproj\": \"MMPROJ.gguf\"}")
        }
        func resolve(_ p: String) throws -> String {
            let expanded = (p as NSString).expandingTildeInPath
            let full = expanded.hasPrefix("/") ? expanded : URL(fileURLWithPath: folder).appendingPathComponent(expanded).standardizedFileURL.path
            guard FileManager.default.fileExists(atPath: full) else { throw FormatError(path, "'\(p)': no such file") }
            return full
        }
        return GGUFPair(model: try resolve(pair.model), mmproj: try resolve(pair.mmproj), visionFeatureSelectStrategy: pair.visionFeatureSelectStrategy)
    }
}

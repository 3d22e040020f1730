import Foundation
import VLMAutodiff
import VLMFormats
import VLMModels
import VLMTensor

// `vlmsh export-gguf`: a model as loaded (its LoRA fused in, a trained tower and projector as
// they are) written as llama.cpp's LLaVA pair, a text GGUF plus an mmproj GGUF, so llama-server,
// Ollama or llama-cpp-python run it unchanged.
//
// The text GGUF is the base language model's GGUF with the fused weights in place: every
// metadata key (architecture, tokenizer, chat template) is copied in order, tensors the LoRA does
// not touch are copied as stored, and each adapted weight becomes W + scale·B·A (Float32) encoded
// as f16 or q8_0. vlmsh runs a GGUF's Llama Q/K rows in the file's (llama.cpp's permuted) order,
// so a LoRA trained on it is already in that order and fuses without reordering.
//
// The mmproj holds the vision tower and the mlp2x_gelu projector under the `clip.*` keys and
// `v.*` / `mm.*` names that llama.cpp's mtmd reads, written so its LLaVA graph
// (tools/mtmd/models/llava.cpp) computes what vlmsh does where the metadata can say so:
// `clip.vision.feature_layer` records LLaVA's feature layers as hidden-state indices and only
// the layers up to the deepest are stored (without it llama.cpp would run one layer fewer);
// `post_layernorm` is left out (LLaVA's hidden states never pass it, llama.cpp would apply it);
// `clip.use_gelu` / `use_silu` name the tower's activation (neither: CLIP's quick_gelu; ggml's
// gelu is the tanh approximation, SigLIP's exactly); the image mean and std are the model's
// processor's. A SigLIP tower (no class token, no pre-norm, a patch bias, every row kept) is
// llama.cpp's plain ViT, and with a gelu_pytorch_tanh projector the whole path is the same
// computation. A CLIP tower differs in what no key changes: llama.cpp places the class token
// after the patches and keeps rows 1…, so its rows are patches 1… plus the class token rather
// than every patch (or, with the `full` select, every patch and the class token before them);
// and an exact-gelu projector runs as the tanh approximation.

/// The encoding of the weights export-gguf computes (fused LoRA weights, the tower's and the
/// projector's matrices).
public enum GGUFExportType: String, Sendable, CaseIterable {
    case f16, q8_0

    public var ggml: GGMLType { self == .f16 ? .f16 : .q8_0 }
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7).
    var fileType: UInt32 { self == .f16 ? 1 : 7 }
}

/// What `GGUFExport.run` wrote.
public struct GGUFExportReport: Sendable {
    public var folder: String
    public var textFile: String
    public var mmprojFile: String?
    /// Text tensors written, of them the weights a LoRA was fused into.
    public var textTensors: Int
    public var mergedWeights: Int
    public var mmprojTensors: Int
    /// Vision layers stored (up to LLaVA's deepest feature layer).
    public var visionLayers: Int
    /// Whether llama.cpp computes the image rows as vlmsh does (see `GGUFExport.clipDifference`).
    public var mmprojExact: Bool
    public var type: GGUFExportType
    public var bytes: Int
}

public enum GGUFExport {
    public static let textFileName = "text.gguf"
    public static let mmprojFileName = "mmproj.gguf"
    /// What llama.cpp computes differently from an exported tower with a class token (CLIP) or an
    /// exact-gelu projector or tower; a SigLIP tower with gelu_pytorch_tanh round-trips exactly.
    public static let clipDifference = "llama.cpp's LLaVA graph puts a CLIP tower's class token after the patches and keeps rows 1… (patches 1… plus the class token, not every patch, nor one row more for the `full` select), and runs an exact gelu as the tanh approximation: image rows differ; a SigLIP tower with a gelu_pytorch_tanh projector (init-llava --vision-kind siglip --projector-act gelu_pytorch_tanh) is computed as vlmsh does"

    /// Writes `text.gguf` (and, for a LLaVA model, `mmproj.gguf` plus the `mmproj.json` that
    /// names the pair) into the folder `output`, created when missing. `decoder` is the language
    /// model as loaded, its installed LoRA the one fused; `textGGUF` the GGUF it was loaded from;
    /// `name` the mmproj's `general.name` (the model's).
    public static func run(decoder: LlamaModel, textGGUF: String, llava: LlavaModel?, type: GGUFExportType,
                           output: String, name: String) throws -> GGUFExportReport {
        let fm = FileManager.default
        try requireFolderOrAbsent(output, message: "is a file; --out names the folder the GGUF files are written to")
        // Everything is checked before any file is written.
        let mmproj = try llava.map { try MMProjPlan(llava: $0, type: type) }
        let base = try GGUFFile(path: textGGUF)
        let text = try TextPlan(base: base, decoder: decoder, type: type)
        do { try fm.createDirectory(atPath: output, withIntermediateDirectories: true) } catch {
            throw FormatError(output, "cannot create the folder: \(error.localizedDescription)")
        }
        let textPath = output + "/" + textFileName
        var bytes = try text.write(to: textPath)
        var mmprojPath: String?
        if let mmproj {
            let path = output + "/" + mmprojFileName
            bytes += try mmproj.write(to: path, name: name)
            let pair = try JSONEncoder().encode(GGUFPair(model: textFileName, mmproj: mmprojFileName, visionFeatureSelectStrategy: mmproj.select))
            try writeAtomically(pair, to: output + "/" + GGUFPair.fileName)
            mmprojPath = path
        }
        return GGUFExportReport(folder: output, textFile: textPath, mmprojFile: mmprojPath, textTensors: text.entries.count,
                                mergedWeights: text.fused.count, mmprojTensors: mmproj?.entries.count ?? 0,
                                visionLayers: mmproj?.layers ?? 0, mmprojExact: mmproj?.exact ?? true, type: type, bytes: bytes)
    }

    /// The text GGUF: the base file's metadata and tensors, the adapted weights fused.
    struct TextPlan {
        let base: GGUFFile
        let entries: [GGUFTensorEntry]
        /// Tensor index → the adapter fused into it.
        let fused: [Int: LowRankAdapter]

        init(base: GGUFFile, decoder: LlamaModel, type: GGUFExportType) throws {
            self.base = base
            let adapters = AppliedAdapter.installedAdapters(on: decoder)
            var entries: [GGUFTensorEntry] = [], fused: [Int: LowRankAdapter] = [:], found = Set<String>()
            for (i, t) in base.tensorInfos.enumerated() {
                var entry = GGUFTensorEntry(name: t.name, shape: t.shape, type: t.type)
                if let canonical = LlamaWeights.sanitizeGGUF(t.name), canonical.hasSuffix(".weight"),
                   let adapter = adapters[String(canonical.dropLast(".weight".count))] {
                    let module = String(canonical.dropLast(".weight".count))
                    guard t.shape == [adapter.outFeatures, adapter.inFeatures] else {
                        throw FormatError(base.path, "'\(t.name)' has shape \(t.shape); the LoRA for \(module) is \(adapter.outFeatures)×\(adapter.inFeatures)")
                    }
                    guard adapter.inFeatures % type.ggml.blockSize == 0 else {
                        throw FormatError(base.path, "'\(t.name)' rows of \(adapter.inFeatures) values are not whole \(type.ggml.name) blocks of \(type.ggml.blockSize); use --type f16")
                    }
                    entry.type = type.ggml
                    fused[i] = adapter
                    found.insert(module)
                }
                entries.append(entry)
            }
            if let missing = Set(adapters.keys).subtracting(found).sorted().first {
                throw FormatError(base.path, "no stored weight for \(missing), which the LoRA changes")
            }
            self.entries = entries
            self.fused = fused
        }

        func write(to path: String) throws -> Int {
            let metadata = base.metadataKeys.map { (key: $0, value: base.metadata[$0]!) }
            return try GGUFWriter.write(metadata: metadata, tensors: entries, to: path) { i in
                let info = base.tensorInfos[i]
                guard let adapter = fused[i] else {
                    return .encoded(Array(UnsafeRawBufferPointer(start: try base.matrix(info.name).data, count: info.byteCount)))
                }
                let w = try base.floats(info.name)
                Merge.fuse(adapter, into: w)
                return .floats(w)
            }
        }
    }

    /// The mmproj GGUF: metadata and tensors of the tower (up to the deepest feature layer) and
    /// the projector, checked to be what llama.cpp's LLaVA graph runs.
    struct MMProjPlan {
        let metadata: [(key: String, value: GGUFValue)]
        let entries: [GGUFTensorEntry]
        let tensors: [Tensor]
        let layers: Int
        /// Whether llama.cpp's graph is the same computation as vlmsh's (a tower without a class
        /// token, no exact gelu, which ggml runs as the tanh approximation).
        let exact: Bool
        /// `full` when the class token is an image token too (mmproj.json records it for vlmsh;
        /// llama.cpp's keys cannot say it), nil when the file's own rows say it all.
        let select: VisionFeatureSelect?

        init(llava: LlavaModel, type: GGUFExportType) throws {
            let config = llava.config
            let what = "export-gguf writes llama.cpp's LLaVA-1.5 mmproj"
            guard let tower = llava.visionTransformer else {
                throw ModelError("\(what) (a CLIP or SigLIP ViT); this model's vision tower is not one")
            }
            guard llava.anyResolution == nil else { throw ModelError("\(what); LLaVA-1.6 (llava_next any-resolution) is not supported") }
            // llama.cpp keeps one row per patch whatever the select strategy: a tower with a class
            // token gives patches 1… and the class token (see `clipDifference`), one without gives
            // every patch, as vlmsh's `default` and `full` both do.
            let classToken = tower.classEmbedding != nil
            select = classToken && config.visionFeatureSelectStrategy == .full ? .full : nil
            let projector = llava.projector
            guard projector.kind == .mlp2xGelu, [.gelu, .geluPytorchTanh, .geluNew].contains(projector.activation),
                  projector.linear1.bias != nil, projector.linear2?.bias != nil else {
                throw ModelError("\(what) with an mlp2x_gelu projector with biases (llama.cpp's `mlp`); this model's is \(projector.kind.rawValue) with \(projector.activation.rawValue)")
            }
            let s = tower.shape
            let useGelu: Bool, useSilu: Bool
            switch s.activation {
            case .quickGelu: (useGelu, useSilu) = (false, false)
            case .gelu, .geluPytorchTanh, .geluNew: (useGelu, useSilu) = (true, false)
            case .silu: (useGelu, useSilu) = (false, true)
            }
            // LLaVA's feature layers as hidden-state indices (0 = the embeddings); llama.cpp runs
            // the layers up to the deepest, so only those are stored.
            let featureLayers = try config.visionFeatureLayers.map { try tower.resolve($0) }
            let deepest = featureLayers.max() ?? 0
            guard deepest >= 1 else { throw ModelError("\(what), which needs at least one encoder layer before the feature layer") }
            layers = deepest
            exact = !classToken && projector.activation != .gelu && s.activation != .gelu
            let processor = llava.imageProcessor
            guard let mean = processor.imageMean, let std = processor.imageStd, mean.count == 3, std.count == 3 else {
                throw ModelError("\(what); the image processor has no three-channel image_mean / image_std")
            }

            metadata = [
                ("general.architecture", .string("clip")),
                ("general.description", .string("image encoder for LLaVA (vlmsh export-gguf)")),
                ("general.file_type", .uint32(type.fileType)),
                ("clip.has_text_encoder", .bool(false)),
                ("clip.has_vision_encoder", .bool(true)),
                ("clip.has_llava_projector", .bool(true)),
                ("clip.projector_type", .string("mlp")),
                ("clip.vision.image_size", .uint32(UInt32(s.imageSize))),
                ("clip.vision.patch_size", .uint32(UInt32(s.patchSize))),
                ("clip.vision.embedding_length", .uint32(UInt32(s.hidden))),
                ("clip.vision.feed_forward_length", .uint32(UInt32(s.intermediate))),
                ("clip.vision.projection_dim", .uint32(UInt32(projector.outputSize))),
                ("clip.vision.attention.head_count", .uint32(UInt32(s.heads))),
                ("clip.vision.attention.layer_norm_epsilon", .float32(s.eps)),
                ("clip.vision.block_count", .uint32(UInt32(deepest))),
                ("clip.vision.feature_layer", .array(featureLayers.map { .int32(Int32($0)) })),
                ("clip.vision.image_mean", .array(mean.map { .float32(Float($0)) })),
                ("clip.vision.image_std", .array(std.map { .float32(Float($0)) })),
                ("clip.use_gelu", .bool(useGelu)),
                ("clip.use_silu", .bool(useSilu)),
            ] + (llava.padToSquare ? [("clip.vision.image_aspect_ratio", .string("pad"))] : [])

            var entries: [GGUFTensorEntry] = [], tensors: [Tensor] = []
            let named = tower.namedTensors.filter { name, _ in
                if name.hasPrefix("post_layernorm.") { return false }
                guard name.hasPrefix("encoder.layers.") else { return true }
                return Int(name.dropFirst("encoder.layers.".count).prefix { $0 != "." })! < deepest
            } + projector.namedLeaves.map { ($0.0, $0.1.value) }
            for (name, tensor) in named {
                guard let fileName = MMProjWeights.fileName(name, legacyFFN: false) else {
                    throw ModelError("\(what); the tower's '\(name)' has no place in it")
                }
                // Matrices in the chosen type; vectors, the class and position embeddings and the
                // patch conv (llama.cpp adds, concatenates or convolves them) stay Float32.
                let matrix = tensor.shape.count == 2 && fileName.hasSuffix(".weight") && fileName != "v.position_embd.weight"
                let t = matrix && tensor.shape[1] % type.ggml.blockSize == 0 ? type.ggml : GGMLType.f32
                entries.append(GGUFTensorEntry(name: fileName, shape: tensor.shape, type: t))
                tensors.append(tensor)
            }
            self.entries = entries
            self.tensors = tensors
        }

        func write(to path: String, name: String) throws -> Int {
            var metadata = self.metadata
            metadata.insert((key: "general.name", value: .string(name)), at: 1)
            return try GGUFWriter.write(metadata: metadata, tensors: entries, to: path) { .floats(tensors[$0]) }
        }
    }
}

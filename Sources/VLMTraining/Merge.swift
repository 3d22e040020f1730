import Foundation
import VLMFormats
import VLMModels
import VLMTensor
#if canImport(Glibc)
import Glibc
#endif

// `vlmsh merge`: a base model and an adapter folder fused into a new Hugging Face model folder
// that loads (in vlmsh or transformers) without PEFT. Each LoRA-adapted linear weight becomes
// W' = W + scale · B · A, computed in Float32; a trained projector replaces the base's. Every
// other tensor is copied under its original name, so the output keeps the input's key layout
// (llava-hf, transformers 5 or original LLaVA), and the files a model folder needs (config.json,
// tokenizer, chat template and preprocessor files, an original LLaVA's vision tower folder) are
// copied as is; nothing else beside the base weights is.
//
// Hugging Face folders only: a GGUF file has no tokenizer.json to copy, and llama.cpp stores
// Llama Q/K rows permuted for interleaved RoPE, so it cannot be written back as HF weights here.
// A composed LLaVA folder (`text_model` names its language model) keeps that reference: its
// vision tower and projector are replaced, and a LoRA stays a LoRA — the adapter files are
// written beside the weights and installed whenever the folder is loaded.

/// The tensor encoding of a merged checkpoint.
public enum MergeDType: String, Sendable, CaseIterable {
    case f32, f16, bf16

    var ggml: GGMLType {
        switch self { case .f32: return .f32; case .f16: return .f16; case .bf16: return .bf16 }
    }
}

/// What `Merge.run` wrote.
public struct MergeReport: Sendable {
    public var output: String
    public var kind: AdapterKind
    public var isLlava: Bool
    /// Tensors written, linear weights LoRA was fused into, projector and vision tower tensors replaced.
    public var tensors: Int
    public var mergedWeights: Int
    public var projectorTensors: Int
    public var visionTowerTensors: Int
    /// A composed folder's LoRA, written as adapter files instead of fused.
    public var keptLoRA: Bool
    /// Non-weight files and folders copied from the base.
    public var copiedFiles: [String]
    public var dtype: MergeDType
    public var bytes: Int
}

public enum Merge {
    /// Fuses the adapter in `adapter` into the model folder `model` and writes the result to
    /// `output` (which must not exist): built in `output.tmp`, then renamed into place, so
    /// `output` is either complete or absent.
    public static func run(model: String, adapter: String, output: String, dtype: MergeDType = .f32) throws -> MergeReport {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: model, isDirectory: &isDirectory) else { throw FormatError(model, "no such file or folder") }
        guard isDirectory.boolValue else {
            throw FormatError(model, "merge needs a Hugging Face model folder: a GGUF file has no tokenizer.json to write, and its Llama Q/K rows are permuted for llama.cpp; use the model's original Hugging Face folder")
        }
        if fm.fileExists(atPath: output) { throw FormatError(output, "already exists; choose a new --out folder") }
        let kind = try AdapterKind.detect(directory: adapter)
        let base = try Base(folder: model)
        let lora = kind.trainsLoRA ? try LoRA.load(directory: adapter, decoder: base.decoder) : nil
        let plan = try Plan(base: base, adapter: adapter, kind: kind, lora: lora)

        // Build the folder beside the target, then move it into place.
        let temp = output + ".tmp"
        if fm.fileExists(atPath: temp) { try fm.removeItem(atPath: temp) }
        do {
            try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
            let copied = try copyNonWeightFiles(from: model, to: temp)
            var metadata = ["format": "pt", "vlmsh_merged_base": model, "vlmsh_merged_adapter": adapter]
            if let lora = plan.fusedLoRA { metadata["vlmsh_lora_scale"] = String(lora.configuration.scale) }
            let entries = plan.entries
            let bytes = try SafetensorsWriter.write(entries.map { ($0.name, $0.shape, dtype.ggml) }, metadata: metadata,
                                                    to: temp + "/model.safetensors") { i in
                let p = entries[i]
                if let r = p.replacement { return r }
                let w = try plan.source.floats(p.name)
                if let a = p.adapter { fuse(a, into: w) }
                return w
            }
            let kept = base.composed ? try keepLoRAFiles(lora != nil ? adapter : nil, base: model, in: temp, output: output) : false
            guard rename(temp, output) == 0 else {
                throw FormatError(output, "cannot move the merged folder into place: \(String(cString: strerror(errno)))")
            }
            return MergeReport(output: output, kind: kind, isLlava: base.isLlava, tensors: entries.count, mergedWeights: plan.usedAdapters,
                               projectorTensors: plan.usedProjector, visionTowerTensors: plan.usedTower, keptLoRA: kept,
                               copiedFiles: copied, dtype: dtype, bytes: bytes)
        } catch {
            try? fm.removeItem(atPath: temp)
            throw error
        }
    }

    /// The base model, loaded to check the adapter against (names and shapes), and how its
    /// stored names map to canonical ones.
    struct Base {
        let folder: String
        let isLlava: Bool
        let decoder: LlamaModel
        let projector: MultiModalProjector?
        let tower: VisionTransformer?
        /// A composed folder's language model is elsewhere: its LoRA is kept as files, not fused.
        let composed: Bool
        let sanitize: (String) -> String?
        let languagePrefix: String

        init(folder: String) throws {
            self.folder = folder
            let config = try ModelConfigFile.require(folder: folder)
            isLlava = config.isLlava
            guard isLlava else {
                decoder = try TextModel.decoder(folder: folder, config: config)
                projector = nil; tower = nil; composed = false
                sanitize = { LlamaWeights.sanitizeHF($0) }
                languagePrefix = ""
                return
            }
            let llava = try LlavaModel.load(folder: folder, config: config)
            decoder = llava.decoder
            projector = llava.projector
            tower = llava.visionTransformer
            composed = llava.config.textModel != nil
            sanitize = llava.config.modelType == "llava_llama" ? { LlavaWeights.sanitizeOriginal($0) } : { LlavaWeights.sanitizeHF($0) }
            languagePrefix = "language_model."
        }
    }

    /// What each stored tensor of the base becomes: itself, itself with a LoRA fused in, or the
    /// adapter's projector or tower tensor. Every part of the adapter must land somewhere.
    struct Plan {
        let source: WeightSource
        let fusedLoRA: LoRA?
        private(set) var entries: [(name: String, shape: [Int], adapter: LowRankAdapter?, replacement: Tensor?)] = []
        private(set) var usedAdapters = 0, usedProjector = 0, usedTower = 0

        init(base: Base, adapter: String, kind: AdapterKind, lora: LoRA?) throws {
            let model = base.folder
            fusedLoRA = base.composed ? nil : lora
            let projectorTensors = try Self.projectorTensors(base: base, adapter: adapter, kind: kind)
            let towerTensors = try Self.towerTensors(base: base, adapter: adapter, kind: kind)
            source = try openCheckpoint(folder: model)
            var adapters = Set<String>(), projector = Set<String>(), tower = Set<String>()
            for name in source.weightNames.sorted() {
                guard let canonical = base.sanitize(name) else { continue }
                guard let info = source.info(name) else { throw FormatError(model, "tensor '\(name)' has a dtype vlmsh cannot read (F32, F16, BF16 only)") }
                var entry: (name: String, shape: [Int], adapter: LowRankAdapter?, replacement: Tensor?) = (name, info.shape, nil, nil)
                let prefix = base.languagePrefix
                if let lora = fusedLoRA, canonical.hasPrefix(prefix + "model.layers."), canonical.hasSuffix(".weight") {
                    let module = String(canonical.dropFirst(prefix.count).dropLast(".weight".count))
                    if let a = lora.adapters[module] {
                        guard info.shape == [a.outFeatures, a.inFeatures] else {
                            throw FormatError(model, "'\(name)' has shape \(info.shape); the adapter for \(module) is \(a.outFeatures)×\(a.inFeatures)")
                        }
                        entry.adapter = a
                        adapters.insert(module)
                    }
                }
                if let t = projectorTensors[canonical] { entry.replacement = t; projector.insert(canonical) }
                if let t = towerTensors[canonical] { entry.replacement = t; tower.insert(canonical) }
                entries.append(entry)
            }
            if let lora = fusedLoRA, let missing = Set(lora.adapters.keys).subtracting(adapters).sorted().first {
                throw FormatError(model, "no stored weight for \(missing), which the adapter changes")
            }
            if let missing = Set(projectorTensors.keys).subtracting(projector).sorted().first {
                throw FormatError(model, "no stored tensor \(missing) for the adapter's projector to replace")
            }
            if let missing = Set(towerTensors.keys).subtracting(tower).sorted().first {
                throw FormatError(model, "no stored tensor \(missing) for the adapter's vision tower to replace")
            }
            usedAdapters = adapters.count; usedProjector = projector.count; usedTower = tower.count
        }

        /// The adapter's projector tensors under the base's canonical names.
        static func projectorTensors(base: Base, adapter: String, kind: AdapterKind) throws -> [String: Tensor] {
            guard kind.trainsProjector else { return [:] }
            guard let projector = base.projector else {
                throw FormatError(adapter + "/" + ProjectorFiles.hfFile, "projector weights, but \(base.folder) is a text model with no multimodal projector")
            }
            let loaded = try ProjectorFiles.load(directory: adapter, for: projector)
            return Dictionary(uniqueKeysWithValues: zip(ProjectorFiles.named(projector).map(\.hf), loaded))
        }

        /// The adapter's vision tower tensors under the base's canonical names.
        static func towerTensors(base: Base, adapter: String, kind: AdapterKind) throws -> [String: Tensor] {
            guard kind.trainsVisionTower else { return [:] }
            guard let tower = base.tower else {
                throw FormatError(adapter + "/" + VisionTowerFiles.file, "vision tower weights, but \(base.folder) has no vision tower vlmsh can replace")
            }
            let loaded = try VisionTowerFiles.load(directory: adapter, for: tower)
            return Dictionary(uniqueKeysWithValues: zip(tower.namedTensors.map { VisionTowerFiles.prefix + $0.0 }, loaded))
        }
    }

    /// A composed folder keeps its LoRA as adapter files: the newest one wins (`adapter`'s, else
    /// the one the base folder carries). Returns whether one was kept.
    static func keepLoRAFiles(_ adapter: String?, base model: String, in temp: String, output: String) throws -> Bool {
        let fm = FileManager.default
        guard let loraSource = adapter ?? (fm.fileExists(atPath: model + "/adapter_model.safetensors") ? model : nil) else { return false }
        try? fm.removeItem(atPath: temp + "/adapter_model.safetensors")
        try fm.copyItem(atPath: loraSource + "/adapter_model.safetensors", toPath: temp + "/adapter_model.safetensors")
        // The LoRA now sits in the merged folder, which is its base (the folder it was trained on
        // may be gone, or on another machine).
        var config = try LoRAConfiguration.read(directory: loraSource)
        config.baseModel = (output as NSString).lastPathComponent
        try config.write(directory: temp)
        return true
    }

    /// W `[out, in]` += scale · B · A, in Float32.
    public static func fuse(_ adapter: LowRankAdapter, into weight: Tensor) {
        precondition(weight.shape == [adapter.outFeatures, adapter.inFeatures], "weight \(weight.shape) does not fit the adapter")
        let r = adapter.rank
        let scaledB = Tensor(shape: [adapter.outFeatures, r], zeroed: false)
        for i in 0..<scaledB.count { scaledB.data[i] = adapter.b.value.data[i] * adapter.scale }
        Kernels.matmul(scaledB.data, adapter.a.data, weight.data, m: adapter.outFeatures, n: adapter.inFeatures, k: r, accumulate: true)
    }

    /// The files a model folder needs besides its weights: config, tokenizer, chat template,
    /// image processor and generation settings. Anything else beside the base weights (notes,
    /// stray checkpoints, an adapter's files) stays behind.
    static func isModelFile(_ name: String) -> Bool {
        let files: Set<String> = [
            "config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.model",
            "vocab.json", "vocab.txt", "merges.txt",
        ]
        return files.contains(name) || name.hasPrefix("chat_template")
    }

    /// Copies the model files (`isModelFile`) and, for an original LLaVA, the vision tower folder
    /// its config.json names when that folder lies inside the base. Returns the names copied.
    static func copyNonWeightFiles(from source: String, to destination: String) throws -> [String] {
        let fm = FileManager.default
        let config = (try SmallFile.readIfPresent(source + "/config.json")).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        let base = URL(fileURLWithPath: source, isDirectory: true)
        let towerFolder = (config?["mm_vision_tower"] as? String).map { URL(fileURLWithPath: $0, relativeTo: base).standardizedFileURL.path }
        var copied: [String] = []
        for name in try fm.contentsOfDirectory(atPath: source).sorted() where !name.hasPrefix(".") {
            let path = source + "/" + name
            var isDirectory: ObjCBool = false
            _ = fm.fileExists(atPath: path, isDirectory: &isDirectory)
            let wanted = isDirectory.boolValue ? towerFolder == URL(fileURLWithPath: path).standardizedFileURL.path : isModelFile(name)
            guard wanted else { continue }
            do { try fm.copyItem(atPath: path, toPath: destination + "/" + name) } catch {
                throw FormatError(path, "cannot copy into the merged folder (\(error.localizedDescription))")
            }
            copied.append(name)
        }
        return copied
    }
}

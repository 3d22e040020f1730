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

        // The base, loaded to check the adapter against (names and shapes).
        let config = try ModelConfigFile.read(folder: model)
        let isLlava = config?.isLlava ?? false
        let decoder: LlamaModel
        let projector: MultiModalProjector?
        var tower: VisionTransformer?
        var composed = false
        let sanitize: (String) -> String?
        let languagePrefix: String
        if isLlava {
            let llava = try LlavaModel.load(folder: model, config: config)
            decoder = llava.decoder
            projector = llava.projector
            tower = llava.visionTransformer
            composed = llava.config.textModel != nil
            if llava.config.modelType == "llava_llama" {
                sanitize = { LlavaWeights.sanitizeOriginal($0) }
            } else {
                sanitize = { LlavaWeights.sanitizeHF($0) }
            }
            languagePrefix = "language_model."
        } else {
            decoder = try loadTextDecoder(folder: model)
            projector = nil
            sanitize = { LlamaWeights.sanitizeHF($0) }
            languagePrefix = ""
        }
        let lora = kind.hasLoRA ? try LoRA.load(directory: adapter, decoder: decoder) : nil
        var projectorTensors: [String: Tensor] = [:]
        if kind.hasProjector {
            guard let projector else {
                throw FormatError(adapter + "/" + ProjectorFiles.hfFile, "projector weights, but \(model) is a text model with no multimodal projector")
            }
            let loaded = try ProjectorFiles.load(directory: adapter, for: projector)
            for (entry, tensor) in zip(ProjectorFiles.named(projector), loaded) { projectorTensors[entry.hf] = tensor }
        }
        var towerTensors: [String: Tensor] = [:]
        if kind.hasVisionTower {
            guard let tower else {
                throw FormatError(adapter + "/" + VisionTowerFiles.file, "vision tower weights, but \(model) has no vision tower vlmsh can replace")
            }
            let loaded = try VisionTowerFiles.load(directory: adapter, for: tower)
            for ((name, _), tensor) in zip(tower.namedTensors, loaded) { towerTensors[VisionTowerFiles.prefix + name] = tensor }
        }
        // A composed folder's language model is elsewhere: its LoRA is kept as files, not fused.
        let fusedLoRA = composed ? nil : lora

        // What each stored tensor becomes.
        let source = try openCheckpoint(folder: model)
        var plan: [(name: String, shape: [Int], adapter: LowRankAdapter?, replacement: Tensor?)] = []
        var usedAdapters = Set<String>(), usedProjector = Set<String>(), usedTower = Set<String>()
        for name in source.weightNames.sorted() {
            guard let canonical = sanitize(name) else { continue }
            guard let info = source.info(name) else { throw FormatError(model, "tensor '\(name)' has a dtype vlmsh cannot read (F32, F16, BF16 only)") }
            var entry: (name: String, shape: [Int], adapter: LowRankAdapter?, replacement: Tensor?) = (name, info.shape, nil, nil)
            if let lora = fusedLoRA, canonical.hasPrefix(languagePrefix + "model.layers."), canonical.hasSuffix(".weight") {
                let module = String(canonical.dropFirst(languagePrefix.count).dropLast(".weight".count))
                if let a = lora.adapters[module] {
                    guard info.shape == [a.outFeatures, a.inFeatures] else {
                        throw FormatError(model, "'\(name)' has shape \(info.shape); the adapter for \(module) is \(a.outFeatures)×\(a.inFeatures)")
                    }
                    entry.adapter = a
                    usedAdapters.insert(module)
                }
            }
            if let t = projectorTensors[canonical] {
                entry.replacement = t
                usedProjector.insert(canonical)
            }
            if let t = towerTensors[canonical] {
                entry.replacement = t
                usedTower.insert(canonical)
            }
            plan.append(entry)
        }
        if let lora = fusedLoRA, let missing = Set(lora.adapters.keys).subtracting(usedAdapters).sorted().first {
            throw FormatError(model, "no stored weight for \(missing), which the adapter changes")
        }
        if let missing = Set(projectorTensors.keys).subtracting(usedProjector).sorted().first {
            throw FormatError(model, "no stored tensor \(missing) for the adapter's projector to replace")
        }
        if let missing = Set(towerTensors.keys).subtracting(usedTower).sorted().first {
            throw FormatError(model, "no stored tensor \(missing) for the adapter's vision tower to replace")
        }

        // Build the folder beside the target, then move it into place.
        let temp = output + ".tmp"
        if fm.fileExists(atPath: temp) { try fm.removeItem(atPath: temp) }
        do {
            try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
            let copied = try copyNonWeightFiles(from: model, to: temp)
            var metadata = ["format": "pt", "vlmsh_merged_base": model, "vlmsh_merged_adapter": adapter]
            if let lora = fusedLoRA { metadata["vlmsh_lora_scale"] = String(lora.configuration.scale) }
            let bytes = try SafetensorsWriter.write(plan.map { ($0.name, $0.shape, dtype.ggml) }, metadata: metadata,
                                                    to: temp + "/model.safetensors") { i in
                let p = plan[i]
                if let r = p.replacement { return r }
                let w = try source.floats(p.name)
                if let a = p.adapter { fuse(a, into: w) }
                return w
            }
            var kept = false
            if composed {
                // The newest LoRA wins: the adapter's, else the one the base folder carries.
                let loraSource = lora != nil ? adapter : (fm.fileExists(atPath: model + "/adapter_model.safetensors") ? model : nil)
                if let loraSource {
                    try? fm.removeItem(atPath: temp + "/adapter_model.safetensors")
                    try fm.copyItem(atPath: loraSource + "/adapter_model.safetensors", toPath: temp + "/adapter_model.safetensors")
                    // The LoRA now sits in the merged folder, which is its base (the folder it
                    // was trained on may be gone, or on another machine).
                    var config = try LoRAConfiguration.read(directory: loraSource)
                    config.baseModel = (output as NSString).lastPathComponent
                    try config.write(directory: temp)
                    kept = true
                }
            }
            guard rename(temp, output) == 0 else {
                throw FormatError(output, "cannot move the merged folder into place: \(String(cString: strerror(errno)))")
            }
            return MergeReport(output: output, kind: kind, isLlava: isLlava, tensors: plan.count, mergedWeights: usedAdapters.count,
                               projectorTensors: usedProjector.count, visionTowerTensors: usedTower.count, keptLoRA: kept,
                               copiedFiles: copied, dtype: dtype, bytes: bytes)
        } catch {
            try? fm.removeItem(atPath: temp)
            throw error
        }
    }

    /// W `[out, in]` += scale · B · A, in Float32.
    public static func fuse(_ adapter: LowRankAdapter, into weight: Tensor) {
        precondition(weight.shape == [adapter.outFeatures, adapter.inFeatures], "weight \(weight.shape) does not fit the adapter")
        let r = adapter.rank
        let scaledB = Tensor(shape: [adapter.outFeatures, r], zeroed: false)
        for i in 0..<scaledB.count { scaledB.data[i] = adapter.b.value.data[i] * adapter.scale }
        Kernels.matmul(scaledB.data, adapter.a.data, weight.data, m: adapter.outFeatures, n: adapter.inFeatures, k: r, accumulate: true)
    }

    /// The decoder of a Hugging Face text model folder (no tokenizer needed).
    static func loadTextDecoder(folder: String) throws -> LlamaModel {
        let configPath = folder + "/config.json"
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw FormatError(configPath, "missing: a model folder needs config.json")
        }
        let config: LlamaConfiguration
        do { config = try JSONDecoder().decode(LlamaConfiguration.self, from: data) } catch {
            throw FormatError(configPath, "not a supported text model config (\(error))")
        }
        guard LlamaConfiguration.supportedTypes.contains(config.modelType) else {
            throw FormatError(configPath, "unsupported model_type '\(config.modelType)'")
        }
        let weights = WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlamaWeights.sanitizeHF)
        return try LlamaModel(config: config, weights: weights, ropePairing: .halves)
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
        let config = fm.contents(atPath: source + "/config.json").flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
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

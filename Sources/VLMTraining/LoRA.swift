import Foundation
import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor

// PEFT LoRA on the language model: configuration as `adapter_config.json`, adapters installed on
// the decoder's linear layers (so generation sees them), and the PEFT file layout.

/// Which linear layers get an adapter: module-name suffixes (`q_proj`) or a regular expression
/// matched against the whole module name, as PEFT's `target_modules` list or string.
public enum LoRATargets: Sendable, Equatable, Codable {
    case names([String])
    case pattern(String)

    /// Every attention and MLP projection of the language model (LLaVA's `find_all_linear_names`).
    public static let all = LoRATargets.names(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    /// `--lora-targets`: "all", a comma-separated list of names, or a regular expression.
    public init(argument: String) throws {
        let trimmed = argument.trimmingCharacters(in: .whitespaces)
        if trimmed == "all" || trimmed.isEmpty { self = .all; return }
        let names = trimmed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        if names.allSatisfy({ $0.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." } }) {
            self = .names(names)
        } else {
            guard (try? NSRegularExpression(pattern: trimmed)) != nil else { throw TrainingError("--lora-targets: invalid regular expression '\(trimmed)'") }
            self = .pattern(trimmed)
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let names = try? c.decode([String].self) { self = .names(names) } else { self = .pattern(try c.decode(String.self)) }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .names(let n): try c.encode(n)
        case .pattern(let p): try c.encode(p)
        }
    }

    /// PEFT's rule: a name matches a list entry when it equals it or ends with "." + entry; a
    /// string must match the whole name.
    func matches(_ moduleName: String) -> Bool {
        switch self {
        case .names(let names):
            return names.contains { moduleName == $0 || moduleName.hasSuffix("." + $0) }
        case .pattern(let pattern):
            guard let regex = try? NSRegularExpression(pattern: "^(?:" + pattern + ")$") else { return false }
            return regex.firstMatch(in: moduleName, range: NSRange(moduleName.startIndex..., in: moduleName)) != nil
        }
    }
}

/// The fields of PEFT's `adapter_config.json` vlmsh reads and writes.
public struct LoRAConfiguration: Codable, Sendable, Equatable {
    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    public var targets: LoRATargets
    public var useRSLoRA: Bool
    public var baseModel: String?
    public var bias: String
    public var peftType: String
    public var taskType: String?

    enum CodingKeys: String, CodingKey {
        case rank = "r", alpha = "lora_alpha", dropout = "lora_dropout", targets = "target_modules"
        case useRSLoRA = "use_rslora", baseModel = "base_model_name_or_path", bias, peftType = "peft_type", taskType = "task_type"
        case fanInFanOut = "fan_in_fan_out", inferenceMode = "inference_mode", modulesToSave = "modules_to_save", useDora = "use_dora"
    }

    public init(rank: Int = 8, alpha: Float = 16, dropout: Float = 0.05, targets: LoRATargets = .all, useRSLoRA: Bool = false, baseModel: String? = nil) {
        self.rank = rank; self.alpha = alpha; self.dropout = dropout; self.targets = targets
        self.useRSLoRA = useRSLoRA; self.baseModel = baseModel; bias = "none"; peftType = "LORA"; taskType = "CAUSAL_LM"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        peftType = try c.decodeIfPresent(String.self, forKey: .peftType) ?? "LORA"
        rank = try c.decode(Int.self, forKey: .rank)
        alpha = try c.decodeIfPresent(Float.self, forKey: .alpha) ?? 8
        dropout = try c.decodeIfPresent(Float.self, forKey: .dropout) ?? 0
        targets = try c.decodeIfPresent(LoRATargets.self, forKey: .targets) ?? .all
        useRSLoRA = try c.decodeIfPresent(Bool.self, forKey: .useRSLoRA) ?? false
        baseModel = try c.decodeIfPresent(String.self, forKey: .baseModel)
        bias = try c.decodeIfPresent(String.self, forKey: .bias) ?? "none"
        taskType = try c.decodeIfPresent(String.self, forKey: .taskType)
        if try c.decodeIfPresent(Bool.self, forKey: .fanInFanOut) == true { throw TrainingError("fan_in_fan_out adapters are not supported") }
        if try c.decodeIfPresent(Bool.self, forKey: .useDora) == true { throw TrainingError("DoRA adapters are not supported") }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(peftType, forKey: .peftType)
        try c.encode(rank, forKey: .rank)
        try c.encode(alpha, forKey: .alpha)
        try c.encode(dropout, forKey: .dropout)
        try c.encode(targets, forKey: .targets)
        try c.encode(useRSLoRA, forKey: .useRSLoRA)
        try c.encodeIfPresent(baseModel, forKey: .baseModel)
        try c.encode(bias, forKey: .bias)
        try c.encodeIfPresent(taskType, forKey: .taskType)
        try c.encode(false, forKey: .fanInFanOut)
        try c.encode(true, forKey: .inferenceMode)
        try c.encodeNil(forKey: .modulesToSave)
        try c.encode(false, forKey: .useDora)
    }

    /// `directory`/adapter_config.json, as PEFT writes it.
    public static func read(directory: String) throws -> LoRAConfiguration {
        let path = directory + "/adapter_config.json"
        guard let data = try SmallFile.readIfPresent(path) else {
            throw FormatError(path, "missing: an adapter folder needs adapter_config.json")
        }
        do { return try JSONDecoder().decode(LoRAConfiguration.self, from: data) } catch {
            throw FormatError(path, "not a PEFT LoRA config (\(error))")
        }
    }

    /// Writes `directory`/adapter_config.json atomically.
    public func write(directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try writeAtomically(try encoder.encode(self), to: directory + "/adapter_config.json")
    }

    public var scale: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }
}

/// Where the language model's layers sit in the PEFT-wrapped model, which decides key names.
public enum ModuleLayout: Sendable {
    /// A causal LM: `model.layers.N.…`.
    case text
    /// transformers 5 LLaVA: `model.language_model.layers.N.…` (what current PEFT writes).
    case llava

    /// The PEFT module path of a decoder module name (`model.layers.N.self_attn.q_proj`).
    func modulePath(_ decoderName: String) -> String {
        switch self {
        case .text: return decoderName
        case .llava: return "model.language_model." + decoderName.dropFirst("model.".count)
        }
    }

    /// Decoder module name of a PEFT module path in any layout PEFT has written: transformers 5
    /// (`model.language_model.layers`), 4.x (`language_model.model.layers`) or a plain LM.
    static func decoderName(_ path: String) -> String? {
        for (prefix, replacement) in [("model.language_model.", "model."), ("language_model.model.", "model."), ("model.", "model.")]
        where path.hasPrefix(prefix) {
            return replacement + path.dropFirst(prefix.count)
        }
        return nil
    }
}

/// LoRA adapters installed on a decoder, keyed by decoder module name.
public final class LoRA: @unchecked Sendable {
    public let configuration: LoRAConfiguration
    /// The adapters' A and B are the graph leaves a fine-tune trains, so updates are seen by
    /// generation at once.
    public let adapters: [String: LowRankAdapter]

    init(configuration: LoRAConfiguration, adapters: [String: LowRankAdapter]) {
        self.configuration = configuration
        self.adapters = adapters
    }

    /// Fresh adapters as PEFT initializes them: A ~ kaiming_uniform(a=√5) = U(±1/√in), B = 0, so
    /// the model starts unchanged.
    public static func create(_ configuration: LoRAConfiguration, decoder: LlamaModel, layout: ModuleLayout, random: inout SeededRandom) throws -> LoRA {
        let r = configuration.rank
        guard r > 0 else { throw TrainingError("--lora-r must be positive") }
        var adapters: [String: LowRankAdapter] = [:]
        for name in decoder.linearModuleNames where configuration.targets.matches(layout.modulePath(name)) {
            let linear = decoder.linear(named: name)!
            let bound = 1 / Float(linear.inFeatures).squareRoot()
            let a = Tensor(shape: [r, linear.inFeatures], zeroed: false)
            for i in 0..<a.count { a.data[i] = (random.nextUnit() * 2 - 1) * bound }
            adapters[name] = LowRankAdapter(a: a, b: Tensor(shape: [linear.outFeatures, r]), scale: configuration.scale,
                                            dropout: configuration.dropout)
        }
        guard !adapters.isEmpty else { throw TrainingError("LoRA targets \(configuration.targets) match no linear layer of the language model") }
        return LoRA(configuration: configuration, adapters: adapters)
    }

    /// PEFT's weights file names, in the order `load` looks for them.
    static let weightsFiles = ["adapter_model.safetensors", "adapter_model.bin"]

    /// The weights file `load` reads in `directory` (nil when there is none).
    public static func weightsFile(in directory: String) -> String? {
        weightsFiles.first { FileManager.default.fileExists(atPath: directory + "/" + $0) }
    }

    /// Reads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`, or the
    /// torch.save `adapter_model.bin` of older PEFT and LLaVA's LoRA releases), keys in any layout
    /// PEFT writes; every tensor must land on a layer of `decoder` with matching shape.
    public static func load(directory: String, decoder: LlamaModel) throws -> LoRA {
        let configPath = directory + "/adapter_config.json"
        let configuration = try LoRAConfiguration.read(directory: directory)
        guard configuration.peftType == "LORA" else { throw FormatError(configPath, "peft_type \(configuration.peftType) is not LORA") }
        guard let weightsName = weightsFile(in: directory) else {
            throw FormatError(directory + "/" + weightsFiles[0], "missing (nor is there an \(weightsFiles[1]))")
        }
        let weightsPath = directory + "/" + weightsName
        let file: any CheckpointShard = weightsName.hasSuffix(".bin") ? try TorchCheckpointFile(path: weightsPath) : try SafetensorsFile(path: weightsPath)
        var pairs: [String: (a: Tensor?, b: Tensor?)] = [:]
        for key in file.weightNames {
            var path = key.hasPrefix("base_model.model.") ? String(key.dropFirst("base_model.model.".count)) : key
            let isA: Bool
            if path.hasSuffix(".lora_A.weight") { isA = true } else if path.hasSuffix(".lora_B.weight") { isA = false } else {
                throw FormatError(weightsPath, "unexpected tensor '\(key)' (only lora_A/lora_B weights are supported)")
            }
            path = String(path.dropLast(".lora_A.weight".count))
            if path.hasSuffix(".default") { path = String(path.dropLast(".default".count)) }
            guard let name = ModuleLayout.decoderName(path), let linear = decoder.linear(named: name) else {
                throw FormatError(weightsPath, "tensor '\(key)' does not name a linear layer of the language model")
            }
            let tensor = try file.floats(key)
            let expected = isA ? [configuration.rank, linear.inFeatures] : [linear.outFeatures, configuration.rank]
            guard tensor.shape == expected else { throw FormatError(weightsPath, "'\(key)' has shape \(tensor.shape), expected \(expected)") }
            if isA { pairs[name, default: (nil, nil)].a = tensor } else { pairs[name, default: (nil, nil)].b = tensor }
        }
        var adapters: [String: LowRankAdapter] = [:]
        for (name, pair) in pairs {
            guard let a = pair.a, let b = pair.b else { throw FormatError(weightsPath, "'\(name)' has only one of lora_A and lora_B") }
            adapters[name] = LowRankAdapter(a: a, b: b, scale: configuration.scale, dropout: configuration.dropout)
        }
        guard !adapters.isEmpty else { throw FormatError(weightsPath, "no LoRA tensors") }
        return LoRA(configuration: configuration, adapters: adapters)
    }

    /// The PEFT key of a decoder module's A or B matrix.
    static func key(_ name: String, _ matrix: String, layout: ModuleLayout) -> String {
        "base_model.model.\(layout.modulePath(name)).lora_\(matrix).weight"
    }

    /// The adapters' trainable leaves under their PEFT key names.
    public func parameters(layout: ModuleLayout) -> [Parameter] {
        adapters.keys.sorted().flatMap { name -> [Parameter] in
            let adapter = adapters[name]!
            return [Parameter(name: Self.key(name, "A", layout: layout), variable: adapter.a, group: .languageModel),
                    Parameter(name: Self.key(name, "B", layout: layout), variable: adapter.b, group: .languageModel)]
        }
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `directory` (each file
    /// atomically). Target modules are written as PEFT would match them in that layout.
    public func save(directory: String, layout: ModuleLayout, baseModel: String?) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var config = configuration
        config.baseModel = baseModel
        if layout == .llava, case .names(let names) = config.targets {
            // A bare name list would also match the vision tower's projections under PEFT.
            let escaped = names.map { NSRegularExpression.escapedPattern(for: $0) }.joined(separator: "|")
            config.targets = .pattern("model\\.language_model\\.layers\\.\\d+\\.(?:self_attn|mlp)\\.(?:\(escaped))")
        }
        try config.write(directory: directory)
        let tensors = adapters.keys.sorted().flatMap { name -> [(name: String, tensor: Tensor, dtype: GGMLType)] in
            [(Self.key(name, "A", layout: layout), adapters[name]!.a.value, .f32), (Self.key(name, "B", layout: layout), adapters[name]!.b.value, .f32)]
        }
        try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: directory + "/adapter_model.safetensors")
    }
}

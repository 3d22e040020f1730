import Foundation
import VLMFormats
import VLMTensor

// Llama-family decoder: Llama, Mistral and Qwen2 (q/k/v bias). GQA, RMSNorm, SwiGLU, RoPE
// (default / linear / llama3), optionally tied embeddings, KV cache.

// MARK: - Configuration

/// The text model's config.json (`LlamaConfig`, `MistralConfig`, `Qwen2Config`).
public struct LlamaConfiguration: Codable, Sendable {
    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var rmsNormEps: Float
    public var ropeTheta: Float
    public var ropeScaling: RopeScaling?
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool

    enum CodingKeys: String, CodingKey {
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case vocabSize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
    }

    public init(modelType: String, hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int,
                numAttentionHeads: Int, numKeyValueHeads: Int, headDim: Int? = nil, rmsNormEps: Float,
                ropeTheta: Float, ropeScaling: RopeScaling?, vocabSize: Int, maxPositionEmbeddings: Int,
                tieWordEmbeddings: Bool, attentionBias: Bool) {
        self.modelType = modelType; self.hiddenSize = hiddenSize; self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers; self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.headDim = headDim ?? Self.derivedHeadDim(hidden: hiddenSize, heads: numAttentionHeads)
        self.rmsNormEps = rmsNormEps; self.ropeTheta = ropeTheta; self.ropeScaling = ropeScaling
        self.vocabSize = vocabSize; self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings; self.attentionBias = attentionBias
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        modelType = try c.decodeIfPresent(String.self, forKey: .modelType) ?? "llama"
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        let givenHeadDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        headDim = givenHeadDim ?? Self.derivedHeadDim(hidden: hiddenSize, heads: numAttentionHeads)
        rmsNormEps = try c.decodeIfPresent(Float.self, forKey: .rmsNormEps) ?? 1e-6
        // transformers 5 writes `rope_parameters` (theta included); 4.x `rope_theta` + `rope_scaling`.
        let parameters = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeParameters)
        ropeTheta = try c.decodeIfPresent(Float.self, forKey: .ropeTheta) ?? parameters?.theta ?? 10000
        ropeScaling = try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling)
            ?? parameters.flatMap { $0.kind == "default" ? nil : $0 }
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 4096
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        // Qwen2 always has q/k/v biases and says so only through its model type.
        attentionBias = try c.decodeIfPresent(Bool.self, forKey: .attentionBias) ?? (modelType == "qwen2")
        do { try validate(keys: .json, headDimGiven: givenHeadDim != nil) } catch let e as ConfigValueError {
            throw e.nested(under: decoder.codingPath)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(modelType, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(rmsNormEps, forKey: .rmsNormEps)
        try c.encode(ropeTheta, forKey: .ropeTheta)
        try c.encodeIfPresent(ropeScaling, forKey: .ropeScaling)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
    }

    /// The most positions the model was trained for (config.json's `max_position_embeddings`,
    /// GGUF's `<arch>.context_length`): prompts, replies, training rows and the KV cache stay within it.
    public var contextLength: Int { maxPositionEmbeddings }

    /// Bytes a forward pass over `rows` sequences of `length` positions allocates. Recording (for a
    /// backward pass) keeps each layer's intermediates and attention probabilities, or with
    /// `checkpointing` each layer's input and one layer's intermediates at a time (recomputed in
    /// the backward pass); inference reuses one layer's buffers and keeps a `[length, length]`
    /// score matrix per thread. An estimate from the shapes, made before anything is allocated:
    /// the order of magnitude is what matters (a row 100× too long must be refused, not run into
    /// the allocator).
    public func activationBytes(rows: Int, length: Int, recording: Bool, checkpointing: Bool = false) -> Double {
        let t = Double(rows) * Double(length), d = Double(hiddenSize), f = Double(intermediateSize)
        let q = Double(numAttentionHeads * headDim), kv = Double(numKeyValueHeads * headDim)
        let perPosition = 6 * d + 3 * q + 4 * kv + 4 * f
        let scores = recording ? Double(numAttentionHeads) * Double(rows) * Double(length) * Double(length)
                               : Double(Parallel.threads) * Double(length) * Double(length)
        let layers = recording && !checkpointing ? Double(numHiddenLayers) : 1
        // Checkpointing keeps every layer's input.
        let inputs = recording && checkpointing ? Double(numHiddenLayers) * t * d : 0
        // Gradients of the recorded intermediates are about as large again during backward.
        let backward = recording ? 2.0 : 1.0
        return 4 * (layers * backward * (t * perPosition + scores) + inputs + Double(vocabSize) * min(t, 256))
    }

    public static let supportedTypes: Set<String> = ["llama", "mistral", "qwen2"]

    /// The configuration a GGUF file describes in its `<arch>.*` metadata keys, checked against
    /// the tensors before anything is sized from it.
    public init(gguf: GGUFFile) throws {
        let m = gguf.metadata, file = gguf.path
        guard let arch = m["general.architecture"]?.string else { throw FormatError(file, "general.architecture missing") }
        guard ["llama", "mistral", "qwen2"].contains(arch) else {
            throw FormatError(file, "unsupported architecture '\(arch)' (supported: llama, mistral, qwen2)")
        }
        func int(_ key: String) throws -> Int {
            guard let v = m["\(arch).\(key)"]?.int else { throw FormatError(file, "\(arch).\(key) missing or not an integer") }
            return v
        }
        let heads = try int("attention.head_count")
        let hidden = try int("embedding_length")
        guard let embed = gguf.info("token_embd.weight"), embed.shape.count == 2 else {
            throw FormatError(file, "token_embd.weight missing or not 2-D")
        }
        var scaling: RopeScaling?
        if let kind = m["\(arch).rope.scaling.type"]?.string, kind != "none" {
            scaling = RopeScaling(kind: kind, factor: Float(m["\(arch).rope.scaling.factor"]?.double ?? 1),
                                  originalMaxPositions: m["\(arch).rope.scaling.original_context_length"]?.int)
        }
        let givenHeadDim = m["\(arch).attention.key_length"]?.int ?? m["\(arch).rope.dimension_count"]?.int
        self.init(
            modelType: arch, hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
            numHiddenLayers: try int("block_count"), numAttentionHeads: heads,
            numKeyValueHeads: m["\(arch).attention.head_count_kv"]?.int ?? heads, headDim: givenHeadDim,
            rmsNormEps: Float(m["\(arch).attention.layer_norm_rms_epsilon"]?.double ?? 1e-5),
            ropeTheta: Float(m["\(arch).rope.freq_base"]?.double ?? 10000), ropeScaling: scaling,
            vocabSize: embed.shape[0], maxPositionEmbeddings: m["\(arch).context_length"]?.int ?? 4096,
            tieWordEmbeddings: gguf.info("output.weight") == nil, attentionBias: gguf.info("blk.0.attn_q.bias") != nil)
        do {
            try validate(keys: .gguf(arch), headDimGiven: givenHeadDim != nil)
            try checkTensors(of: gguf, keys: .gguf(arch))
        } catch let e as ConfigValueError {
            throw FormatError(file, e.description)
        }
    }
}

// MARK: - Validation

extension LlamaConfiguration {
    /// The names a file gives the values `validate` checks: config.json keys or GGUF metadata keys.
    struct Keys {
        let hidden, intermediate, layers, heads, kvHeads, headDim, vocab, positions, eps, theta, ropeFactor, ropeOriginal: String

        static let json = Keys(
            hidden: "hidden_size", intermediate: "intermediate_size", layers: "num_hidden_layers",
            heads: "num_attention_heads", kvHeads: "num_key_value_heads", headDim: "head_dim", vocab: "vocab_size",
            positions: "max_position_embeddings", eps: "rms_norm_eps", theta: "rope_theta",
            ropeFactor: "rope_scaling.factor", ropeOriginal: "rope_scaling.original_max_position_embeddings")

        static func gguf(_ arch: String) -> Keys {
            Keys(hidden: "\(arch).embedding_length", intermediate: "\(arch).feed_forward_length", layers: "\(arch).block_count",
                 heads: "\(arch).attention.head_count", kvHeads: "\(arch).attention.head_count_kv",
                 headDim: "\(arch).attention.key_length", vocab: "token_embd.weight rows", positions: "\(arch).context_length",
                 eps: "\(arch).attention.layer_norm_rms_epsilon", theta: "\(arch).rope.freq_base",
                 ropeFactor: "\(arch).rope.scaling.factor", ropeOriginal: "\(arch).rope.scaling.original_context_length")
        }
    }

    /// Bounds well above any released model; past them a count is corrupt and sizing from it
    /// would trap or ask for terabytes.
    static let maxLayers = 1024, maxHidden = 1 << 16, maxIntermediate = 1 << 18, maxHeads = 1024
    static let maxHeadDim = 4096, maxVocabulary = 1 << 22, maxPositions = 1 << 24

    /// hidden / heads when the file gives no head size; 0 (refused by `validate`) when heads is not positive.
    static func derivedHeadDim(hidden: Int, heads: Int) -> Int { heads > 0 ? hidden / heads : 0 }

    /// Every count and size in a range a model can be built with, and the head sizes consistent.
    func validate(keys: Keys, headDimGiven: Bool) throws {
        try ConfigValueError.check(keys.layers, numHiddenLayers, in: 1...Self.maxLayers)
        try ConfigValueError.check(keys.hidden, hiddenSize, in: 1...Self.maxHidden)
        try ConfigValueError.check(keys.intermediate, intermediateSize, in: 1...Self.maxIntermediate)
        try ConfigValueError.check(keys.heads, numAttentionHeads, in: 1...Self.maxHeads)
        try ConfigValueError.check(keys.kvHeads, numKeyValueHeads, in: 1...numAttentionHeads)
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw ConfigValueError(keys.heads, "\(numAttentionHeads) is not a multiple of \(keys.kvHeads) \(numKeyValueHeads)")
        }
        if !headDimGiven && hiddenSize % numAttentionHeads != 0 {
            throw ConfigValueError(keys.hidden, "\(hiddenSize) is not a multiple of \(keys.heads) \(numAttentionHeads)")
        }
        try ConfigValueError.check(keys.headDim, headDim, in: 2...Self.maxHeadDim)
        guard headDim % 2 == 0 else { throw ConfigValueError(keys.headDim, "\(headDim) is odd; rotary embeddings rotate pairs") }
        try ConfigValueError.check(keys.vocab, vocabSize, in: 1...Self.maxVocabulary)
        try ConfigValueError.check(keys.positions, maxPositionEmbeddings, in: 1...Self.maxPositions)
        try ConfigValueError.checkPositive(keys.eps, Double(rmsNormEps))
        try ConfigValueError.checkPositive(keys.theta, Double(ropeTheta))
        if let ropeScaling {
            try ConfigValueError.checkPositive(keys.ropeFactor, Double(ropeScaling.factor))
            if let original = ropeScaling.originalMaxPositions {
                try ConfigValueError.check(keys.ropeOriginal, original, in: 1...Self.maxPositions)
            }
        }
    }

    /// A GGUF file's counts against its tensors: the block count, and the sizes the first
    /// block's projections and the tokenizer imply.
    func checkTensors(of gguf: GGUFFile, keys: Keys) throws {
        let blocks = Set(gguf.tensorInfos.compactMap { Self.blockIndex($0.name) })
        guard blocks.count == numHiddenLayers, blocks.max() == numHiddenLayers - 1 else {
            let held = blocks.isEmpty ? "none" : "\(blocks.count), numbered \(blocks.min()!)…\(blocks.max()!)"
            throw ConfigValueError(keys.layers, "\(numHiddenLayers) does not match the tensors' blocks (\(held))")
        }
        let expected: [(tensor: String, key: String, shape: [Int])] = [
            ("token_embd.weight", keys.hidden, [vocabSize, hiddenSize]),
            ("blk.0.attn_q.weight", keys.heads, [numAttentionHeads * headDim, hiddenSize]),
            ("blk.0.attn_k.weight", keys.kvHeads, [numKeyValueHeads * headDim, hiddenSize]),
            ("blk.0.ffn_up.weight", keys.intermediate, [intermediateSize, hiddenSize]),
        ]
        for e in expected {
            // A missing tensor is the weight loader's to report, by its name.
            guard let info = gguf.info(e.tensor) else { continue }
            guard info.shape == e.shape else {
                throw ConfigValueError(e.key, "does not match tensor \(e.tensor) \(info.shape) (the metadata implies \(e.shape))")
            }
        }
        let m = gguf.metadata
        if let declared = m["\(modelType).vocab_size"], declared.int != vocabSize {
            throw ConfigValueError("\(modelType).vocab_size", "\(declared.int.map(String.init) ?? "\(declared)") differs from token_embd.weight's \(vocabSize) rows")
        }
        if let tokens = m["tokenizer.ggml.tokens"]?.array, tokens.count > vocabSize {
            throw ConfigValueError("tokenizer.ggml.tokens", "has \(tokens.count) tokens, more than token_embd.weight's \(vocabSize) rows")
        }
    }

    /// `n` of a GGUF tensor name `blk.n.…`.
    static func blockIndex(_ name: String) -> Int? {
        guard name.hasPrefix("blk.") else { return nil }
        return Int(name.dropFirst(4).prefix { $0 != "." })
    }
}

// MARK: - Weight names

public enum LlamaWeights {
    /// GGUF tensor names → Hugging Face names, so one loader serves both formats.
    /// `rope_freqs.weight` (llama3 frequency factors) keeps its name.
    public static func sanitizeGGUF(_ name: String) -> String? {
        let top = ["token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                   "output.weight": "lm_head.weight", "rope_freqs.weight": "rope_freqs.weight"]
        if let n = top[name] { return n }
        let parts = name.split(separator: ".", maxSplits: 2).map(String.init)
        guard parts.count == 3, parts[0] == "blk", let layer = Int(parts[1]) else { return name }
        let sub = ["attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"]
        let pieces = parts[2].split(separator: ".", maxSplits: 1).map(String.init)
        guard pieces.count == 2, let mapped = sub[pieces[0]] else { return name }
        return "model.layers.\(layer).\(mapped).\(pieces[1])"
    }

    /// HF checkpoints: drops rotary caches old exports carry (recomputed here).
    public static func sanitizeHF(_ name: String) -> String? {
        name.hasSuffix("rotary_emb.inv_freq") ? nil : name
    }
}

// MARK: - Model

/// What a decoder pass's rows are and what they attend to.
public enum DecoderPass {
    /// Inference: one sequence continuing the cache's positions; its keys and values are appended.
    case cached(KVCache)
    /// Training: independent right-padded sequences, each from position 0.
    case batch(SequenceLayout)
}

public final class LlamaModel: @unchecked Sendable {
    package struct Layer {
        package let inputNorm: Variable
        package var q, k, v, o: Linear
        package let postAttentionNorm: Variable
        package var gate, up, down: Linear
    }

    public let config: LlamaConfiguration
    package let embedTokens: QuantizedMatrix   // [vocab, hidden]
    package var layers: [Layer]
    package let norm: Variable
    package let lmHead: Linear
    package let rope: RoPE
    /// Logits of the last position of the most recent forward.
    public let logits: FloatStorage
    /// Generation's tape: its buffers are reused from one decode step to the next.
    private let inferenceTape = Tape.reusingBuffers()

    /// Loads from canonical (HF) names; every weight must be used exactly as expected.
    public init(config: LlamaConfiguration, weights: WeightMap, ropePairing: RoPE.Pairing) throws {
        do { try config.validate(keys: .json, headDimGiven: true) } catch let e as ConfigValueError {
            throw FormatError(weights.file, e.description)
        }
        self.config = config
        let d = config.hiddenSize, f = config.intermediateSize, hd = config.headDim
        let qDim = config.numAttentionHeads * hd, kvDim = config.numKeyValueHeads * hd
        func linear(_ name: String, _ out: Int, _ inp: Int, bias: Bool = false) throws -> Linear {
            Linear(weight: try weights.matrix("\(name).weight", shape: [out, inp]),
                   bias: bias ? try weights.floats("\(name).bias", shape: [out]) : nil)
        }
        func normWeight(_ name: String) throws -> Variable { Variable(try weights.floats(name, shape: [d])) }
        embedTokens = try weights.matrix("model.embed_tokens.weight", shape: [config.vocabSize, d])
        layers = try (0..<config.numHiddenLayers).map { i in
            let p = "model.layers.\(i)."
            return Layer(
                inputNorm: try normWeight(p + "input_layernorm.weight"),
                q: try linear(p + "self_attn.q_proj", qDim, d, bias: config.attentionBias),
                k: try linear(p + "self_attn.k_proj", kvDim, d, bias: config.attentionBias),
                v: try linear(p + "self_attn.v_proj", kvDim, d, bias: config.attentionBias),
                o: try linear(p + "self_attn.o_proj", d, qDim),
                postAttentionNorm: try normWeight(p + "post_attention_layernorm.weight"),
                gate: try linear(p + "mlp.gate_proj", f, d),
                up: try linear(p + "mlp.up_proj", f, d),
                down: try linear(p + "mlp.down_proj", d, f))
        }
        norm = try normWeight("model.norm.weight")
        if config.tieWordEmbeddings && !weights.contains("lm_head.weight") {
            lmHead = Linear(weight: embedTokens)
        } else {
            lmHead = try linear("lm_head", config.vocabSize, d)
        }
        let factors = weights.contains("rope_freqs.weight") ? try weights.floats("rope_freqs.weight").array : nil
        rope = RoPE(headDim: hd, base: config.ropeTheta, scaling: config.ropeScaling, pairing: ropePairing, frequencyFactors: factors)
        try weights.finish()
        logits = FloatStorage(count: config.vocabSize, zeroed: true)
    }

    public var vocabularySize: Int { config.vocabSize }

    /// The linear layers LoRA can target, by their Hugging Face module names
    /// (`model.layers.0.self_attn.q_proj`, ...), in layer order.
    public var linearModuleNames: [String] {
        (0..<layers.count).flatMap { i in
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"].map { "model.layers.\(i).\($0)" }
        }
    }

    /// The linear layer of a module name from `linearModuleNames`.
    package func linear(named name: String) -> Linear? {
        guard let (i, path) = Self.splitModuleName(name), i < layers.count else { return nil }
        return layers[i][keyPath: Self.linearPaths[path]!]
    }

    /// Replaces every adapter: modules not in `adapters` run without one. Names are from
    /// `linearModuleNames`; an unknown name is an error.
    public func setAdapters(_ adapters: [String: LowRankAdapter]) throws {
        for name in adapters.keys {
            guard let (i, path) = Self.splitModuleName(name), i < layers.count else { throw ModelError("no linear layer '\(name)' in this model") }
            let l = layers[i][keyPath: Self.linearPaths[path]!]
            let a = adapters[name]!
            guard a.inFeatures == l.inFeatures, a.outFeatures == l.outFeatures else {
                throw ModelError("adapter for '\(name)' is \(a.outFeatures)×\(a.inFeatures); the layer is \(l.outFeatures)×\(l.inFeatures)")
            }
        }
        for i in layers.indices {
            for (path, keyPath) in Self.linearPaths {
                layers[i][keyPath: keyPath].adapter = adapters["model.layers.\(i).\(path)"]
            }
        }
    }

    nonisolated(unsafe) static let linearPaths: [String: WritableKeyPath<Layer, Linear>] = [
        "self_attn.q_proj": \.q, "self_attn.k_proj": \.k, "self_attn.v_proj": \.v, "self_attn.o_proj": \.o,
        "mlp.gate_proj": \.gate, "mlp.up_proj": \.up, "mlp.down_proj": \.down,
    ]

    static func splitModuleName(_ name: String) -> (Int, String)? {
        let parts = name.split(separator: ".", maxSplits: 3).map(String.init)
        guard parts.count == 4, parts[0] == "model", parts[1] == "layers", let i = Int(parts[2]),
              linearPaths[parts[3]] != nil else { return nil }
        return (i, parts[3])
    }

    /// A KV cache for `capacity` positions, never more than the context (it cannot grow past it).
    public func makeCache(capacity: Int = 256, precision: KVCachePrecision = .current) -> KVCache {
        let limit = max(config.contextLength, 1)
        return KVCache(layers: config.numHiddenLayers, width: config.numKeyValueHeads * config.headDim,
                       capacity: min(capacity, limit), limit: limit, precision: precision)
    }

    /// Rows `tokens` of the embedding table into `out` `[tokens, hidden]`.
    public func embed(_ tokens: [Int], into out: UnsafeMutablePointer<Float>) throws {
        for (t, id) in tokens.enumerated() {
            guard id >= 0, id < config.vocabSize else { throw ModelError("token id \(id) outside the vocabulary (0..<\(config.vocabSize))") }
            embedTokens.dequantizeRow(id, into: out + t * config.hiddenSize)
        }
    }

    /// Runs `tokens` after the cached positions and returns the logits of the last one.
    @discardableResult
    public func forward(tokens: [Int], cache: KVCache) throws -> UnsafeBufferPointer<Float> {
        try requireMemory(positions: tokens.count, cache: cache)
        let x = Tensor(shape: [tokens.count, config.hiddenSize], zeroed: false)
        try embed(tokens, into: x.data)
        return lastLogits(Variable(x), cache: cache)
    }

    /// Runs input embeddings `[n, hidden]` (text and image features spliced) after the cached positions.
    @discardableResult
    public func forward(embeddings: UnsafePointer<Float>, count n: Int, cache: KVCache) throws -> UnsafeBufferPointer<Float> {
        try requireMemory(positions: n, cache: cache)
        let x = Tensor(shape: [n, config.hiddenSize], zeroed: false)
        x.data.update(from: embeddings, count: n * config.hiddenSize)
        return lastLogits(Variable(x), cache: cache)
    }

    /// Checks what running `positions` more positions allocates (activations, and the cache's
    /// growth) against the memory budget. A decode step that fits the cache allocates nothing
    /// new and is not checked (no file read per token).
    private func requireMemory(positions: Int, cache: KVCache) throws {
        let growth = max(0, cache.count + positions - cache.capacity)
        guard positions > 1 || growth > 0 else { return }
        // The cache doubles: count what it grows to, not just the positions asked for.
        let grownCapacity = growth > 0 ? Double(max(2 * cache.capacity, cache.count + positions)) : 0
        // A chunk after cached positions reads an f16 cache widened to Float32, one layer at a time.
        let widened = cache.precision == .f16 && cache.count > 0 && positions > 1
            ? Double(2 * (cache.count + positions) * cache.width * 4) : 0
        let bytes = config.activationBytes(rows: 1, length: positions, recording: false)
            + grownCapacity * Double(cache.bytesPerPosition) + widened
        try MemoryBudget.require(bytes, for: "a forward pass over \(positions) positions after \(cache.count)")
    }

    private func lastLogits(_ x: Variable, cache: KVCache) -> UnsafeBufferPointer<Float> {
        let tape = inferenceTape
        tape.rewind()
        let hidden = hiddenStates(x, pass: .cached(cache), tape: tape)
        // Only the last position's logits are needed to pick the next token.
        let last = tape.gather(hidden, indices: [hidden.rows - 1])
        let out = tape.linear(tape.rmsNorm(last, weight: norm, eps: config.rmsNormEps), lmHead)
        logits.pointer.update(from: out.data, count: config.vocabSize)
        return UnsafeBufferPointer(start: logits.pointer, count: config.vocabSize)
    }

    /// Hidden states after the last layer (before the final norm), `[rows, hidden]`: the one
    /// forward of the decoder, for generation (`.cached`) and training (`.batch`, on a recording
    /// tape, LoRA dropout drawing from the tape's random stream).
    public func hiddenStates(_ input: Variable, pass: DecoderPass, tape: Tape) -> Variable {
        var x = input
        let start: Int
        if case .cached(let cache) = pass { start = cache.count } else { start = 0 }
        // Each layer is a segment: under gradient checkpointing only its input is kept.
        for l in layers.indices {
            x = tape.segment(x) { x, tape in self.layer(l, x, pass: pass, start: start, tape: tape) }
        }
        if case .cached(let cache) = pass { cache.advance(input.rows) }
        return x
    }

    /// x + attention(norm x), then + mlp(norm x): layer `l`.
    private func layer(_ l: Int, _ x: Variable, pass: DecoderPass, start: Int, tape: Tape) -> Variable {
        let c = config, layer = layers[l]
        // Attention block: x += o(attention(rope(q(norm x)), rope(k(norm x)), v(norm x)))
        let h = tape.rmsNorm(x, weight: layer.inputNorm, eps: c.rmsNormEps)
        var q = tape.linear(h, layer.q), k = tape.linear(h, layer.k)
        let v = tape.linear(h, layer.v)
        let a: Variable
        switch pass {
        case .cached(let cache):
            let positions = SequenceLayout(batch: 1, length: x.rows, start: start)
            q = tape.rope(q, rope, heads: c.numAttentionHeads, layout: positions)
            k = tape.rope(k, rope, heads: c.numKeyValueHeads, layout: positions)
            a = tape.cachedAttention(q: q, k: k, v: v, heads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads,
                                     headDim: c.headDim, cache: cache, layer: l, start: start)
        case .batch(let layout):
            q = tape.rope(q, rope, heads: c.numAttentionHeads, layout: layout)
            k = tape.rope(k, rope, heads: c.numKeyValueHeads, layout: layout)
            a = tape.attention(q: q, k: k, v: v, heads: c.numAttentionHeads, kvHeads: c.numKeyValueHeads,
                               headDim: c.headDim, layout: layout, causal: true)
        }
        let attended = tape.add(x, tape.linear(a, layer.o))
        // MLP block: x += down(silu(gate(norm x)) · up(norm x))
        let h2 = tape.rmsNorm(attended, weight: layer.postAttentionNorm, eps: c.rmsNormEps)
        let mlp = tape.swiglu(tape.linear(h2, layer.gate), tape.linear(h2, layer.up))
        return tape.add(attended, tape.linear(mlp, layer.down))
    }
}

/// A model-level error (bad token id, unsupported configuration) with a one-line message.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

import Foundation
import VLMFormats
import VLMTensor

// The ViT shared by CLIP and SigLIP: patch embedding (a conv with stride = kernel, done as one
// linear over unfolded patches), learned position embeddings, pre-norm encoder layers with
// bidirectional attention and a two-layer MLP. Weights are Float32 graph leaves: every call is
// batched over hundreds of tokens, and a fine-tune can train them in place. One forward serves
// encoding (a tape that does not record) and training (a recording tape, a batch of images).

/// A vision tower that turns one preprocessed image into per-layer token features.
public protocol VisionTower: AnyObject, Sendable {
    var hiddenSize: Int { get }
    var imageSize: Int { get }
    var layerCount: Int { get }
    /// Tokens per image: one per patch, plus the class token when the tower has one.
    var tokenCount: Int { get }
    /// Whether token 0 is a class token (CLIP) rather than a patch (SigLIP).
    var hasClassToken: Bool { get }
    /// Hidden states in transformers' `output_hidden_states` indexing: 0 is the encoder input
    /// (embeddings, after `pre_layrnorm` for CLIP), i the output of layer i. Negative indices
    /// count from the end like Python's (-1 = last layer, -2 = the one LLaVA uses) and come back
    /// under the key they were asked by. Each value is `[tokenCount, hiddenSize]`. Layers past the
    /// deepest requested one are not run. `pixels` is `[channels, imageSize, imageSize]`.
    func hiddenStates(pixels: Tensor, layers: Set<Int>) throws -> [Int: Tensor]
}

extension Linear {
    /// A Float32 layer `name` of a checkpoint (weight `[out, in]`, optional bias `[out]`).
    init(_ weights: WeightMap, _ name: String, out: Int, in inp: Int, bias: Bool = true) throws {
        self.init(dense: try weights.floats(name + ".weight", shape: [out, inp]),
                  bias: bias ? try weights.floats(name + ".bias", shape: [out]) : nil)
    }

    /// The layer's leaves under their checkpoint names (`name.weight`, `name.bias`).
    func namedLeaves(_ name: String) -> [(String, Variable)] {
        [(name + ".weight", weightLeaf!)] + (bias.map { [(name + ".bias", $0)] } ?? [])
    }
}

/// LayerNorm weight and bias.
package struct LayerNormParameters: @unchecked Sendable {
    package let weight: Variable
    package let bias: Variable

    init(_ weights: WeightMap, _ name: String, size: Int) throws {
        weight = Variable(try weights.floats(name + ".weight", shape: [size]))
        bias = Variable(try weights.floats(name + ".bias", shape: [size]))
    }

    func apply(_ x: Variable, eps: Float, tape: Tape) -> Variable {
        tape.layerNorm(x, weight: weight, bias: bias, eps: eps)
    }

    func namedLeaves(_ name: String) -> [(String, Variable)] { [(name + ".weight", weight), (name + ".bias", bias)] }
}

/// The hyperparameters both towers share, from their configurations.
package struct VisionShape: Sendable {
    package let hidden, intermediate, layers, heads, channels, imageSize, patchSize: Int
    package let eps: Float
    package let activation: Activation
    package var headDim: Int { hidden / heads }
    package var grid: Int { imageSize / patchSize }
    package var patches: Int { grid * grid }
    package var patchWidth: Int { channels * patchSize * patchSize }

    /// The conv's input as rows: patch (gy, gx) of `pixels` `[channels, imageSize, imageSize]`
    /// becomes row gy·grid + gx of `out` `[patches, patchWidth]`, laid out (channel, ky, kx) like
    /// the conv weight; pixels past the last whole patch are dropped (valid padding).
    package func unfold(_ pixels: Tensor, into out: UnsafeMutablePointer<Float>) {
        let p = patchSize, size = imageSize, grid = self.grid, rowWidth = patchWidth, channels = self.channels
        let src = pixels.data
        Parallel.forEach(patches, minChunk: 16) { range in
            for patch in range {
                let gy = patch / grid, gx = patch % grid
                var dst = out + patch * rowWidth
                for c in 0..<channels {
                    for ky in 0..<p {
                        dst.update(from: src + (c * size + gy * p + ky) * size + gx * p, count: p)
                        dst += p
                    }
                }
            }
        }
    }

    /// Bounds well above any released vision tower; past them a size is corrupt, and
    /// `patches` (grid²) or the weights sized from it would overflow or ask for terabytes.
    static let maxHidden = 1 << 14, maxIntermediate = 1 << 16, maxLayers = 1024, maxHeads = 1024
    static let maxChannels = 16, maxImageSize = 8192, maxPatches = 1 << 16

    /// Every size in range and consistent (the keys as config.json spells them).
    func check() throws {
        try ConfigValueError.check("hidden_size", hidden, in: 1...Self.maxHidden)
        try ConfigValueError.check("num_attention_heads", heads, in: 1...Self.maxHeads)
        guard hidden % heads == 0 else {
            throw ConfigValueError("hidden_size", "\(hidden) is not a multiple of num_attention_heads \(heads)")
        }
        try ConfigValueError.check("intermediate_size", intermediate, in: 1...Self.maxIntermediate)
        try ConfigValueError.check("num_hidden_layers", layers, in: 0...Self.maxLayers)
        try ConfigValueError.check("num_channels", channels, in: 1...Self.maxChannels)
        try ConfigValueError.check("image_size", imageSize, in: 1...Self.maxImageSize)
        // Not necessarily a multiple: SigLIP-so400m is 384 with patch 14, and the conv's valid
        // padding drops the last 384 mod 14 pixel rows and columns.
        try ConfigValueError.check("patch_size", patchSize, in: 1...imageSize)
        guard patches <= Self.maxPatches else {
            throw ConfigValueError("image_size", "\(imageSize) with patch_size \(patchSize) makes \(patches) patches (at most \(Self.maxPatches))")
        }
        guard eps.isFinite, eps > 0 else { throw ConfigValueError("layer_norm_eps", "\(eps) must be a finite number above 0") }
    }

    func validate(file: String) throws {
        do { try check() } catch let e as ConfigValueError { throw FormatError(file, e.description) }
    }
}

/// One pre-norm encoder layer: x += out(attention(norm1 x)); x += fc2(act(fc1(norm2 x))).
/// The tensors are the checkpoint's own (q, k and v apart, unscaled), so a fine-tune can train
/// them in place.
package struct VisionEncoderLayer: @unchecked Sendable {
    package let norm1: LayerNormParameters
    package let q, k, v, out: Linear
    package let norm2: LayerNormParameters
    package let fc1, fc2: Linear

    init(_ weights: WeightMap, _ p: String, shape s: VisionShape) throws {
        let d = s.hidden
        norm1 = try LayerNormParameters(weights, p + "layer_norm1", size: d)
        q = try Linear(weights, p + "self_attn.q_proj", out: d, in: d)
        k = try Linear(weights, p + "self_attn.k_proj", out: d, in: d)
        v = try Linear(weights, p + "self_attn.v_proj", out: d, in: d)
        out = try Linear(weights, p + "self_attn.out_proj", out: d, in: d)
        norm2 = try LayerNormParameters(weights, p + "layer_norm2", size: d)
        fc1 = try Linear(weights, p + "mlp.fc1", out: s.intermediate, in: d)
        fc2 = try Linear(weights, p + "mlp.fc2", out: d, in: s.intermediate)
    }

    /// The layer's leaves under their checkpoint names relative to the layer (`self_attn.q_proj.weight`, …).
    var namedLeaves: [(String, Variable)] {
        norm1.namedLeaves("layer_norm1") + q.namedLeaves("self_attn.q_proj") + k.namedLeaves("self_attn.k_proj")
            + v.namedLeaves("self_attn.v_proj") + out.namedLeaves("self_attn.out_proj")
            + norm2.namedLeaves("layer_norm2") + fc1.namedLeaves("mlp.fc1") + fc2.namedLeaves("mlp.fc2")
    }

    /// x `[images·tokens, hidden]` → the layer's output; attention stays within each image.
    func forward(_ x: Variable, layout: SequenceLayout, shape s: VisionShape, tape: Tape) -> Variable {
        let h = norm1.apply(x, eps: s.eps, tape: tape)
        let a = tape.attention(q: tape.linear(h, q), k: tape.linear(h, k), v: tape.linear(h, v), heads: s.heads, kvHeads: s.heads,
                               headDim: s.headDim, layout: layout, causal: false)
        let attended = tape.add(x, tape.linear(a, out))
        let h2 = norm2.apply(attended, eps: s.eps, tape: tape)
        return tape.add(attended, tape.linear(tape.activation(tape.linear(h2, fc1), s.activation), fc2))
    }
}

/// The ViT both towers are: embeddings, optional class token and pre-norm, encoder layers.
package final class VisionTransformer: @unchecked Sendable {
    package let shape: VisionShape
    /// Conv weight `[hidden, channels, p, p]`, as the checkpoint stores it.
    package let patchWeight: Tensor
    /// The conv as a linear over unfolded patches: `patchWeight` viewed as `[hidden, channels·p·p]`.
    package let patchEmbedding: Linear
    package let classEmbedding: Variable?     // [1, hidden]
    package let positionEmbedding: Variable   // [tokens, hidden]
    package let preNorm: LayerNormParameters?
    package let preNormName: String?
    package let layers: [VisionEncoderLayer]
    package let postNorm: LayerNormParameters?

    package var tokenCount: Int { shape.patches + (classEmbedding == nil ? 0 : 1) }

    /// Every leaf under its checkpoint name relative to the tower (`embeddings.patch_embedding.weight`,
    /// `encoder.layers.0.self_attn.q_proj.weight`, …), in checkpoint order: the one list of the
    /// tower's weight names.
    package var namedLeaves: [(String, Variable)] {
        var out: [(String, Variable)] = []
        if let classEmbedding { out.append(("embeddings.class_embedding", classEmbedding)) }
        out += patchEmbedding.namedLeaves("embeddings.patch_embedding")
        out.append(("embeddings.position_embedding.weight", positionEmbedding))
        if let preNorm, let preNormName { out += preNorm.namedLeaves(preNormName) }
        for (i, layer) in layers.enumerated() { out += layer.namedLeaves.map { ("encoder.layers.\(i)." + $0.0, $0.1) } }
        if let postNorm { out += postNorm.namedLeaves("post_layernorm") }
        return out
    }

    /// `namedLeaves` as the checkpoint stores them (the patch conv `[hidden, channels, p, p]`,
    /// the class embedding `[hidden]`); the tensors are the ones the tower computes with.
    package var namedTensors: [(String, Tensor)] {
        namedLeaves.map { name, leaf in
            switch name {
            case "embeddings.patch_embedding.weight": return (name, patchWeight)
            case "embeddings.class_embedding": return (name, Tensor(reshaping: leaf.value, to: [shape.hidden]))
            default: return (name, leaf.value)
            }
        }
    }

    /// The leaves that reach the hidden state `featureLayer` (transformers' indexing): what
    /// trains when the tower trains. Later layers and the post-norm never reach LLaVA's features.
    package func leaves(featureLayer: Int) throws -> [(String, Variable)] {
        let used = try resolve(featureLayer)
        return namedLeaves.filter { name, _ in
            if name.hasPrefix("post_layernorm.") { return false }
            guard name.hasPrefix("encoder.layers.") else { return true }
            return Int(name.dropFirst("encoder.layers.".count).prefix { $0 != "." })! < used
        }
    }

    /// `weights` is already scoped to the tower (keys like `embeddings.patch_embedding.weight`).
    init(shape s: VisionShape, weights: WeightMap, classToken: Bool, patchBias hasPatchBias: Bool, preNormName: String?) throws {
        try s.validate(file: weights.file)
        shape = s
        let d = s.hidden
        patchWeight = try weights.floats("embeddings.patch_embedding.weight", shape: [d, s.channels, s.patchSize, s.patchSize])
        patchEmbedding = Linear(dense: Tensor(reshaping: patchWeight, to: [d, s.patchWidth]),
                                bias: hasPatchBias ? try weights.floats("embeddings.patch_embedding.bias", shape: [d]) : nil)
        classEmbedding = classToken ? Variable(Tensor(reshaping: try weights.floats("embeddings.class_embedding", shape: [d]), to: [1, d])) : nil
        let tokens = s.patches + (classToken ? 1 : 0)
        positionEmbedding = Variable(try weights.floats("embeddings.position_embedding.weight", shape: [tokens, d]))
        preNorm = try preNormName.map { try LayerNormParameters(weights, $0, size: d) }
        self.preNormName = preNormName
        layers = try (0..<s.layers).map { try VisionEncoderLayer(weights, "encoder.layers.\($0).", shape: s) }
        // Only pooled / last_hidden_state outputs read it, never LLaVA; some exports drop it.
        postNorm = weights.contains("post_layernorm.weight") ? try LayerNormParameters(weights, "post_layernorm", size: d) : nil
        // Old exports store the position-id buffer (an integer arange); it is implied.
        weights.ignore(prefix: "embeddings.position_ids")
    }

    /// A hidden-state index in transformers' `output_hidden_states` numbering (negative from
    /// the end) as the number of layers run to reach it.
    package func resolve(_ index: Int) throws -> Int {
        let total = layers.count
        let resolved = index < 0 ? total + 1 + index : index
        guard resolved >= 0, resolved <= total else {
            throw ModelError("hidden state \(index) out of range for a \(total)-layer vision tower (-\(total + 1)...\(total))")
        }
        return resolved
    }

    func hiddenStates(pixels: Tensor, layers requested: Set<Int>) throws -> [Int: Tensor] {
        var wanted: [Int: [Int]] = [:]   // resolved index → the keys the caller used
        for index in requested { wanted[try resolve(index), default: []].append(index) }
        guard let deepest = wanted.keys.max() else { return [:] }
        var states: [Int: Tensor] = [:]
        _ = try forward([pixels], layers: deepest, tape: Tape(recording: false)) { resolved, x in
            for key in wanted[resolved] ?? [] { states[key] = x.value }
        }
        return states
    }

    /// Hidden state `featureLayer` of each image (`[channels, size, size]` each), the class token
    /// dropped when `dropClassToken`: `[images·rows, hidden]` stacked image by image. What LLaVA
    /// reads, and what a fine-tune that trains the tower back-propagates through.
    package func features(_ pixels: [Tensor], featureLayer: Int, dropClassToken: Bool, tape: Tape) throws -> Variable {
        let x = try forward(pixels, layers: try resolve(featureLayer), tape: tape)
        let tokens = tokenCount, n = pixels.count
        guard dropClassToken, classEmbedding != nil else { return x }
        return tape.gather(x, indices: (0..<n).flatMap { i in (i * tokens + 1)..<((i + 1) * tokens) })
    }

    /// The one forward: embeddings of every image, then `layers` encoder layers; `capture` sees
    /// hidden state i (0 = the embeddings after the pre-norm) as it is made.
    private func forward(_ pixels: [Tensor], layers count: Int, tape: Tape,
                         capture: (Int, Variable) -> Void = { _, _ in }) throws -> Variable {
        let s = shape, n = pixels.count, tokens = tokenCount
        var x = try embed(pixels, tape: tape)                                   // [n·tokens, hidden]
        capture(0, x)
        let layout = SequenceLayout(batch: n, length: tokens)
        for l in 0..<count {
            x = layers[l].forward(x, layout: layout, shape: s, tape: tape)
            capture(l + 1, x)
        }
        return x
    }

    /// Patch embeddings, class token and position embeddings, pre-norm: `[images·tokens, hidden]`.
    private func embed(_ pixels: [Tensor], tape: Tape) throws -> Variable {
        let s = shape, d = s.hidden, n = pixels.count, tokens = tokenCount
        let patches = Tensor(shape: [n * s.patches, s.patchWidth], zeroed: false)
        for (i, image) in pixels.enumerated() {
            guard image.shape == [s.channels, s.imageSize, s.imageSize] else {
                throw ModelError("pixels have shape \(image.shape); this vision tower takes [\(s.channels), \(s.imageSize), \(s.imageSize)]")
            }
            s.unfold(image, into: patches.data + i * s.patches * s.patchWidth)
        }
        var x = tape.linear(Variable(patches), patchEmbedding)                 // [n·patches, hidden]
        if let classEmbedding {
            let patchRows = (0..<n).flatMap { i in (i * tokens + 1)..<((i + 1) * tokens) }
            let empty = Variable(Tensor(shape: [n * tokens, d], zeroed: true))
            x = tape.scatterRows(tape.scatterRows(empty, positions: patchRows, source: x), positions: (0..<n).map { $0 * tokens },
                                 source: tape.gather(classEmbedding, indices: [Int](repeating: 0, count: n)))
        }
        x = tape.add(x, n == 1 ? positionEmbedding : tape.gather(positionEmbedding, indices: (0..<(n * tokens)).map { $0 % tokens }))
        if let preNorm { x = preNorm.apply(x, eps: s.eps, tape: tape) }
        return x
    }

    /// The last layer's output (transformers' encoder `last_hidden_state`).
    func lastLayerState(pixels: Tensor) throws -> Tensor {
        guard let state = try hiddenStates(pixels: pixels, layers: [layers.count])[layers.count] else {
            throw ModelError("vision tower produced no state for its last layer")
        }
        return state
    }

    /// `post_layernorm` of a `[tokens, hidden]` state.
    func applyPostNorm(_ state: Tensor) throws -> Tensor {
        guard let postNorm else { throw ModelError("this vision tower's checkpoint has no post_layernorm") }
        return postNorm.apply(Variable(state), eps: shape.eps, tape: Tape(recording: false)).value
    }
}

extension WeightMap {
    /// Marks every weight under `prefix` as used without loading it (checkpoint parts the
    /// model has no use for, such as SigLIP's pooling head).
    func ignore(prefix: String) { _ = scoped(prefix) }

    /// The tower's weights: keys under `vision_model.` (transformers 4.x, CLIPModel and LLaVA
    /// checkpoints), or at the top (a transformers 5 `*VisionModel` saved on its own).
    func visionTowerScope() -> WeightMap {
        contains("vision_model.embeddings.patch_embedding.weight") ? scoped("vision_model.") : self
    }
}

extension KeyedDecodingContainer {
    /// `image_size` / `patch_size`: an integer, or a `[height, width]` pair that must be square.
    func decodeSquareSize(_ key: Key, default value: Int) throws -> Int {
        guard contains(key) else { return value }
        if let n = try? decode(Int.self, forKey: key) { return n }
        let pair = try decode([Int].self, forKey: key)
        guard pair.count == 2, pair[0] == pair[1] else {
            throw DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: "only square sizes are supported, got \(pair)")
        }
        return pair[0]
    }
}

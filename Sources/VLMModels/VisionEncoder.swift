import Foundation
import VLMFormats
import VLMTensor

// The ViT shared by CLIP and SigLIP: patch embedding (a conv with stride = kernel, done as one
// sgemm over unfolded patches), learned position embeddings, pre-norm encoder layers with
// bidirectional attention and a two-layer MLP. Weights are Float32: every call is batched over
// hundreds of tokens, so sgemm on dequantized-once weights beats anything quantized.

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

/// y = x·Wᵀ with W `[out, in]` in Float32; the bias is applied by the caller so it can be fused
/// into the next pass over the output.
package struct DenseLinear: @unchecked Sendable {
    package let weight: Tensor
    package let bias: Tensor?
    package var outFeatures: Int { weight.shape[0] }
    package var inFeatures: Int { weight.shape[1] }

    package init(weight: Tensor, bias: Tensor?) { self.weight = weight; self.bias = bias }

    init(_ weights: WeightMap, _ name: String, out: Int, in inp: Int, bias: Bool = true) throws {
        weight = try weights.floats(name + ".weight", shape: [out, inp])
        self.bias = bias ? try weights.floats(name + ".bias", shape: [out]) : nil
    }

    /// y = x·Wᵀ, or y += x·Wᵀ when `accumulate` (residual connections without an extra pass).
    func multiply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool = false) {
        Kernels.matmulTransposed(x, weight.data, y, m: rows, n: outFeatures, k: inFeatures, accumulate: accumulate)
    }

    /// y = x·Wᵀ + b (+ y when `accumulate`).
    func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool = false) {
        multiply(x, y, rows: rows, accumulate: accumulate)
        if let bias { addRowBias(y, bias.data, rows: rows, width: outFeatures) }
    }
}

/// y[r, :] += bias for every row, threaded.
func addRowBias(_ y: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>, rows: Int, width: Int) {
    Parallel.forEach(rows, minChunk: max(1, 32768 / max(width, 1))) { range in
        for r in range { Kernels.axpy(1, bias, y + r * width, width) }
    }
}

/// LayerNorm weight and bias.
package struct LayerNormParameters: @unchecked Sendable {
    package let weight: Tensor
    package let bias: Tensor

    init(_ weights: WeightMap, _ name: String, size: Int) throws {
        weight = try weights.floats(name + ".weight", shape: [size])
        bias = try weights.floats(name + ".bias", shape: [size])
    }

    func apply(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, rows: Int, eps: Float) {
        Kernels.layerNorm(x, weight.data, bias.data, y, rows: rows, dim: weight.count, eps: eps)
    }
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

    func validate(file: String) throws {
        guard hidden > 0, heads > 0, hidden % heads == 0 else {
            throw FormatError(file, "hidden_size \(hidden) is not a multiple of num_attention_heads \(heads)")
        }
        // Not necessarily a multiple: SigLIP-so400m is 384 with patch 14, and the conv's valid
        // padding drops the last 384 mod 14 pixel rows and columns.
        guard patchSize > 0, imageSize >= patchSize else {
            throw FormatError(file, "image_size \(imageSize) is smaller than patch_size \(patchSize)")
        }
        guard layers >= 0, intermediate > 0, channels > 0 else {
            throw FormatError(file, "vision config has a non-positive size")
        }
    }
}

/// One pre-norm encoder layer: x += out(attention(norm1 x)); x += fc2(act(fc1(norm2 x))).
/// The tensors are the checkpoint's own (q, k and v apart, unscaled), so a fine-tune can train
/// them in place.
package struct VisionEncoderLayer: @unchecked Sendable {
    package let norm1: LayerNormParameters
    package let q, k, v, out: DenseLinear
    package let norm2: LayerNormParameters
    package let fc1, fc2: DenseLinear

    init(_ weights: WeightMap, _ p: String, shape s: VisionShape) throws {
        let d = s.hidden
        norm1 = try LayerNormParameters(weights, p + "layer_norm1", size: d)
        q = try DenseLinear(weights, p + "self_attn.q_proj", out: d, in: d)
        k = try DenseLinear(weights, p + "self_attn.k_proj", out: d, in: d)
        v = try DenseLinear(weights, p + "self_attn.v_proj", out: d, in: d)
        out = try DenseLinear(weights, p + "self_attn.out_proj", out: d, in: d)
        norm2 = try LayerNormParameters(weights, p + "layer_norm2", size: d)
        fc1 = try DenseLinear(weights, p + "mlp.fc1", out: s.intermediate, in: d)
        fc2 = try DenseLinear(weights, p + "mlp.fc2", out: d, in: s.intermediate)
    }

    /// The layer's tensors under their checkpoint names relative to the layer (`self_attn.q_proj.weight`, …).
    var namedTensors: [(String, Tensor)] {
        var out: [(String, Tensor)] = [("layer_norm1.weight", norm1.weight), ("layer_norm1.bias", norm1.bias)]
        for (name, linear) in [("self_attn.q_proj", q), ("self_attn.k_proj", k), ("self_attn.v_proj", v), ("self_attn.out_proj", self.out)] {
            out.append((name + ".weight", linear.weight))
            if let b = linear.bias { out.append((name + ".bias", b)) }
        }
        out += [("layer_norm2.weight", norm2.weight), ("layer_norm2.bias", norm2.bias)]
        for (name, linear) in [("mlp.fc1", fc1), ("mlp.fc2", fc2)] {
            out.append((name + ".weight", linear.weight))
            if let b = linear.bias { out.append((name + ".bias", b)) }
        }
        return out
    }

    func forward(_ ws: VisionWorkspace, tokens n: Int, shape s: VisionShape) {
        let x = ws.x.pointer, h = ws.h.pointer, d = s.hidden
        norm1.apply(x, h, rows: n, eps: s.eps)
        // q, k and v side by side in one [n, 3·hidden] buffer (per-head slices need no copies).
        let qkv = ws.qkv.pointer
        for (i, linear) in [q, k, v].enumerated() {
            Kernels.gemm(m: n, n: d, k: d, h, lda: d, linear.weight.data, ldb: d, transB: true, qkv + i * d, ldc: 3 * d)
            if let bias = linear.bias {
                for r in 0..<n { Kernels.add(bias.data, into: qkv + r * 3 * d + i * d, d) }
            }
        }
        attention(ws, tokens: n, shape: s)
        out.forward(ws.attention.pointer, x, rows: n, accumulate: true)

        norm2.apply(x, h, rows: n, eps: s.eps)
        fc1.multiply(h, ws.mlp.pointer, rows: n)
        s.activation.apply(ws.mlp.pointer, rows: n, width: s.intermediate, bias: fc1.bias?.data)
        fc2.forward(ws.mlp.pointer, x, rows: n, accumulate: true)
    }

    /// Bidirectional attention, per head through sgemm: S = Q·Kᵀ/√headDim, softmax by rows,
    /// O = S·V straight into the head's columns of the output.
    private func attention(_ ws: VisionWorkspace, tokens n: Int, shape s: VisionShape) {
        let d = s.hidden, hd = s.headDim, stride = 3 * d
        let scale = 1 / Float(hd).squareRoot()
        let qkv = ws.qkv.pointer, scores = ws.scores.pointer, out = ws.attention.pointer
        for head in 0..<s.heads {
            let q = qkv + head * hd, k = qkv + d + head * hd, v = qkv + 2 * d + head * hd
            Kernels.gemm(m: n, n: n, k: hd, q, lda: stride, k, ldb: stride, transB: true, scores, ldc: n, alpha: scale)
            Kernels.softmaxRows(scores, rows: n, width: n)
            Kernels.gemm(m: n, n: hd, k: n, scores, lda: n, v, ldb: stride, transB: false, out + head * hd, ldc: d)
        }
    }
}

/// Activation buffers for one image, allocated once per call.
final class VisionWorkspace {
    let x, h, qkv, attention, mlp, scores, patches: FloatStorage

    init(shape s: VisionShape, tokens n: Int) {
        x = FloatStorage(count: n * s.hidden, zeroed: false)
        h = FloatStorage(count: n * s.hidden, zeroed: false)
        qkv = FloatStorage(count: n * 3 * s.hidden, zeroed: false)
        attention = FloatStorage(count: n * s.hidden, zeroed: false)
        mlp = FloatStorage(count: n * s.intermediate, zeroed: false)
        scores = FloatStorage(count: n * n, zeroed: false)
        patches = FloatStorage(count: s.patches * s.patchWidth, zeroed: false)
    }
}

/// The ViT both towers are: embeddings, optional class token and pre-norm, encoder layers.
package final class VisionTransformer: @unchecked Sendable {
    package let shape: VisionShape
    /// Conv weight `[hidden, channels, p, p]`, used as `[hidden, channels·p·p]`.
    package let patchWeight: Tensor
    package let patchBias: Tensor?
    package let classEmbedding: Tensor?
    package let positionEmbedding: Tensor   // [tokens, hidden]
    package let preNorm: LayerNormParameters?
    package let preNormName: String?
    package let layers: [VisionEncoderLayer]
    package let postNorm: LayerNormParameters?

    package var tokenCount: Int { shape.patches + (classEmbedding == nil ? 0 : 1) }

    /// Every tensor under its checkpoint name relative to the tower (`embeddings.patch_embedding.weight`,
    /// `encoder.layers.0.self_attn.q_proj.weight`, …), in checkpoint order. The tensors are the
    /// ones the tower computes with.
    package var namedTensors: [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        if let classEmbedding { out.append(("embeddings.class_embedding", classEmbedding)) }
        out.append(("embeddings.patch_embedding.weight", patchWeight))
        if let patchBias { out.append(("embeddings.patch_embedding.bias", patchBias)) }
        out.append(("embeddings.position_embedding.weight", positionEmbedding))
        if let preNorm, let preNormName { out += [(preNormName + ".weight", preNorm.weight), (preNormName + ".bias", preNorm.bias)] }
        for (i, layer) in layers.enumerated() { out += layer.namedTensors.map { ("encoder.layers.\(i)." + $0.0, $0.1) } }
        if let postNorm { out += [("post_layernorm.weight", postNorm.weight), ("post_layernorm.bias", postNorm.bias)] }
        return out
    }

    /// `weights` is already scoped to the tower (keys like `embeddings.patch_embedding.weight`).
    init(shape s: VisionShape, weights: WeightMap, classToken: Bool, patchBias hasPatchBias: Bool, preNormName: String?) throws {
        try s.validate(file: weights.file)
        shape = s
        let d = s.hidden
        patchWeight = try weights.floats("embeddings.patch_embedding.weight", shape: [d, s.channels, s.patchSize, s.patchSize])
        patchBias = hasPatchBias ? try weights.floats("embeddings.patch_embedding.bias", shape: [d]) : nil
        classEmbedding = classToken ? try weights.floats("embeddings.class_embedding", shape: [d]) : nil
        let tokens = s.patches + (classToken ? 1 : 0)
        positionEmbedding = try weights.floats("embeddings.position_embedding.weight", shape: [tokens, d])
        preNorm = try preNormName.map { try LayerNormParameters(weights, $0, size: d) }
        self.preNormName = preNormName
        layers = try (0..<s.layers).map { try VisionEncoderLayer(weights, "encoder.layers.\($0).", shape: s) }
        // Only pooled / last_hidden_state outputs read it, never LLaVA; some exports drop it.
        postNorm = weights.contains("post_layernorm.weight") ? try LayerNormParameters(weights, "post_layernorm", size: d) : nil
        // Old exports store the position-id buffer (an integer arange); it is implied.
        weights.ignore(prefix: "embeddings.position_ids")
    }

    func hiddenStates(pixels: Tensor, layers requested: Set<Int>) throws -> [Int: Tensor] {
        let total = layers.count
        var wanted: [Int: [Int]] = [:]   // resolved index → the keys the caller used
        for index in requested {
            let resolved = index < 0 ? total + 1 + index : index
            guard resolved >= 0, resolved <= total else {
                throw ModelError("hidden state \(index) out of range for a \(total)-layer vision tower (-\(total + 1)...\(total))")
            }
            wanted[resolved, default: []].append(index)
        }
        guard let deepest = wanted.keys.max() else { return [:] }

        let ws = try embed(pixels)
        var states: [Int: Tensor] = [:]
        let n = tokenCount, width = n * shape.hidden
        func capture(_ resolved: Int) {
            guard let keys = wanted[resolved] else { return }
            let t = Tensor(shape: [n, shape.hidden], zeroed: false)
            t.data.update(from: ws.x.pointer, count: width)
            for key in keys { states[key] = t }
        }
        capture(0)
        for l in 0..<deepest {
            layers[l].forward(ws, tokens: n, shape: shape)
            capture(l + 1)
        }
        return states
    }

    /// Embeddings of `pixels` into a fresh workspace's `x`, pre-norm applied.
    private func embed(_ pixels: Tensor) throws -> VisionWorkspace {
        let s = shape, d = s.hidden, size = s.imageSize
        guard pixels.shape == [s.channels, size, size] else {
            throw ModelError("pixels have shape \(pixels.shape); this vision tower takes [\(s.channels), \(size), \(size)]")
        }
        let ws = VisionWorkspace(shape: s, tokens: tokenCount)
        let patches = ws.patches.pointer, rowWidth = s.patchWidth
        s.unfold(pixels, into: patches)
        let x = ws.x.pointer
        let first = classEmbedding == nil ? 0 : 1
        Kernels.matmulTransposed(patches, patchWeight.data, x + first * d, m: s.patches, n: d, k: rowWidth)
        if let patchBias { addRowBias(x + first * d, patchBias.data, rows: s.patches, width: d) }
        if let classEmbedding { x.update(from: classEmbedding.data, count: d) }
        Kernels.add(positionEmbedding.data, into: x, tokenCount * d)
        preNorm?.apply(x, x, rows: tokenCount, eps: s.eps)
        return ws
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
        let out = Tensor(shape: state.shape, zeroed: false)
        postNorm.apply(state.data, out.data, rows: state.shape[0], eps: shape.eps)
        return out
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

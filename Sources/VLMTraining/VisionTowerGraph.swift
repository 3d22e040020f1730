import Foundation
import VLMModels
import VLMTensor

// The vision tower (CLIP or SigLIP ViT) as taped ops, for fine-tunes that train it (LLaVA-NeXT's
// `mm_tunable_parts` with `mm_vision_tower`). The forward is `VisionTransformer`'s written with
// graph ops over a batch of images: unfolded patches → patch linear → class token and position
// embeddings → pre-norm → pre-norm encoder layers with bidirectional attention → the feature
// layer's rows. The leaves share storage with the loaded tower, so an optimizer step changes the
// live model.

final class VisionTowerGraph: @unchecked Sendable {
    struct Layer {
        let norm1, norm2: (weight: Variable, bias: Variable)
        let q, k, v, out, fc1, fc2: (weight: Variable, bias: Variable?)
    }
    let tower: VisionTransformer
    let patchWeight: Variable          // [hidden, channels·patch·patch], a view of the conv weight
    let patchBias: Variable?
    let classEmbedding: Variable?      // [1, hidden]
    let positionEmbedding: Variable    // [tokens, hidden]
    let preNorm: (weight: Variable, bias: Variable)?
    let layers: [Layer]
    /// Layers run to reach the feature layer.
    let usedLayers: Int
    /// The trainable leaves under their checkpoint names (`vision_tower.vision_model.…`).
    let parameters: [Parameter]

    /// `featureLayer` is the hidden state LLaVA reads (transformers' indexing); the layers past it
    /// and the post-norm never reach the loss, so they stay out of `parameters`.
    init(_ tower: VisionTransformer, featureLayer: Int, trainable: Bool) throws {
        self.tower = tower
        let count = tower.layers.count
        let resolved = featureLayer < 0 ? count + 1 + featureLayer : featureLayer
        guard resolved >= 0, resolved <= count else {
            throw TrainingError("vision feature layer \(featureLayer) is outside a \(count)-layer tower")
        }
        usedLayers = resolved
        let s = tower.shape
        var byTensor: [ObjectIdentifier: Variable] = [:]
        func leaf(_ t: Tensor, shape: [Int]? = nil) -> Variable {
            let v = Variable(shape.map { Tensor(reshaping: t, to: $0) } ?? t, requiresGrad: trainable)
            byTensor[ObjectIdentifier(t.storage)] = v
            return v
        }
        func norm(_ n: LayerNormParameters) -> (weight: Variable, bias: Variable) { (leaf(n.weight), leaf(n.bias)) }
        func dense(_ l: DenseLinear) -> (weight: Variable, bias: Variable?) { (leaf(l.weight), l.bias.map { leaf($0) }) }
        patchWeight = leaf(tower.patchWeight, shape: [s.hidden, s.patchWidth])
        patchBias = tower.patchBias.map { leaf($0) }
        classEmbedding = tower.classEmbedding.map { leaf($0, shape: [1, s.hidden]) }
        positionEmbedding = leaf(tower.positionEmbedding)
        preNorm = tower.preNorm.map(norm)
        layers = tower.layers.prefix(resolved).map { l in
            Layer(norm1: norm(l.norm1), norm2: norm(l.norm2), q: dense(l.q), k: dense(l.k), v: dense(l.v),
                  out: dense(l.out), fc1: dense(l.fc1), fc2: dense(l.fc2))
        }
        parameters = trainable ? tower.namedTensors.compactMap { name, t in
            byTensor[ObjectIdentifier(t.storage)].map { Parameter(name: "vision_tower.vision_model." + name, variable: $0, group: .visionTower) }
        } : []
    }

    /// The feature layer's hidden state of each image in `pixels` (each `[channels, size, size]`),
    /// the class token dropped when `dropClassToken`: `[images·rows, hidden]` stacked image by image.
    func forward(_ pixels: [Tensor], dropClassToken: Bool, tape: Tape) throws -> Variable {
        let s = tower.shape, d = s.hidden, n = pixels.count
        let tokens = tower.tokenCount, first = classEmbedding == nil ? 0 : 1
        let patches = Variable(try unfold(pixels))                                   // [n·patches, patchWidth]
        var x = tape.linear(patches, patchWeight, bias: patchBias)                   // [n·patches, hidden]
        if let classEmbedding {
            let patchRows = (0..<n).flatMap { i in (i * tokens + 1)..<((i + 1) * tokens) }
            let classRows = (0..<n).map { $0 * tokens }
            let empty = Variable(Tensor(shape: [n * tokens, d], zeroed: true))
            x = tape.scatterRows(tape.scatterRows(empty, positions: patchRows, source: x), positions: classRows,
                                 source: tape.gather(classEmbedding, indices: [Int](repeating: 0, count: n)))
        }
        x = tape.add(x, tape.gather(positionEmbedding, indices: (0..<(n * tokens)).map { $0 % tokens }))
        if let preNorm { x = tape.layerNorm(x, weight: preNorm.weight, bias: preNorm.bias, eps: s.eps) }   // [n·tokens, hidden]
        let layout = SequenceLayout(batch: n, length: tokens)
        for layer in layers {
            let h = tape.layerNorm(x, weight: layer.norm1.weight, bias: layer.norm1.bias, eps: s.eps)
            let q = tape.linear(h, layer.q.weight, bias: layer.q.bias)
            let k = tape.linear(h, layer.k.weight, bias: layer.k.bias)
            let v = tape.linear(h, layer.v.weight, bias: layer.v.bias)
            let a = tape.attention(q: q, k: k, v: v, heads: s.heads, kvHeads: s.heads, headDim: s.headDim, layout: layout, causal: false)
            x = tape.add(x, tape.linear(a, layer.out.weight, bias: layer.out.bias))
            let h2 = tape.layerNorm(x, weight: layer.norm2.weight, bias: layer.norm2.bias, eps: s.eps)
            let mlp = tape.activation(tape.linear(h2, layer.fc1.weight, bias: layer.fc1.bias), s.activation)
            x = tape.add(x, tape.linear(mlp, layer.fc2.weight, bias: layer.fc2.bias))
        }
        guard dropClassToken, first == 1 else { return x }
        return tape.gather(x, indices: (0..<n).flatMap { i in (i * tokens + 1)..<((i + 1) * tokens) })
    }

    /// The conv's input for every image, `[images·patches, patchWidth]` (VisionShape.unfold).
    private func unfold(_ pixels: [Tensor]) throws -> Tensor {
        let s = tower.shape
        let out = Tensor(shape: [pixels.count * s.patches, s.patchWidth], zeroed: false)
        for (i, image) in pixels.enumerated() {
            guard image.shape == [s.channels, s.imageSize, s.imageSize] else {
                throw TrainingError("pixels have shape \(image.shape); this vision tower takes [\(s.channels), \(s.imageSize), \(s.imageSize)]")
            }
            s.unfold(image, into: out.data + i * s.patches * s.patchWidth)
        }
        return out
    }
}

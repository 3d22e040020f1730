import VLMTensor

/// A LoRA update on one linear layer (PEFT's `lora_A`/`lora_B`): y += scale · (dropout(x)·Aᵀ)·Bᵀ
/// with A `[r, in]`, B `[out, r]` and scale = alpha / r (or alpha / √r for rsLoRA). A and B are
/// graph leaves: a fine-tune trains them where the model generates from them.
public final class LowRankAdapter: @unchecked Sendable {
    public let a: Variable
    public let b: Variable
    public let scale: Float
    /// `lora_dropout`, applied to the adapter's input while training.
    public let dropout: Float

    public init(a: Tensor, b: Tensor, scale: Float, dropout: Float = 0) {
        precondition(a.shape.count == 2 && b.shape.count == 2 && a.shape[0] == b.shape[1], "LoRA shapes \(a.shape) and \(b.shape) do not chain")
        self.a = Variable(a); self.b = Variable(b); self.scale = scale; self.dropout = dropout
    }

    public var rank: Int { a.shape[0] }
    public var inFeatures: Int { a.shape[1] }
    public var outFeatures: Int { b.shape[0] }
}

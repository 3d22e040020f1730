import VLMTensor

/// Shape and encoding of one stored tensor. `shape` is in PyTorch order (outermost first),
/// so a linear weight is `[outFeatures, inFeatures]` whatever the file format.
public struct WeightInfo: Sendable, Equatable {
    public let shape: [Int]
    public let type: GGMLType
    public init(shape: [Int], type: GGMLType) { self.shape = shape; self.type = type }
}

/// Anything that holds named weights: a GGUF file, a safetensors file, a sharded checkpoint.
public protocol WeightSource: AnyObject, Sendable {
    /// Every tensor name the source holds.
    var weightNames: [String] { get }
    func info(_ name: String) -> WeightInfo?
    /// The tensor in its stored encoding, viewed as `[shape[0], product(rest)]` (1-D: one row).
    func matrix(_ name: String) throws -> QuantizedMatrix
    /// The tensor converted to Float32, shape as in `info`.
    func floats(_ name: String) throws -> Tensor
}

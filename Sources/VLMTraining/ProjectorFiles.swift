import Foundation
import VLMFormats
import VLMModels
import VLMTensor

/// A trained projector on disk, under the names users' tools expect: transformers'
/// (`multi_modal_projector.linear_1.*` in `multi_modal_projector.safetensors`) and the LLaVA
/// repo's (`model.mm_projector.0.*`/`.2.*`), both as `mm_projector.safetensors` and as the
/// torch.save file `mm_projector.bin` that LLaVA's `--pretrain_mm_mlp_adapter` reads as is.
/// LLaVA's LoRA runs keep theirs in `non_lora_trainables.bin` (PEFT's `base_model.model.` prefix),
/// which is read too.
public enum ProjectorFiles {
    public static let hfFile = "multi_modal_projector.safetensors"
    public static let llavaFile = "mm_projector.safetensors"
    public static let llavaTorchFile = "mm_projector.bin"
    public static let llavaLoRAFile = "non_lora_trainables.bin"
    static let readable = [hfFile, llavaFile, llavaTorchFile, llavaLoRAFile]

    static func named(_ projector: MultiModalProjector) -> [(hf: String, llava: String, tensor: Tensor)] {
        // LLaVA's Sequential(Linear, GELU, Linear) numbers its linears 0 and 2; a `linear` projector is bare.
        let llavaNames = ["linear_1": projector.linear2 == nil ? "model.mm_projector" : "model.mm_projector.0",
                          "linear_2": "model.mm_projector.2"]
        return projector.namedLeaves.map { name, leaf in
            let parts = name.split(separator: ".")   // multi_modal_projector, linear_N, weight|bias
            return (name, llavaNames[String(parts[1])]! + "." + parts[2], leaf.value)
        }
    }

    public static func save(_ projector: MultiModalProjector, directory: String) throws {
        let tensors = named(projector)
        try SafetensorsWriter.write(tensors.map { ($0.hf, $0.tensor, .f32) }, metadata: ["format": "pt"], to: directory + "/" + hfFile)
        try SafetensorsWriter.write(tensors.map { ($0.llava, $0.tensor, .f32) }, metadata: ["format": "pt"], to: directory + "/" + llavaFile)
        try TorchCheckpointWriter.write(tensors.map { ($0.llava, $0.tensor) }, to: directory + "/" + llavaTorchFile)
    }

    /// Whether `directory` holds projector weights.
    public static func exists(in directory: String) -> Bool {
        readable.contains { FileManager.default.fileExists(atPath: directory + "/" + $0) }
    }

    /// The projector file `load` reads in `directory`: transformers' names first, then LLaVA's
    /// safetensors, then LLaVA's `.bin` files (nil when there is none).
    public static func file(in directory: String) -> String? {
        readable.first { FileManager.default.fileExists(atPath: directory + "/" + $0) }
    }

    /// Reads projector weights (any of the files; LLaVA keys with or without the `model.` prefix),
    /// checked against the projector's shapes. Returns the tensors in `named` order.
    public static func load(directory: String, for projector: MultiModalProjector) throws -> [Tensor] {
        let name = file(in: directory) ?? hfFile
        let path = directory + "/" + name
        let useHF = name == hfFile
        let file: any CheckpointShard = name.hasSuffix(".bin") ? try TorchCheckpointFile(path: path) : try SafetensorsFile(path: path)
        let available = Set(file.weightNames)
        var out: [Tensor] = []
        for entry in named(projector) {
            let candidates = useHF ? [entry.hf]
                : name == llavaLoRAFile ? ["base_model.model." + entry.llava]
                : [entry.llava, String(entry.llava.dropFirst("model.".count))]
            guard let key = candidates.first(where: available.contains) else { throw FormatError(path, "missing tensor '\(candidates[0])'") }
            let t = try file.floats(key)
            guard t.shape == entry.tensor.shape else { throw FormatError(path, "'\(key)' has shape \(t.shape), expected \(entry.tensor.shape)") }
            out.append(t)
        }
        guard available.count == out.count else { throw FormatError(path, "\(available.count - out.count) unexpected tensor(s) for this projector") }
        return out
    }

    /// Overwrites the projector's weights in place with `tensors` (from `load`, or saved originals).
    public static func apply(_ tensors: [Tensor], to projector: MultiModalProjector) {
        for (entry, t) in zip(named(projector), tensors) { entry.tensor.data.update(from: t.data, count: t.count) }
    }

    /// A copy of the projector's current weights (to undo `apply`).
    public static func snapshot(_ projector: MultiModalProjector) -> [Tensor] {
        named(projector).map { entry in
            let t = Tensor(shape: entry.tensor.shape, zeroed: false)
            t.data.update(from: entry.tensor.data, count: t.count)
            return t
        }
    }
}

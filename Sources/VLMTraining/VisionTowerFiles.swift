import Foundation
import VLMFormats
import VLMModels
import VLMTensor

/// A trained vision tower on disk: `vision_tower.safetensors` with the tower's tensors under
/// their llava-hf names (`vision_tower.vision_model.…`), beside the projector files.
public enum VisionTowerFiles {
    public static let file = "vision_tower.safetensors"
    package static let prefix = "vision_tower.vision_model."

    package static func save(_ tower: VisionTransformer, directory: String) throws {
        try SafetensorsWriter.write(tower.namedTensors.map { (prefix + $0.0, $0.1, .f32) }, metadata: ["format": "pt"],
                                    to: directory + "/" + file)
    }

    public static func exists(in directory: String) -> Bool {
        FileManager.default.fileExists(atPath: directory + "/" + file)
    }

    /// The file's tensors in the tower's `namedTensors` order, checked by name and shape; a
    /// missing or left-over tensor is an error naming the file.
    package static func load(directory: String, for tower: VisionTransformer) throws -> [Tensor] {
        let path = directory + "/" + file
        let stored = try SafetensorsFile(path: path)
        let available = Set(stored.weightNames)
        let out = try tower.namedTensors.map { name, current -> Tensor in
            guard available.contains(prefix + name) else { throw FormatError(path, "missing tensor '\(prefix + name)'") }
            let t = try stored.floats(prefix + name)
            guard t.shape == current.shape else { throw FormatError(path, "'\(prefix + name)' has shape \(t.shape), expected \(current.shape)") }
            return t
        }
        guard available.count == out.count else { throw FormatError(path, "\(available.count - out.count) unexpected tensor(s) for this vision tower") }
        return out
    }

    /// Overwrites the tower's tensors in place (with `load`'s result or a `snapshot`).
    package static func apply(_ tensors: [Tensor], to tower: VisionTransformer) {
        for ((_, current), t) in zip(tower.namedTensors, tensors) { current.data.update(from: t.data, count: t.count) }
    }

    /// A copy of the tower's tensors (to undo `apply`).
    package static func snapshot(_ tower: VisionTransformer) -> [Tensor] {
        tower.namedTensors.map { _, current in
            let t = Tensor(shape: current.shape, zeroed: false)
            t.data.update(from: current.data, count: t.count)
            return t
        }
    }
}

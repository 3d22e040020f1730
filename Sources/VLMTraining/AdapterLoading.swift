import Foundation
import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor

// Putting a fine-tune's output on a loaded model for inference: `/adapter load|unload PATH` in
// the REPL and `--adapter` on the commands. A folder is recognised by its files: a PEFT LoRA
// (`adapter_config.json` + `adapter_model.safetensors`, transformers 4.x or 5 key names), a
// trained projector (`multi_modal_projector.safetensors` / `mm_projector.safetensors` / `.bin`), a trained
// vision tower (`vision_tower.safetensors`, always with a projector), or what a `--mode` with
// several parts writes.

/// What an adapter folder holds: the parts the fine-tune mode that wrote it trains.
public typealias AdapterKind = FineTuneMode

extension FineTuneMode {
    /// What `directory` holds, from its file names alone (nothing is read). Throws one line naming
    /// the file an adapter folder needs when it is not one.
    public static func detect(directory: String) throws -> AdapterKind {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw FormatError(directory, "no such adapter folder")
        }
        guard isDirectory.boolValue else {
            throw FormatError(directory, "not a folder: an adapter is a folder with adapter_config.json (PEFT LoRA) and/or \(ProjectorFiles.hfFile)")
        }
        let lora = FileManager.default.fileExists(atPath: directory + "/adapter_config.json")
        let projector = ProjectorFiles.exists(in: directory)
        if VisionTowerFiles.exists(in: directory) {
            guard projector else {
                throw FormatError(directory + "/" + ProjectorFiles.hfFile, "missing: a trained vision tower comes with its projector")
            }
            return lora ? .visionLoRAProjector : .visionProjector
        }
        switch (lora, projector) {
        case (true, true): return .loraProjector
        case (true, false): return .lora
        case (false, true): return .projector
        case (false, false):
            throw FormatError(directory + "/adapter_config.json",
                              "missing: not an adapter folder (expected a PEFT LoRA's adapter_config.json + adapter_model.safetensors, or \(ProjectorFiles.readable.joined(separator: " / ")))")
        }
    }
}

extension FineTuneMode {
    /// The file in an adapter folder of this kind whose hash identifies its weights: the LoRA's,
    /// else the projector's (what `LoRA.load` and `ProjectorFiles.load` would read).
    public func mainFile(in directory: String) -> String? {
        trainsLoRA ? LoRA.weightsFile(in: directory) : ProjectorFiles.file(in: directory)
    }
}

/// An adapter folder installed on a loaded model, until `unload()`.
///
/// The LoRA goes onto the decoder's linear layers (`LlamaModel.setAdapters`), the projector
/// weights are copied over the model's projector after a snapshot is taken; `unload()` puts back
/// the adapters the decoder had before (none, normally) and the snapshot. Everything is read and
/// checked before the model is touched, so a failed `apply` leaves the model as it was.
///
/// Image features: `ChatSession` caches each image's encoder output by content hash for the whole
/// session. After `apply` or `unload` changes the projector, a session's cached features are
/// stale — start a fresh `ChatSession` (or `clear()` is not enough: it keeps features). The LoRA
/// alone does not touch image features, but the KV cache of an open chat was computed without
/// it, so a fresh chat is the rule after either call.
public final class AppliedAdapter: @unchecked Sendable {
    public let directory: String
    public let kind: AdapterKind
    /// The installed LoRA (nil for a projector-only folder).
    public let lora: LoRA?
    public let model: ChatModel
    /// Decoder adapters present before `apply` (restored by `unload`).
    private let previousAdapters: [String: LowRankAdapter]
    /// The projector's and the vision tower's weights before `apply` (restored by `unload`).
    private let projectorSnapshot: [Tensor]?
    private let towerSnapshot: [Tensor]?
    public private(set) var isApplied = true

    private init(directory: String, kind: AdapterKind, lora: LoRA?, model: ChatModel,
                 previousAdapters: [String: LowRankAdapter], projectorSnapshot: [Tensor]?, towerSnapshot: [Tensor]?) {
        self.directory = directory; self.kind = kind; self.lora = lora; self.model = model
        self.previousAdapters = previousAdapters; self.projectorSnapshot = projectorSnapshot; self.towerSnapshot = towerSnapshot
    }

    /// Reads the adapter in `directory` and installs it on `chat` (replacing any LoRA the decoder
    /// has; `unload` brings that back). A projector on a model without one, a LoRA whose layers or
    /// shapes do not fit the decoder, or a folder holding neither is an error naming the file.
    /// Start a fresh `ChatSession` afterwards (cached image features and KV are stale).
    public static func apply(directory: String, to chat: ChatModel) throws -> AppliedAdapter {
        let kind = try AdapterKind.detect(directory: directory)
        let decoder = chat.decoder
        let llava = (chat as? VisionLanguageModel)?.llava
        let lora = kind.trainsLoRA ? try LoRA.load(directory: directory, decoder: decoder) : nil
        var projectorWeights: [Tensor]?
        if kind.trainsProjector {
            guard let llava else {
                let file = ProjectorFiles.file(in: directory) ?? ProjectorFiles.hfFile
                throw FormatError(directory + "/" + file, "projector weights, but the model has no multimodal projector (not a LLaVA model)")
            }
            projectorWeights = try ProjectorFiles.load(directory: directory, for: llava.projector)
        }
        var towerWeights: [Tensor]?
        if kind.trainsVisionTower {
            guard let tower = llava?.visionTransformer else {
                throw FormatError(directory + "/" + VisionTowerFiles.file, "vision tower weights, but the model has no vision tower vlmsh can replace")
            }
            towerWeights = try VisionTowerFiles.load(directory: directory, for: tower)
        }
        // Everything is read and checked: now change the model.
        let previous = installedAdapters(on: decoder)
        let snapshot = llava.flatMap { l in projectorWeights.map { _ in ProjectorFiles.snapshot(l.projector) } }
        try decoder.setAdapters(lora?.adapters ?? previous)
        if let llava, let projectorWeights { ProjectorFiles.apply(projectorWeights, to: llava.projector) }
        let tower = llava?.visionTransformer
        let towerSnapshot = towerWeights.flatMap { _ in tower.map(VisionTowerFiles.snapshot) }
        if let tower, let towerWeights { VisionTowerFiles.apply(towerWeights, to: tower) }
        return AppliedAdapter(directory: directory, kind: kind, lora: lora, model: chat,
                              previousAdapters: previous, projectorSnapshot: snapshot, towerSnapshot: towerSnapshot)
    }

    /// Takes the adapter off: the decoder's earlier adapters (normally none) and the projector's
    /// earlier weights come back. Calling it again does nothing. Start a fresh `ChatSession` afterwards.
    public func unload() {
        guard isApplied else { return }
        isApplied = false
        if lora != nil { try? model.decoder.setAdapters(previousAdapters) }
        if let projectorSnapshot, let llava = (model as? VisionLanguageModel)?.llava {
            ProjectorFiles.apply(projectorSnapshot, to: llava.projector)
        }
        if let towerSnapshot, let tower = (model as? VisionLanguageModel)?.llava.visionTransformer {
            VisionTowerFiles.apply(towerSnapshot, to: tower)
        }
    }

    /// One line for the REPL: "lora r=4 alpha=8 on 14 layers + projector (PATH)".
    public var summary: String {
        var parts: [String] = []
        if let lora {
            let c = lora.configuration
            parts.append("lora r=\(c.rank) alpha=\(Self.number(c.alpha))\(c.useRSLoRA ? " rslora" : "") on \(lora.adapters.count) layers")
        }
        if kind.trainsVisionTower { parts.append("vision tower") }
        if kind.trainsProjector { parts.append("projector") }
        return parts.joined(separator: " + ") + " (\(directory))"
    }

    static func number(_ x: Float) -> String { x == x.rounded() ? String(Int(x)) : String(x) }

    /// The LoRA adapters installed on `decoder` now, by module name (empty for a plain model).
    public static func installedAdapters(on decoder: LlamaModel) -> [String: LowRankAdapter] {
        var out: [String: LowRankAdapter] = [:]
        for name in decoder.linearModuleNames {
            if let adapter = decoder.linear(named: name)?.adapter { out[name] = adapter }
        }
        return out
    }
}

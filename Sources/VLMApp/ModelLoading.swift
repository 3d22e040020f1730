import Foundation
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

/// Loads whatever a path holds as a chat model: a text model (GGUF or HF folder), a LLaVA folder,
/// or a store folder naming a text GGUF and its mmproj (`mmproj.json`); with `mmproj`, `path` is
/// the text model of llama.cpp's LLaVA pair. A LLaVA folder that carries a PEFT LoRA (as LLaVA's
/// LoRA checkpoints and composed folders do) gets it installed.
public func loadChatModel(path: String, mmproj: String? = nil, template: String? = nil) throws -> ChatModel {
    if let mmproj { return try VisionLanguageModel(text: path, mmproj: mmproj, template: template) }
    var isDirectory: ObjCBool = false
    let isFolder = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    if isFolder, let pair = try GGUFPair.read(folder: path) {
        return try VisionLanguageModel(text: pair.model, mmproj: pair.mmproj, select: pair.visionFeatureSelectStrategy, template: template)
    }
    if isFolder, let config = try ModelConfigFile.read(folder: path), config.isLlava {
        let model = try VisionLanguageModel(path: path, config: config, template: template)
        if hasOwnAdapter(path) { _ = try AppliedAdapter.apply(directory: path, to: model) }
        return model
    }
    return try TextModel(path: path, template: template)
}

/// Whether a model folder carries its own LoRA (`adapter_config.json` beside config.json).
public func hasOwnAdapter(_ path: String) -> Bool {
    FileManager.default.fileExists(atPath: path + "/config.json") && FileManager.default.fileExists(atPath: path + "/adapter_config.json")
}

/// Opens the store at `$VLMSH_HOME/vlmsh.sqlite`; `.readOnly` for commands that only list or export.
public func openStore(access: Store.Access = .readWrite) throws -> Store {
    try FileManager.default.createDirectory(atPath: ModelStore.home, withIntermediateDirectories: true)
    return try Store(path: ModelStore.home + "/vlmsh.sqlite", access: access)
}

/// A cheap identity for a model file or folder: the store's per-file fingerprint (size plus the
/// first and last MB), combined over a folder's files; enough to tell a changed model from the
/// recorded one without reading it all.
public enum ModelFingerprint {
    public static func compute(_ path: String, mmproj: String? = nil) throws -> String {
        if let mmproj { return ContentHash.hex("\(try compute(path))\n\(try compute(mmproj))\n") }
        if let pair = try? GGUFPair.read(folder: path) { return try compute(pair.model, mmproj: pair.mmproj) }
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else { throw UsageError("\(path): no such file or folder") }
        guard isDirectory.boolValue else { return try ContentHash.fingerprint(file: path) }
        let files = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted().filter { !$0.hasPrefix(".") }
        var lines = ""
        for name in files where !fm.isDirectory(path + "/" + name) {
            lines += "\(name):\(try ContentHash.fingerprint(file: path + "/" + name))\n"
        }
        return ContentHash.hex(lines)
    }
}

private extension FileManager {
    func isDirectory(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}

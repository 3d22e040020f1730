import Foundation
import VLMGeneration
import VLMModels
import VLMStore

/// Loads whatever a path holds as a chat model: a text model (GGUF or HF folder) or a LLaVA folder.
func loadChatModel(path: String, template: String? = nil) throws -> ChatModel {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue,
       LlavaModel.isLlava(folder: path) {
        return try VisionLanguageModel(path: path, template: template)
    }
    return try TextModel(path: path, template: template)
}

/// A cheap identity for a model file or folder: size and the first and last MB of each weight
/// file, hashed; enough to tell a changed model from the recorded one without reading it all.
enum ModelFingerprint {
    static func compute(_ path: String) throws -> String {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDirectory) else { throw UsageError("\(path): no such file or folder") }
        let files = isDirectory.boolValue
            ? ((try? fm.contentsOfDirectory(atPath: path)) ?? []).sorted().filter { !$0.hasPrefix(".") }.map { path + "/" + $0 }
            : [path]
        var hasher = SHA256.Hasher()
        for file in files {
            guard let handle = FileHandle(forReadingAtPath: file) else { continue }
            defer { try? handle.close() }
            let size = (try? handle.seekToEnd()) ?? 0
            hasher.update(Data("\((file as NSString).lastPathComponent):\(size)\n".utf8))
            let chunk: UInt64 = 1 << 20
            try? handle.seek(toOffset: 0)
            hasher.update(handle.readData(ofLength: Int(chunk)))
            if size > chunk {
                try? handle.seek(toOffset: size - chunk)
                hasher.update(handle.readData(ofLength: Int(chunk)))
            }
        }
        return hasher.finalizeHex()
    }
}

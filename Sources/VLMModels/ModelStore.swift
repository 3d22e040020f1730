import Foundation
import VLMFormats
import VLMHome

/// Where models live (`$VLMSH_HOME/models`, default `~/.vlmsh/models`) and how a user's model
/// reference — a path, a folder, or a short name — becomes a path.
public enum ModelStore {
    /// `$VLMSH_HOME`, default `~/.vlmsh`.
    public static var home: String { VLMHome.path() }

    public static var modelsDirectory: String { home + "/models" }

    /// Short names for models the store knows by file name.
    public static let aliases = ["smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf"]

    /// The model names in the store (file and folder names without `.gguf`, plus aliases present).
    public static func names() -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: modelsDirectory)) ?? []
        let files = entries.filter { !$0.hasPrefix(".") && !$0.hasSuffix(".part") }
        let aliased = aliases.filter { files.contains($0.value) }.map(\.key)
        return (aliased + files.map { $0.hasSuffix(".gguf") ? String($0.dropLast(5)) : $0 }).sorted()
    }

    /// Resolves `reference`: an existing path wins; then an alias, an exact name, or a unique
    /// case-insensitive prefix of a name in the store.
    public static func resolve(_ reference: String) throws -> String {
        let fm = FileManager.default
        let expanded = (reference as NSString).expandingTildeInPath
        if fm.fileExists(atPath: expanded) { return expanded }
        let entries = ((try? fm.contentsOfDirectory(atPath: modelsDirectory)) ?? []).filter { !$0.hasSuffix(".part") }
        let key = reference.lowercased()
        if let file = aliases[key], entries.contains(file) { return modelsDirectory + "/" + file }
        if let exact = entries.first(where: { $0.lowercased() == key || $0.lowercased() == key + ".gguf" }) {
            return modelsDirectory + "/" + exact
        }
        let matches = entries.filter { $0.lowercased().hasPrefix(key) }
        if matches.count == 1 { return modelsDirectory + "/" + matches[0] }
        if matches.count > 1 { throw FormatError(reference, "ambiguous model name: \(matches.sorted().joined(separator: ", "))") }
        throw FormatError(reference, "no such model file, folder or name in \(modelsDirectory)")
    }
}

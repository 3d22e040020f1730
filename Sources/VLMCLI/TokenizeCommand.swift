import ArgumentParser
import Foundation
import VLMFormats
import VLMModels
import VLMTokenizers

struct TokenizeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenize", abstract: "Show the token ids of a text (special tokens recognized, no BOS).")

    @OptionGroup var model: ModelOptions
    @Option(name: .long, help: "Text to tokenize.") var text: String
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func validate() throws { try model.rejectAdapter("an adapter does not change the tokenizer") }

    func run() async throws {
        let tokenizer = try loadTokenizer(ModelStore.resolve(model.model))
        let ids = tokenizer.encode(text, addSpecialTokens: false)
        if json {
            try printJSON(["ids": ids])
        } else {
            for id in ids { print(String(format: "%6d  %@", id, tokenizer.decode([id]).debugDescription)) }
        }
    }

    /// Only the tokenizer: no weights need to be mapped to tokenize.
    private func loadTokenizer(_ path: String) throws -> Tokenizer {
        var isDirectory: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
        // A store folder naming a GGUF pair tokenizes with its text model.
        if isDirectory.boolValue, let pair = try GGUFPair.read(folder: path) { return try loadTokenizer(pair.model) }
        if isDirectory.boolValue { return try Tokenizer.load(folder: path) }
        return try Tokenizer.load(gguf: GGUFFile(path: path).metadata, file: path)
    }
}

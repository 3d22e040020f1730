import Foundation
import VLMFormats
import VLMTensor
import VLMTokenizers

/// A loaded language model with what it takes to talk to it: tokenizer and chat template.
public final class TextModel: @unchecked Sendable {
    public let path: String
    public let architecture: String
    public let decoder: LlamaModel
    public let tokenizer: Tokenizer
    public let template: ChatTemplate

    /// Loads a `.gguf` file or a Hugging Face folder. `template` overrides the detected chat template.
    public init(path: String, template: String? = nil) throws {
        self.path = path
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw FormatError(path, "no such file or folder")
        }
        if isDirectory.boolValue {
            decoder = try Self.decoder(folder: path, config: try ModelConfigFile.require(folder: path))
            tokenizer = try Tokenizer.load(folder: path)
            architecture = decoder.config.modelType
        } else {
            let gguf = try GGUFFile(path: path)
            let config = try LlamaConfiguration(gguf: gguf)
            let weights = try WeightMap(file: path, source: gguf)
            weights.rename(LlamaWeights.sanitizeGGUF)
            // llama.cpp permutes Llama-style Q/K rows when converting; qwen2 keeps HF order.
            decoder = try LlamaModel(config: config, weights: weights, ropePairing: config.modelType == "qwen2" ? .halves : .interleaved)
            gguf.commitInterleavedRows()
            tokenizer = try Tokenizer.load(gguf: gguf.metadata, file: path)
            architecture = config.modelType
        }
        let name = try template ?? ChatTemplate.detect(jinja: tokenizer.chatTemplateSource, architecture: architecture)
        self.template = try ChatTemplate.load(name: name, directory: ChatTemplate.defaultDirectory(), jinja: tokenizer.chatTemplateSource)
    }

    /// The decoder of a Hugging Face text model folder whose config.json is `config`.
    public static func decoder(folder: String, config file: ModelConfigFile) throws -> LlamaModel {
        let config = try decodeConfig(LlamaConfiguration.self, from: file.data, path: file.path, expected: "text model config")
        guard LlamaConfiguration.supportedTypes.contains(config.modelType) else {
            throw FormatError(file.path, "unsupported model_type '\(config.modelType)'")
        }
        let weights = try WeightMap(file: folder, source: try openCheckpoint(folder: folder))
        weights.rename(LlamaWeights.sanitizeHF)
        return try LlamaModel(config: config, weights: weights, ropePairing: .halves)
    }

    /// The ids of one user message wrapped by the chat template with the generation prompt.
    public func chatPromptIDs(_ messages: [ChatMessage]) -> [Int] {
        tokenizer.encode(template.render(messages, addGenerationPrompt: true), addSpecialTokens: false)
    }

    /// Token ids that end a reply: the tokenizer's end-of-sequence ids.
    public var stopTokens: Set<Int> { tokenizer.eosTokenIDs }

    /// A model folder's JSON config decoded: a value out of range is one line naming the file and
    /// the key; any other problem says what kind of config the file should have been.
    static func decodeConfig<T: Decodable>(_ type: T.Type, from data: Data, path: String, expected what: String) throws -> T {
        do { return try JSONDecoder().decode(type, from: data) }
        catch let e as ConfigValueError { throw FormatError(path, e.description) }
        catch { throw FormatError(path, "not a supported \(what) (\(describe(error)))") }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing key '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
            return "bad value at '\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted(let ctx): return "invalid JSON: \(ctx.debugDescription)"
        default: return "\(error)"
        }
    }
}

import ArgumentParser
import Foundation
import VLMGeneration
import VLMImage
import VLMModels
import VLMStore
import VLMTensor
import VLMTokenizers

/// Which model to load and how to talk to it.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A .gguf file, a Hugging Face folder, or a name in the model store.")
    var model = "smollm2"

    @Option(name: .long, help: "Chat template name from prompts/ (default: detected from the model).")
    var template: String?

    func load() throws -> ChatModel {
        try loadChatModel(path: ModelStore.resolve(model), template: template)
    }

    func loadText() throws -> TextModel {
        try TextModel(path: ModelStore.resolve(model), template: template)
    }
}

/// The prompt: text (chat-wrapped unless --raw) or literal token ids.
struct PromptOptions: ParsableArguments {
    @Option(name: .long, help: "Prompt text; wrapped by the chat template as one user turn unless --raw.")
    var prompt: String?

    @Option(name: .long, help: "Comma-separated token ids, used verbatim.")
    var ids: String?

    @Flag(name: .long, help: "Tokenize the prompt as is (with BOS when the model adds one), no chat template.")
    var raw = false

    @Option(name: .long, help: "System message for the chat template.")
    var system: String?

    func validate() throws {
        if (prompt == nil) == (ids == nil) { throw ValidationError("give exactly one of --prompt and --ids") }
    }

    @Option(name: .long, help: "An image for the prompt (repeatable): attached to the user turn, or placed at the image tokens with --raw / --ids.")
    var image: [String] = []

    func promptIDs(_ model: ChatModel) throws -> [Int] {
        if let ids {
            let parsed = ids.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { throw ValidationError("--ids must be comma-separated integers") }
            return parsed.map { $0! }
        }
        var text = prompt ?? ""
        if raw { return model.encodePrompt(text, addSpecialTokens: true) }
        // ChatSession's rule: without a placeholder, the images go first in the user's turn.
        if !image.isEmpty, let support = model.images, !text.contains(support.tokenText) {
            text = String(repeating: support.tokenText + "\n", count: image.count) + text
        }
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, text: system)) }
        messages.append(ChatMessage(role: .user, text: text))
        return model.encodePrompt(model.template.render(messages, addGenerationPrompt: true), addSpecialTokens: false)
    }

    /// The prompt as the model runs it: `promptIDs` with the images at their placeholders,
    /// each image keyed by its content hash (as the REPL keys them), its features encoded on use.
    func prepare(_ model: ChatModel) throws -> (ids: [Int], prompt: Prompt, features: ImageFeatures) {
        let ids = try promptIDs(model)
        let features = ImageFeatures(model: model)
        var hashes: [String] = []
        if !image.isEmpty {
            guard let support = model.images else { throw ValidationError("this model takes no images (--image)") }
            for path in image {
                let hash = try SHA256.hex(file: path)
                features.attach([ImageInput(hash: hash, pixels: support.preprocess(try ImageLoader.load(path: path)))])
                hashes.append(hash)
            }
        }
        return (ids, try Prompt(ids: ids, images: hashes, support: model.images), features)
    }
}

/// Prints one JSON object on stdout.
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

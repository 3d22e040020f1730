import ArgumentParser
import Foundation
import VLMModels
import VLMTokenizers

/// Which model to load and how to talk to it.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A .gguf file, a Hugging Face folder, or a name in the model store.")
    var model = "smollm2"

    @Option(name: .long, help: "Chat template name from prompts/ (default: detected from the model).")
    var template: String?

    func load() throws -> TextModel {
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

    func promptIDs(_ model: TextModel) throws -> [Int] {
        if let ids {
            let parsed = ids.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { throw ValidationError("--ids must be comma-separated integers") }
            return parsed.map { $0! }
        }
        let text = prompt ?? ""
        if raw { return model.tokenizer.encode(text, addSpecialTokens: true) }
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, text: system)) }
        messages.append(ChatMessage(role: .user, text: text))
        return model.chatPromptIDs(messages)
    }
}

/// Prints one JSON object on stdout.
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

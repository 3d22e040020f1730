import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels

struct LogitsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "logits", abstract: "Print the most likely next tokens after a prompt.")

    @OptionGroup var model: ModelOptions
    @OptionGroup var prompt: PromptOptions
    @Option(name: .long, help: "How many of the highest logits to print.") var topK = 5
    @Flag(name: .long, help: "Print one JSON object.") var json = false

    func run() async throws {
        let m = try model.load()
        let (ids, input, features) = try prompt.prepare(m)
        guard !ids.isEmpty else { throw ValidationError("the prompt has no tokens") }
        let logits = try input.run(model: m, features: features, cache: m.decoder.makeCache(capacity: input.count))
        let top = (0..<logits.count).sorted { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }.prefix(max(topK, 0))
        if json {
            try printJSON(["prompt_ids": ids, "top": top.map { [$0, Double(logits[$0])] as [Any] }])
        } else {
            for id in top { print(String(format: "%6d  %10.5f  %@", id, logits[id], m.tokenizer.decode([id]).debugDescription)) }
        }
    }
}

import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels

struct GenerateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Generate a reply and stream it.")

    @OptionGroup var model: ModelOptions
    @OptionGroup var prompt: PromptOptions
    @OptionGroup var sampling: SamplingOptions
    @Flag(name: .long, help: "Print one JSON object instead of streaming text.") var json = false

    func run() async throws {
        let m = try model.load()
        let (ids, input, features) = try prompt.prepare(m)
        var parameters = sampling.parameters
        parameters.stopStrings += m.template.stopStrings
        // Capped before adding: --max-tokens may be any Int, the cache is never more than the context.
        let cache = m.decoder.makeCache(capacity: input.count + min(parameters.maxTokens, m.decoder.config.contextLength))
        let generator = try input.generator(model: m, features: features, cache: cache, parameters: parameters)
        while let token = try generator.next() {
            if !json { FileHandle.standardOutput.write(Data(token.text.utf8)) }
        }
        if json {
            try printJSON([
                "prompt_ids": ids, "ids": generator.ids, "text": generator.text,
                "finish_reason": generator.finishReason?.rawValue ?? "",
                "prefill_tokens_per_second": generator.stats.prefillTokensPerSecond,
                "decode_tokens_per_second": generator.stats.decodeTokensPerSecond,
            ])
        } else {
            FileHandle.standardOutput.write(Data("\n".utf8))
            if generator.finishReason == .context {
                FileHandle.standardError.write(Data("stopped at the model's context of \(m.decoder.config.contextLength) tokens\n".utf8))
            }
        }
    }
}

/// Sampling flags shared by the commands that generate.
struct SamplingOptions: ParsableArguments {
    @Option(name: .long, help: "Most tokens to generate.") var maxTokens = 256
    @Option(name: .long, help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0.8
    @Option(name: .long, help: "Keep the k most likely tokens (0: off).") var topK = 40
    @Option(name: .long, help: "Nucleus sampling mass.") var topP: Float = 0.95
    @Option(name: .long, help: "Drop tokens below this fraction of the best one's probability.") var minP: Float = 0.05
    @Option(name: .long, help: "Repetition penalty (1: off).") var repeatPenalty: Float = 1
    @Option(name: .long, help: "Random seed (default: random, printed with --json).") var seed: UInt64?
    @Option(name: .long, help: "Stop when this text appears (repeatable).") var stop: [String] = []

    var parameters: GenerationParameters {
        var p = GenerationParameters()
        p.maxTokens = maxTokens
        p.temperature = temperature
        p.topK = topK
        p.topP = topP
        p.minP = minP
        p.repetitionPenalty = repeatPenalty
        p.seed = seed ?? UInt64.random(in: 0...UInt64(UInt32.max))
        p.stopStrings = stop
        return p
    }

    /// Every number finite and in range, by the rules `/set` applies (GenerationParameters.validate).
    func validate() throws {
        do {
            try parameters.validate()
        } catch let error as ParameterError {
            throw ValidationError("--\(error.key.replacingOccurrences(of: "_", with: "-")) must be \(error.rule), not \(error.value)")
        }
    }
}

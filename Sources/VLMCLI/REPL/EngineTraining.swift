import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels
import VLMTraining

// The REPL's fine-tuning commands: /finetune trains the loaded model in place (the adapter is
// active for the following chat), with the same options and store records as `vlmsh finetune`.

extension Engine {
    func finetune(_ args: [String]) throws {
        let options: FineTuneOptions
        do { options = try FineTuneOptions.parse(args) } catch {
            throw UsageError("/finetune: \(FineTuneOptions.message(for: error)) (usage: /finetune --data F --out DIR [--mode lora|projector|lora+projector] [--steps N] …)")
        }
        try requireLoadedModel()
        guard let model, let path = modelPath else { return }
        let interactive = console is TerminalConsole && ProgressBar.stderrIsTerminal
        let runner = FineTuneRunner(chat: model, modelPath: URL(fileURLWithPath: path).standardizedFileURL.path, options: options,
                                    store: store, output: interactive ? .interactive : .lines)
        runner.session = currentSession
        runner.printLine = { [console] in console.line($0) }
        let summary = try runner.run(shouldStop: shouldStop)
        // The weights changed under the chat: cached features and KV prefixes are stale.
        restartChat()
        console.line(summary.text)
        console.line("the fine-tuned weights are active in this chat")
    }
}

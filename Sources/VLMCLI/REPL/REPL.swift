import Foundation
import VLMApp
import VLMModels
import VLMStore

/// The interactive loop: readline in, streamed replies out, every error survived.
struct REPL {
    let model: String
    /// The mmproj GGUF that makes `model` (a text GGUF) a LLaVA, if any.
    var mmproj: String? = nil

    func run() throws {
        let engine = Engine(console: TerminalConsole(), store: try openStore(), commands: REPLCommands.all)
        Interrupt.install()
        engine.shouldStop = { Interrupt.take() }
        let editor = LineEditor(historyPath: ModelStore.home + "/history")
        print("vlmsh — /help for commands, Ctrl-D to quit")
        engine.handle("/load \(model)" + (mmproj.map { " --mmproj \($0)" } ?? ""))

        var assembler = InputAssembler()
        while let line = editor.readLine(prompt: assembler.isContinuing ? "... " : ">>> ") {
            _ = Interrupt.take()
            guard let entry = assembler.feed(line) else { continue }
            editor.remember(entry.text)
            if !engine.handle(entry) { return }
        }
        // Ctrl-D inside a block: its text is not sent, and the user hears why.
        if let error = assembler.unterminatedBlock { engine.console.error("\(error); its text was not sent") }
    }
}

@preconcurrency import CReadline
import Foundation
import VLMApp
import VLMModels

/// GNU readline with a persistent history file and Tab completion as the REPL's command table
/// says (command names, `/set` keys, model names, file paths).
final class LineEditor {
    let historyPath: String

    init(historyPath: String) {
        self.historyPath = historyPath
        rl_readline_name = UnsafePointer(strdup("vlmsh"))
        rl_attempted_completion_function = completeLine
        // Our SIGINT handler decides what Ctrl-C means (clear the line or stop a reply).
        rl_catch_signals = 0
        using_history()
        // append_history only appends to a file that exists.
        if !FileManager.default.fileExists(atPath: historyPath) { _ = write_history(historyPath) }
        _ = read_history(historyPath)
    }

    /// One line, or nil at end of input (Ctrl-D).
    func readLine(prompt: String) -> String? {
        Interrupt.atPrompt = true
        defer { Interrupt.atPrompt = false }
        guard let raw = readline(prompt) else { return nil }
        defer { free(raw) }
        return String(cString: raw)
    }

    func remember(_ entry: String) {
        guard !entry.trimmingCharacters(in: .whitespaces).isEmpty else { return }
        add_history(entry)
        _ = append_history(1, historyPath)
        _ = history_truncate_file(historyPath, 2000)
    }
}

/// Ctrl-C: at the prompt it clears the line; during a reply it asks the generator to stop.
enum Interrupt {
    nonisolated(unsafe) static var requested: sig_atomic_t = 0
    nonisolated(unsafe) static var atPrompt = false

    static func install() {
        signal(SIGINT) { _ in
            Interrupt.requested = 1
            if Interrupt.atPrompt {
                write(STDOUT_FILENO, "^C\n", 3)
                rl_replace_line("", 0)
                rl_on_new_line()
                rl_redisplay()
            }
        }
    }

    /// True once per Ctrl-C.
    static func take() -> Bool {
        if requested == 0 { return false }
        requested = 0
        return true
    }
}

/// Candidates for the word being completed, from the line so far.
nonisolated(unsafe) private var completionCandidates: [String] = []

private func completeLine(_ text: UnsafePointer<CChar>?, _ start: Int32, _ end: Int32) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? {
    let word = text.map { String(cString: $0) } ?? ""
    let line = String(cString: rl_line_buffer)
    let before = String(decoding: line.utf8.prefix(Int(start)), as: UTF8.self)
    switch REPLCommand.completions(in: REPLCommands.all, before: before, word: word) {
    case .filePaths:
        rl_attempted_completion_over = 0   // readline's own file names
        return nil
    case .words(let words):
        rl_attempted_completion_over = 1
        completionCandidates = words
        return rl_completion_matches(word, nextCandidate)
    }
}

private func nextCandidate(_ text: UnsafePointer<CChar>?, _ state: Int32) -> UnsafeMutablePointer<CChar>? {
    let i = Int(state)
    return i < completionCandidates.count ? strdup(completionCandidates[i]) : nil
}

import Foundation
import VLMApp

/// The terminal: reply text and command output on stdout, errors on stderr, and long work as one
/// progress line on stderr (drawn only when stderr is a terminal). Fine-tuning steps become a bar
/// with loss, rate, ETA and a loss sparkline there, or lines on stdout when stderr is not a terminal.
public final class TerminalConsole: Console {
    private var bar: ProgressBar?

    public init() {}

    public func report(_ event: AppEvent) {
        switch event {
        case .token(let text):
            FileHandle.standardOutput.write(Data(text.utf8))
        case .message(let text):
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        case .began(let label):
            bar = ProgressBar(label: label, animated: true)
        case .progressed(let label, let done, let total):
            if bar == nil { bar = ProgressBar(label: label, total: total, animated: true) }
            bar?.update(step: done, of: total)
        case .ended(let failed):
            bar?.finish(trailing: failed ? "failed" : nil)
            bar = nil
        case .trainingStep(let step):
            show(step)
        case .trainingEvaluation(let evaluation):
            line(evaluation.line)
        }
    }

    /// Errors quote files and models: printed through TerminalText (escaped, capped).
    public func error(_ text: String) { FileHandle.standardError.write(Data(("error: " + TerminalText.error(text) + "\n").utf8)) }

    private func show(_ step: TrainingStep) {
        guard ProgressBar.stderrIsTerminal else { return line(step.line) }
        if bar == nil { bar = ProgressBar(label: "fine-tuning", total: step.total) }
        bar?.update(step: step.step, of: step.total, trailing: String(
            format: "loss %.3f lr %.1e %.0f tok/s ETA %@ %@", step.loss, step.learningRate, step.tokensPerSecond,
            ProgressBar.duration(step.remaining), sparkline(step.recentLosses)))
    }
}

/// `vlmsh finetune --json`: one JSON object per step and per evaluation on stdout, notes on
/// stderr, so stdout stays JSON lines.
final class JSONLinesConsole: Console {
    func report(_ event: AppEvent) {
        switch event {
        case .trainingStep(let s):
            try? printJSON(["step": s.step, "loss": s.loss, "lr": s.learningRate, "grad_norm": s.gradNorm, "tokens_per_second": s.tokensPerSecond])
        case .trainingEvaluation(let e):
            try? printJSON(["eval_loss": e.loss, "step": e.step, "eval_token_accuracy": e.tokenAccuracy])
        case .message(let text):
            FileHandle.standardError.write(Data((text + "\n").utf8))
        case .token, .began, .progressed, .ended:
            break
        }
    }

    func error(_ text: String) { FileHandle.standardError.write(Data(("error: " + TerminalText.error(text) + "\n").utf8)) }
}

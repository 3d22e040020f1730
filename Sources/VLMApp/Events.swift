import Foundation

/// What application work tells its front end while it runs. The CLI draws progress bars, streams
/// text or prints JSON lines; a transcript keeps the text. VLMApp never prints by itself.
public enum AppEvent {
    /// Reply text as it streams.
    case token(String)
    /// A line of output: a command's result or a note.
    case message(String)
    /// Long work that counts no steps began (loading a model).
    case began(String)
    /// Long work counted in steps moved on (images encoded, rows evaluated); the first report
    /// of a task carries its label.
    case progressed(String, done: Int, total: Int)
    /// The long work ended; `failed` when it threw.
    case ended(failed: Bool)
    /// One optimizer step of a fine-tuning run.
    case trainingStep(TrainingStep)
    /// The held-out loss of a fine-tuning run at a step.
    case trainingEvaluation(TrainingEvaluation)
}

/// One optimizer step as a fine-tuning run reports it.
public struct TrainingStep: Sendable {
    public var step: Int
    public var total: Int
    public var loss: Double
    public var learningRate: Double
    public var gradNorm: Double
    public var tokensPerSecond: Double
    /// Seconds since the run started, for an ETA.
    public var elapsed: Double
    /// The last losses, oldest first, for a sparkline.
    public var recentLosses: [Double]

    public var line: String {
        String(format: "step %d/%d loss %.4f lr %.2e grad_norm %.3f %.1f tok/s", step, total, loss, learningRate, gradNorm, tokensPerSecond)
    }

    /// Seconds left at the run's average pace so far.
    public var remaining: Double { Double(total - step) * elapsed / Double(max(step, 1)) }
}

public struct TrainingEvaluation: Sendable {
    public var step: Int
    public var loss: Double
    public var tokenAccuracy: Double

    public var line: String { String(format: "step %d eval loss %.4f", step, loss) }
}

/// Where the engine's output goes: the terminal, JSON lines, or a transcript.
public protocol Console: AnyObject {
    func report(_ event: AppEvent)
    /// A problem with a command: one line, the REPL goes on.
    func error(_ text: String)
}

extension Console {
    /// Streamed reply text.
    public func write(_ text: String) { report(.token(text)) }
    /// A complete line of command output.
    public func line(_ text: String) { report(.message(text)) }

    /// Runs `body` as one long task labelled `label` (a spinner on a terminal).
    public func task<T>(_ label: String, _ body: () throws -> T) rethrows -> T {
        report(.began(label))
        do {
            let result = try body()
            report(.ended(failed: false))
            return result
        } catch {
            report(.ended(failed: true))
            throw error
        }
    }

    /// Runs `body` with a step callback `(done, total)`; work that reports no step shows nothing.
    public func steps<T>(_ label: @escaping (_ total: Int) -> String,
                         _ body: (_ report: @escaping (_ done: Int, _ total: Int) -> Void) throws -> T) rethrows -> T {
        var reported = false
        let step = { [weak self] (done: Int, total: Int) in
            reported = true
            self?.report(.progressed(label(total), done: done, total: total))
        }
        do {
            let result = try body(step)
            if reported { report(.ended(failed: false)) }
            return result
        } catch {
            if reported { report(.ended(failed: true)) }
            throw error
        }
    }
}

/// Collects everything, for `vlmsh run --json` and tests.
public final class TranscriptConsole: Console {
    public private(set) var output = ""
    public private(set) var errors: [String] = []
    public init() {}

    public func report(_ event: AppEvent) {
        switch event {
        case .token(let text): output += text
        case .message(let text): output += text + "\n"
        case .trainingStep(let step): output += step.line + "\n"
        case .trainingEvaluation(let evaluation): output += evaluation.line + "\n"
        case .began, .progressed, .ended: break
        }
    }

    public func error(_ text: String) { errors.append(text); output += "error: " + text + "\n" }
}

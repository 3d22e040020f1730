import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A one-line progress display on stderr for long work (model load, image encode, fine-tuning):
///
///     loading model.gguf ⠹ 1.4s
///     encoding 3 images ⠼ |████████▌       | 2/3 4.1s
///     fine-tuning |██████▊         | 42% 0:31 loss 1.23 lr 1e-4 12 tok/s ETA 0:42
///
/// A label, then a bar (when a fraction or a step of a total is known), the elapsed time and an
/// optional trailing text. It redraws in place with `\r` at most ~10 times a second and ends with
/// a newline. When stderr is not a terminal (pipes, `--json`, tests) it draws nothing at all.
/// `animate()` redraws from a background thread so the spinner turns and the time counts while
/// the caller blocks in work that reports no progress.
public final class ProgressBar: @unchecked Sendable {
    public static var stderrIsTerminal: Bool { isatty(STDERR_FILENO) == 1 }

    public let label: String
    /// False when not drawing (not a terminal): the state still updates, nothing is written.
    public let isEnabled: Bool
    private let fileDescriptor: Int32
    private let barWidth: Int
    private let interval: Double
    private let started: UInt64

    private let lock = NSLock()
    private var fraction: Double?
    private var step: Int?
    private var total: Int?
    private var trailing: String
    private var lastDraw: UInt64?
    private var spinning = false
    private var frame = 0
    private var finished = false

    /// `total` gives a step count (`update(step:)`); without it there is no bar until a fraction
    /// arrives. `animated` starts `animate()` at once. `interval` is the least time between redraws.
    public init(label: String, total: Int? = nil, trailing: String = "", animated: Bool = false,
                enabled: Bool = ProgressBar.stderrIsTerminal, fileDescriptor: Int32 = STDERR_FILENO,
                barWidth: Int = 20, interval: Double = 0.1) {
        self.label = label
        self.total = total
        self.step = total == nil ? nil : 0
        self.trailing = trailing
        self.isEnabled = enabled
        self.fileDescriptor = fileDescriptor
        self.barWidth = barWidth
        self.interval = interval
        started = DispatchTime.now().uptimeNanoseconds
        guard enabled else { return }
        draw(force: true, spinning: animated)
        if animated { startTicker() }
    }

    /// Runs `body` with an animated bar and finishes it (trailing "failed" if `body` throws).
    public static func run<T>(_ label: String, enabled: Bool = ProgressBar.stderrIsTerminal,
                              _ body: (ProgressBar) throws -> T) rethrows -> T {
        let bar = ProgressBar(label: label, animated: true, enabled: enabled)
        do {
            let result = try body(bar)
            bar.finish()
            return result
        } catch {
            bar.finish(trailing: "failed")
            throw error
        }
    }

    /// Runs `body` with a step-reporting callback `(done, total)`; the first report opens an
    /// animated bar labelled `label(total)`, so work that turns out to need no steps shows nothing.
    public static func steps<T>(_ label: @escaping (_ total: Int) -> String, enabled: Bool = ProgressBar.stderrIsTerminal,
                                _ body: (_ report: @escaping (_ done: Int, _ total: Int) -> Void) throws -> T) rethrows -> T {
        var bar: ProgressBar?
        let report = { (done: Int, total: Int) in
            if bar == nil {
                bar = ProgressBar(label: label(total), total: total, animated: true, enabled: enabled)
            }
            bar?.update(step: done, of: total)
        }
        do {
            let result = try body(report)
            bar?.finish()
            return result
        } catch {
            bar?.finish(trailing: "failed")
            throw error
        }
    }

    // MARK: - Updates

    /// Sets the done fraction (0…1) and optionally the trailing text.
    public func update(fraction: Double, trailing: String? = nil) {
        change { $0.fraction = min(max(fraction, 0), 1); if let trailing { $0.trailing = trailing } }
    }

    /// Sets the step done out of `total` (or the total given at init).
    public func update(step: Int, of total: Int? = nil, trailing: String? = nil) {
        change {
            if let total { $0.total = total }
            $0.step = step
            if let trailing { $0.trailing = trailing }
        }
    }

    /// Replaces the trailing text only (e.g. "loss 1.23 lr 1e-4 12 tok/s ETA 0:42").
    public func update(trailing: String) {
        change { $0.trailing = trailing }
    }

    /// Redraws every `interval` from a background thread (spinner and elapsed time) until `finish`;
    /// this also shows an update the throttle held back within one interval.
    public func animate() {
        guard isEnabled else { return }
        lock.lock()
        let start = !spinning && !finished
        spinning = true
        lock.unlock()
        if start { startTicker() }
    }

    private func startTicker() {
        let pause = useconds_t(interval * 1_000_000)
        // Weak: a bar dropped without `finish` stops its thread too.
        let thread = Thread { [weak self] in
            while true {
                usleep(pause)
                guard let self, self.tick() else { return }
            }
        }
        thread.name = "vlmsh.progress"
        thread.start()
    }

    /// One animation frame; false once finished.
    private func tick() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if finished { return false }
        frame += 1
        drawLocked(force: true)
        return true
    }

    /// Draws the final state and a newline; later calls do nothing.
    public func finish(trailing: String? = nil) {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        if let trailing { self.trailing = trailing }
        if total == nil && fraction == nil && self.trailing.isEmpty { self.trailing = "done" }
        finished = true
        guard isEnabled else { return }
        drawLocked(force: true)
        emit("\n")
    }

    /// Seconds since the bar was created.
    public var elapsed: Double { Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9 }

    /// Remaining time at the average rate so far, once some fraction is done.
    public var estimatedRemaining: Double? {
        lock.lock()
        defer { lock.unlock() }
        guard let f = doneFraction, f > 0 else { return nil }
        return elapsed * (1 - f) / f
    }

    // MARK: - Rendering

    private static let spinner = Array("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
    private static let eighths = Array(" ▏▎▍▌▋▊▉")

    private var doneFraction: Double? {
        if let fraction { return fraction }
        if let step, let total, total > 0 { return min(Double(step) / Double(total), 1) }
        return nil
    }

    /// The line as drawn now (no `\r`, no escape codes).
    public func render() -> String {
        lock.lock()
        defer { lock.unlock() }
        return renderLocked(elapsed: elapsed)
    }

    private func renderLocked(elapsed: Double) -> String {
        var parts = [label]
        if spinning && !finished { parts.append(String(Self.spinner[frame % Self.spinner.count])) }
        if let f = doneFraction {
            parts.append("|" + Self.bar(f, width: barWidth) + "|")
            if let step, let total, fraction == nil {
                parts.append("\(step)/\(total)")
            } else {
                parts.append("\(Int((f * 100).rounded(.down)))%")
            }
        }
        parts.append(Self.duration(elapsed))
        if !trailing.isEmpty { parts.append(trailing) }
        return parts.joined(separator: " ")
    }

    /// `width` cells filled to `fraction`, with eighth blocks for the partial cell.
    public static func bar(_ fraction: Double, width: Int) -> String {
        let cells = min(max(fraction, 0), 1) * Double(width)
        let full = Int(cells)
        var s = String(repeating: "█", count: full)
        if full < width {
            s.append(eighths[Int((cells - Double(full)) * 8)])
            s += String(repeating: " ", count: width - full - 1)
        }
        return s
    }

    /// "0.4s" under ten seconds, then "m:ss", then "h:mm:ss" (also for ETAs).
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        if seconds < 10 { return String(format: "%.1fs", seconds) }
        let s = Int(seconds.rounded())
        if s < 3600 { return String(format: "%d:%02d", s / 60, s % 60) }
        return String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60)
    }

    // MARK: - Drawing

    private func change(_ body: (ProgressBar) -> Void) {
        lock.lock()
        defer { lock.unlock() }
        guard !finished else { return }
        body(self)
        drawLocked(force: false)
    }

    private func draw(force: Bool, spinning: Bool) {
        lock.lock()
        defer { lock.unlock() }
        self.spinning = spinning
        drawLocked(force: force)
    }

    private func drawLocked(force: Bool) {
        guard isEnabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        if !force, let last = lastDraw, Double(now - last) / 1e9 < interval { return }
        lastDraw = now
        var line = renderLocked(elapsed: Double(now - started) / 1e9)
        // A wrapped line would not redraw in place: keep within the terminal's width.
        let columns = Self.columns(fileDescriptor)
        if line.count >= columns { line = String(line.prefix(max(columns - 1, 1))) }
        emit("\r" + line + "\u{1b}[K")
    }

    private func emit(_ text: String) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fileDescriptor, $0.baseAddress! + offset, $0.count - offset) }
            if n > 0 { offset += n } else if n < 0 && errno == EINTR { continue } else { return }
        }
    }

    private static func columns(_ fd: Int32) -> Int {
        var size = winsize()
        if ioctl(fd, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
        return 80
    }
}

/// Values as a one-line chart of block heights, lowest ▁ to highest █ (e.g. a loss curve).
/// Equal values draw as a flat middle line; non-finite values as spaces.
public func sparkline(_ values: [Double]) -> String {
    let ticks = Array("▁▂▃▄▅▆▇█")
    let finite = values.filter(\.isFinite)
    guard let lo = finite.min(), let hi = finite.max() else { return String(repeating: " ", count: values.count) }
    return String(values.map { v -> Character in
        guard v.isFinite else { return " " }
        guard hi > lo else { return ticks[3] }
        return ticks[min(Int((v - lo) / (hi - lo) * Double(ticks.count - 1) + 0.5), ticks.count - 1)]
    })
}

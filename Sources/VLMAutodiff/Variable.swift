import Foundation
import VLMTensor

// Reverse-mode automatic differentiation. Every model's forward is written once over the ops of
// this module: a forward pass records one closure per op on a `Tape`; `backward` runs them
// newest-first, each adding its inputs' gradients from its output's. Gradients flow through frozen
// values (a frozen layer still passes dL/dx on) but are stored only where some trainable leaf is
// upstream: `requiresGrad` propagates from leaves to outputs. Inference runs the same forward on a
// tape that does not record (`Tape(recording: false)`), so nothing is kept for a backward pass.

/// A node of the graph: a Float32 value and, once something flows back into it, its gradient.
public final class Variable: @unchecked Sendable {
    public let value: Tensor
    /// True for trainable leaves and for every value computed from one. A leaf's flag is set by
    /// whoever trains it (a fine-tune picks what trains from the loaded model's leaves).
    public var requiresGrad: Bool
    /// Same shape as `value`; nil until a gradient arrives.
    public private(set) var grad: Tensor?

    public init(_ value: Tensor, requiresGrad: Bool = false) {
        self.value = value
        self.requiresGrad = requiresGrad
    }

    /// A frozen constant (no gradient is kept for it).
    public convenience init(shape: [Int], values: [Float]) {
        self.init(Tensor(shape: shape, values: values))
    }

    public var shape: [Int] { value.shape }
    public var count: Int { value.count }
    /// Rows when viewed as a matrix `[rows, last dimension]`.
    public var rows: Int { value.count / max(value.shape.last ?? 1, 1) }
    public var columns: Int { value.shape.last ?? 1 }
    public var data: UnsafeMutablePointer<Float> { value.data }

    /// The gradient buffer, zero-filled when first asked for. Ops add into it.
    public func gradBuffer() -> UnsafeMutablePointer<Float> {
        if let grad { return grad.data }
        let g = Tensor(shape: value.shape, zeroed: true)
        grad = g
        return g.data
    }

    /// Where an op puts its share of the gradient: the existing buffer (`accumulate` true: add
    /// into it) or, for the first share, a new uninitialized buffer the op must overwrite entirely
    /// (`accumulate` false), which spares zero-filling it and adding to zeros.
    package func gradDestination() -> (pointer: UnsafeMutablePointer<Float>, accumulate: Bool) {
        if let grad { return (grad.data, true) }
        let g = Tensor(shape: value.shape, zeroed: false)
        grad = g
        return (g.data, false)
    }

    /// Takes `gradient` (same shape) as this value's gradient when none has arrived yet, without
    /// copying; returns false when there is one already (the caller then adds into it).
    package func adoptGrad(_ gradient: Tensor) -> Bool {
        guard grad == nil, gradient.shape == value.shape else { return false }
        grad = gradient
        return true
    }

    /// Clears the accumulated gradient (after an optimizer step), keeping the buffer.
    public func zeroGrad() {
        if let grad { grad.data.update(repeating: 0, count: grad.count) }
    }

    /// Frees the gradient of an intermediate value once it has been passed on.
    package func releaseGrad() { grad = nil }
}

/// Records the backward closures of one forward pass.
public final class Tape {
    private var entries: [(output: Variable, op: String, backward: (UnsafeMutablePointer<Float>) -> Void)] = []
    /// When profiling: the end of the previous op's forward pass.
    private var mark = TrainingProfile.enabled ? DispatchTime.now().uptimeNanoseconds : 0

    /// False for inference: ops compute their outputs and keep nothing for a backward pass.
    public let isRecording: Bool
    /// The stream dropout draws from while training; nil turns dropout off (evaluation, inference).
    public var random: SeededRandom?
    /// Gradient checkpointing (the HF Trainer's `gradient_checkpointing`): a `segment` (a decoder
    /// layer) keeps only its input in the forward pass and is run again, recording, when the
    /// backward pass reaches it. Saved activations shrink from every layer's to one layer's, for
    /// a second forward pass of each segment.
    public var gradientCheckpointing = false
    /// A segment's first forward pass under checkpointing: outputs carry `requiresGrad` as a
    /// recording tape's do (so ops compute exactly what they will when recomputed), but nothing
    /// is kept for backward.
    private var propagatesGradientFlags = false

    /// Output buffers kept across passes of the same shapes (one decode step after another),
    /// so a step allocates none: see `rewind`.
    private var arena: [FloatStorage]?
    private var arenaCursor = 0

    public init(recording: Bool = true, random: SeededRandom? = nil) {
        isRecording = recording
        self.random = random
    }

    /// A tape that records nothing and hands out the same output buffers pass after pass: the
    /// values of one pass are valid until `rewind` starts the next.
    public static func reusingBuffers() -> Tape {
        let tape = Tape(recording: false)
        tape.arena = []
        return tape
    }

    /// Starts a new pass on a `reusingBuffers` tape: its outputs' buffers are handed out again.
    public func rewind() { arenaCursor = 0 }

    /// A new op output of `shape` (uninitialized): it requires a gradient when some input does
    /// and this tape records.
    package func output(shape: [Int], requiresGrad: Bool) -> Variable {
        guard arena != nil else {
            return Variable(Tensor(shape: shape, zeroed: false), requiresGrad: (isRecording || propagatesGradientFlags) && requiresGrad)
        }
        let count = shape.reduce(1, *)
        if arenaCursor == arena!.count {
            arena!.append(FloatStorage(count: count, zeroed: false))
        } else if arena![arenaCursor].count != count {
            arena![arenaCursor] = FloatStorage(count: count, zeroed: false)
        }
        defer { arenaCursor += 1 }
        return Variable(Tensor(shape: shape, storage: arena![arenaCursor]))
    }

    /// Number of recorded ops (for tests and diagnostics).
    public var count: Int { entries.count }

    /// Registers `backward(dOutput)` for an op whose output is `output`. Nothing is recorded when
    /// no gradient can reach a trainable value through it.
    /// When `VLMSH_PROFILE_TRAINING` is set, the time since the previous op recorded is counted
    /// as this op's forward time (every op records, frozen ones too, just before returning).
    package func record(_ output: Variable, op: String = #function, _ backward: @escaping (UnsafeMutablePointer<Float>) -> Void) {
        var key = ""
        if TrainingProfile.enabled {
            key = TrainingProfile.key(op, output)
            let now = DispatchTime.now().uptimeNanoseconds
            TrainingProfile.add("forward  " + key, seconds: Double(now - mark) / 1e9)
            mark = now
        }
        guard isRecording, output.requiresGrad else { return }
        entries.append((output, key, backward))
    }

    /// `body(input, tape)`: a piece of a model's forward written once (a decoder layer), run on
    /// this tape, or with `gradientCheckpointing` as one op that keeps only `input` and runs
    /// `body` again on a recording tape of its own when the backward pass reaches it. The second
    /// run draws the same dropout masks (the random stream is rewound to where the first began)
    /// and computes the same values, so losses and gradients are those of the plain graph.
    public func segment(_ input: Variable, _ body: @escaping (Variable, Tape) -> Variable) -> Variable {
        guard isRecording && gradientCheckpointing else { return body(input, self) }
        let start = random
        let first = Tape(recording: false, random: start)
        first.propagatesGradientFlags = true
        let y = body(input, first)
        random = first.random
        record(y) { dy in
            let again = Tape(recording: true, random: start)
            // A leaf of its own over the same values: the input's gradient is handed on below.
            let x = Variable(input.value, requiresGrad: input.requiresGrad)
            let out = body(x, again)
            let (g, _) = out.gradDestination()
            copyThreaded(dy, g, out.count)
            again.backward(from: out)
            guard input.requiresGrad, let gx = x.grad else { return }
            if !input.adoptGrad(gx) { Kernels.add(gx.data, into: input.gradBuffer(), input.count) }
        }
        return y
    }

    /// Back-propagates from the scalar `loss` (dLoss = `seed`), then forgets the graph.
    /// Gradients add into the leaves' buffers, so several backward passes accumulate.
    public func backward(_ loss: Variable, seed: Float = 1) {
        precondition(loss.count == 1, "backward starts from a scalar, got shape \(loss.shape)")
        backward(loss, outputGradient: [seed])
    }

    /// Back-propagates a given gradient of a non-scalar output (vector–Jacobian product).
    public func backward(_ output: Variable, outputGradient: [Float]) {
        precondition(output.count == outputGradient.count, "gradient of \(outputGradient.count) values for shape \(output.shape)")
        if output.requiresGrad {
            let g = output.gradBuffer()
            for i in outputGradient.indices { g[i] += outputGradient[i] }
        }
        backward(from: output)
    }

    /// Runs the recorded steps newest-first from the gradients already in place, then forgets the graph.
    private func backward(from output: Variable) {
        let profiling = TrainingProfile.enabled
        for (output, op, step) in entries.reversed() {
            guard let g = output.grad else { continue }   // nothing flowed back into this op
            let t0 = profiling ? DispatchTime.now().uptimeNanoseconds : 0
            step(g.data)
            output.releaseGrad()
            if profiling { TrainingProfile.add("backward " + op, seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9) }
        }
        entries.removeAll()
    }

    /// Drops the graph without back-propagating (evaluation passes).
    public func reset() { entries.removeAll() }
}

/// Shapes an op was given that it cannot combine: a programming error in a model graph.
package func checkShape(_ condition: Bool, _ message: @autoclosure () -> String) {
    precondition(condition, message())
}

/// Time per op kind across a training run, for finding hot paths: on when the environment variable
/// `VLMSH_PROFILE_TRAINING` is set (to anything but 0). Ops are keyed by name and output shape.
public enum TrainingProfile {
    public static let enabled: Bool = {
        guard let v = ProcessInfo.processInfo.environment["VLMSH_PROFILE_TRAINING"] else { return false }
        return !v.isEmpty && v != "0"
    }()
    nonisolated(unsafe) private static var totals: [String: (seconds: Double, calls: Int)] = [:]
    private static let lock = NSLock()

    static func key(_ function: String, _ output: Variable) -> String {
        let name = function.prefix { $0 != "(" }
        return "\(name) \(output.shape)"
    }

    /// Adds `seconds` to `name` (when profiling).
    public static func add(_ name: String, seconds: Double) {
        guard enabled else { return }
        lock.lock(); defer { lock.unlock() }
        let t = totals[name] ?? (0, 0)
        totals[name] = (t.seconds + seconds, t.calls + 1)
    }

    /// The totals as a table, slowest first; nil when not profiling.
    public static func report() -> String? {
        guard enabled else { return nil }
        lock.lock(); defer { lock.unlock() }
        let sum = totals.values.reduce(0) { $0 + $1.seconds }
        var out = String(format: "training profile: %.3f s in all\n", sum)
        for (name, t) in totals.sorted(by: { $0.value.seconds > $1.value.seconds }) {
            out += String(format: "%9.3f s %5.1f%% %7d  ", t.seconds, 100 * t.seconds / max(sum, 1e-12), t.calls) + name + "\n"
        }
        return out
    }
}

import Foundation

/// Learning-rate schedules as transformers' `get_scheduler` defines them: the factor multiplying
/// each group's base rate at optimizer step `step` (0-based, the value used by that step).
public struct LearningRateSchedule: Sendable, Codable, Equatable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        /// With warmup steps this is `constant_with_warmup` (what a LLaVA recipe with warmup means).
        case constant
        case linear
        case cosine
    }

    public var kind: Kind
    public var warmupSteps: Int
    public var totalSteps: Int

    public init(kind: Kind, warmupSteps: Int, totalSteps: Int) {
        self.kind = kind; self.warmupSteps = warmupSteps; self.totalSteps = totalSteps
    }

    /// HF's `get_warmup_steps`: explicit steps win, else ⌈total · ratio⌉.
    public static func warmupSteps(steps: Int?, ratio: Double?, totalSteps: Int) -> Int {
        if let steps, steps > 0 { return steps }
        if let ratio, ratio > 0 { return Int((Double(totalSteps) * ratio).rounded(.up)) }
        return 0
    }

    public func factor(at step: Int) -> Float {
        if step < warmupSteps { return Float(step) / Float(max(1, warmupSteps)) }
        let progress = Double(step - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
        switch kind {
        case .constant:
            return 1
        case .linear:
            return Float(max(0, Double(totalSteps - step) / Double(max(1, totalSteps - warmupSteps))))
        case .cosine:
            return Float(max(0, 0.5 * (1 + cos(Double.pi * progress))))
        }
    }
}

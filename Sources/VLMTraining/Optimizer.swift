import Foundation
import VLMTensor

// AdamW as `torch.optim.AdamW`, with parameter groups as `LLaVATrainer.create_optimizer` makes
// them: weight decay on every trainable weight but biases and norm weights, the projector's
// parameters at `mm_projector_lr` and (LLaVA-NeXT) the vision tower's at `mm_vision_tower_lr`
// when given.

/// Which part of a LLaVA model a trainable tensor belongs to (the optimizer groups by it).
public enum ParameterPart: Sendable, CaseIterable {
    case languageModel, projector, visionTower
}

/// A trainable tensor under its canonical name (PEFT's key for LoRA, the HF name otherwise).
public struct Parameter: @unchecked Sendable {
    public let name: String
    public let variable: Variable
    public let part: ParameterPart
    public init(name: String, variable: Variable, group part: ParameterPart = .languageModel) {
        self.name = name; self.variable = variable; self.part = part
    }

    /// LLaVA decays every parameter except biases and layer-norm weights.
    public var decays: Bool { !name.hasSuffix("bias") && !name.contains("norm") }
}

/// One optimizer group: its parameters share a base learning rate and a weight decay.
public struct ParameterGroup: @unchecked Sendable {
    public var parameters: [Parameter]
    public var learningRate: Float
    public var weightDecay: Float
}

public struct OptimizerSettings: Sendable, Codable, Equatable {
    public var learningRate: Float
    public var projectorLearningRate: Float?
    public var visionTowerLearningRate: Float?
    public var weightDecay: Float
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public init(learningRate: Float, projectorLearningRate: Float? = nil, visionTowerLearningRate: Float? = nil, weightDecay: Float = 0) {
        self.learningRate = learningRate; self.projectorLearningRate = projectorLearningRate
        self.visionTowerLearningRate = visionTowerLearningRate; self.weightDecay = weightDecay
    }

    func learningRate(_ part: ParameterPart) -> Float {
        switch part {
        case .languageModel: return learningRate
        case .projector: return projectorLearningRate ?? learningRate
        case .visionTower: return visionTowerLearningRate ?? learningRate
        }
    }
}

public final class AdamW {
    public private(set) var groups: [ParameterGroup]
    public let settings: OptimizerSettings
    /// Completed optimizer steps (torch's per-parameter `step`; all parameters step together).
    public private(set) var step = 0
    /// First and second moments by parameter name.
    private(set) var moments: [String: (m: Tensor, v: Tensor)] = [:]

    /// The groups `LLaVATrainer.create_optimizer` builds; empty groups are dropped.
    public init(parameters: [Parameter], settings: OptimizerSettings) {
        self.settings = settings
        var groups: [ParameterGroup] = []
        for part in ParameterPart.allCases {
            let lr = settings.learningRate(part)
            for decays in [true, false] {
                let members = parameters.filter { $0.part == part && $0.decays == decays }
                if !members.isEmpty { groups.append(ParameterGroup(parameters: members, learningRate: lr, weightDecay: decays ? settings.weightDecay : 0)) }
            }
        }
        self.groups = groups
        for p in parameters { moments[p.name] = (Tensor(shape: p.variable.shape), Tensor(shape: p.variable.shape)) }
    }

    public var parameters: [Parameter] { groups.flatMap(\.parameters) }

    /// One update with every group's learning rate multiplied by `factor` (the schedule's value).
    public func update(learningRateFactor factor: Float = 1) {
        step += 1
        let b1 = settings.beta1, b2 = settings.beta2, eps = settings.epsilon
        let correction1 = 1 - powf(b1, Float(step))
        let correction2Root = (1 - powf(b2, Float(step))).squareRoot()
        for group in groups {
            let lr = group.learningRate * factor
            let stepSize = lr / correction1
            let keep = 1 - lr * group.weightDecay
            for p in group.parameters {
                guard let grad = p.variable.grad, let (m, v) = moments[p.name] else { continue }
                let x = p.variable.data, g = grad.data, pm = m.data, pv = v.data
                Parallel.forEach(p.variable.count, minChunk: 1 << 14) { range in
                    for i in range {
                        x[i] *= keep
                        pm[i] = b1 * pm[i] + (1 - b1) * g[i]
                        pv[i] = b2 * pv[i] + (1 - b2) * g[i] * g[i]
                        let denominator = pv[i].squareRoot() / correction2Root + eps
                        x[i] -= stepSize * pm[i] / denominator
                    }
                }
            }
        }
    }

    public func zeroGradients() {
        for p in parameters { p.variable.zeroGrad() }
    }

    /// The L2 norm of all gradients together; when above `maxNorm` (> 0), every gradient is
    /// scaled by maxNorm / (norm + 1e-6), as `torch.nn.utils.clip_grad_norm_`. Returns the norm
    /// before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Float) -> Float {
        var total = 0.0
        for p in parameters {
            guard let g = p.variable.grad else { continue }
            for i in 0..<g.count { total += Double(g.data[i]) * Double(g.data[i]) }
        }
        let norm = Float(total.squareRoot())
        if maxNorm > 0 {
            let coefficient = maxNorm / (norm + 1e-6)
            if coefficient < 1 {
                for p in parameters {
                    guard let g = p.variable.grad else { continue }
                    for i in 0..<g.count { g.data[i] *= coefficient }
                }
            }
        }
        return norm
    }

    // MARK: - State (checkpoints)

    /// Moments as named tensors (`<name>.exp_avg`, `<name>.exp_avg_sq`).
    public var stateTensors: [(name: String, tensor: Tensor)] {
        parameters.flatMap { p -> [(name: String, tensor: Tensor)] in
            let (m, v) = moments[p.name]!
            return [(p.name + ".exp_avg", m), (p.name + ".exp_avg_sq", v)]
        }
    }

    /// Restores a saved step count and moments; every parameter's moments must be present.
    public func restore(step: Int, tensors: [String: Tensor]) throws {
        for p in parameters {
            guard let m = tensors[p.name + ".exp_avg"], let v = tensors[p.name + ".exp_avg_sq"],
                  m.count == p.variable.count, v.count == p.variable.count else {
                throw TrainingError("optimizer state has no moments for '\(p.name)'")
            }
            let (pm, pv) = moments[p.name]!
            pm.data.update(from: m.data, count: m.count)
            pv.data.update(from: v.data, count: v.count)
        }
        self.step = step
    }
}

/// A fine-tuning error with a one-line message.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

import Foundation
import VLMTensor

// AdamW as `torch.optim.AdamW`, with parameter groups as `LLaVATrainer.create_optimizer` makes
// them: weight decay on every trainable weight but biases and norm weights, the projector's
// parameters at `mm_projector_lr` and (LLaVA-NeXT) the vision tower's at `mm_vision_tower_lr`
// when given. Its moments are Float32, or 8-bit as bitsandbytes keeps them (BlockwiseMoments.swift).

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

/// How the optimizer keeps its moments, under the HF Trainer's `--optim` names.
public enum OptimizerKind: String, Sendable, Codable, CaseIterable {
    /// Float32 moments (`torch.optim.AdamW`).
    case adamw = "adamw_torch"
    /// Blockwise 8-bit moments (bitsandbytes' `AdamW(optim_bits=8)`), for tensors of at least
    /// `OptimizerSettings.min8BitSize` elements that are not embeddings; the rest keep Float32 moments.
    case adamw8bit = "adamw_bnb_8bit"
}

public struct OptimizerSettings: Sendable, Codable, Equatable {
    public var kind: OptimizerKind = .adamw
    /// bitsandbytes' `min_8bit_size`: tensors with fewer elements keep Float32 moments.
    public var min8BitSize = 4096
    public var learningRate: Float
    public var projectorLearningRate: Float?
    public var visionTowerLearningRate: Float?
    public var weightDecay: Float
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public init(kind: OptimizerKind = .adamw, learningRate: Float, projectorLearningRate: Float? = nil,
                visionTowerLearningRate: Float? = nil, weightDecay: Float = 0) {
        self.kind = kind; self.learningRate = learningRate; self.projectorLearningRate = projectorLearningRate
        self.visionTowerLearningRate = visionTowerLearningRate; self.weightDecay = weightDecay
    }

    /// Whether a parameter's moments are kept in 8 bits. Embeddings stay in 32 bits, as
    /// `LLaVATrainer.create_optimizer` registers them with bitsandbytes' override manager.
    func keeps8Bit(_ p: Parameter) -> Bool {
        kind == .adamw8bit && p.variable.count >= min8BitSize && !p.name.contains("embed")
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
    private(set) var moments: [String: Moments] = [:]

    /// One parameter's moments: Float32, or blockwise 8-bit (`--optim adamw_bnb_8bit`).
    enum Moments {
        case full(m: Tensor, v: Tensor)
        case blockwise(BlockwiseMoments)
    }

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
        for p in parameters {
            moments[p.name] = settings.keeps8Bit(p)
                ? .blockwise(BlockwiseMoments(count: p.variable.count))
                : .full(m: Tensor(shape: p.variable.shape), v: Tensor(shape: p.variable.shape))
        }
    }

    public var parameters: [Parameter] { groups.flatMap(\.parameters) }

    /// Bytes the moments take (what `--optim adamw_bnb_8bit` cuts to about a quarter).
    public var stateBytes: Int {
        moments.values.reduce(0) { total, moments in
            switch moments {
            case .full(let m, _): return total + 8 * m.count
            case .blockwise(let b): return total + b.bytes
            }
        }
    }

    /// A group's numbers for one update.
    struct StepConstants {
        var beta1, beta2, oneMinusBeta1, oneMinusBeta2, epsilon: Float
        var correction2Root, stepSize, keep: Float
    }

    /// One update with every group's learning rate multiplied by `factor` (the schedule's value).
    public func update(learningRateFactor factor: Float = 1) {
        step += 1
        let b1 = settings.beta1, b2 = settings.beta2
        // The 8-bit path derives its constants in Double from the betas' decimal values, as
        // bitsandbytes does from Python floats (1 - 0.9 is 0.1 there, not Float's 0.10000002).
        let d1 = Double("\(b1)")!, d2 = Double("\(b2)")!
        for group in groups {
            let lr = group.learningRate * factor
            let full = StepConstants(beta1: b1, beta2: b2, oneMinusBeta1: 1 - b1, oneMinusBeta2: 1 - b2, epsilon: settings.epsilon,
                                     correction2Root: (1 - powf(b2, Float(step))).squareRoot(),
                                     stepSize: lr / (1 - powf(b1, Float(step))), keep: 1 - lr * group.weightDecay)
            let dlr = Double("\(lr)")!
            let blockwise = StepConstants(beta1: b1, beta2: b2, oneMinusBeta1: Float(1 - d1), oneMinusBeta2: Float(1 - d2),
                                          epsilon: settings.epsilon, correction2Root: Float((1 - pow(d2, Double(step))).squareRoot()),
                                          stepSize: Float(dlr / (1 - pow(d1, Double(step)))),
                                          keep: Float(1 - dlr * Double(group.weightDecay)))
            for p in group.parameters {
                guard let grad = p.variable.grad, let state = moments[p.name] else { continue }
                switch state {
                case .full(let m, let v): Self.step(p.variable.data, grad.data, m.data, v.data, count: p.variable.count, full)
                case .blockwise(let b): b.step(p.variable.data, grad.data, blockwise)
                }
            }
        }
    }

    /// `torch.optim.AdamW`'s update of Float32 moments.
    private static func step(_ x: UnsafeMutablePointer<Float>, _ g: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                             _ v: UnsafeMutablePointer<Float>, count: Int, _ h: StepConstants) {
        Parallel.forEach(count, minChunk: 1 << 14) { range in
            for i in range {
                x[i] *= h.keep
                m[i] = h.beta1 * m[i] + h.oneMinusBeta1 * g[i]
                v[i] = h.beta2 * v[i] + h.oneMinusBeta2 * g[i] * g[i]
                let denominator = v[i].squareRoot() / h.correction2Root + h.epsilon
                x[i] -= h.stepSize * m[i] / denominator
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

    /// Moments as named tensors: `<name>.exp_avg` and `<name>.exp_avg_sq` (Float32), or
    /// `<name>.state1`, `.absmax1`, `.state2`, `.absmax2` (8-bit, bitsandbytes' state names).
    public var stateTensors: [(name: String, tensor: Tensor)] {
        parameters.flatMap { p -> [(name: String, tensor: Tensor)] in
            switch moments[p.name]! {
            case .full(let m, let v): return [(p.name + ".exp_avg", m), (p.name + ".exp_avg_sq", v)]
            case .blockwise(let b): return b.tensors.map { (p.name + $0.suffix, $0.tensor) }
            }
        }
    }

    /// Restores a saved step count and moments; every parameter's moments must be present.
    public func restore(step: Int, tensors: [String: Tensor]) throws {
        for p in parameters {
            let restored: Bool
            switch moments[p.name]! {
            case .full(let pm, let pv):
                if let m = tensors[p.name + ".exp_avg"], let v = tensors[p.name + ".exp_avg_sq"],
                   m.count == p.variable.count, v.count == p.variable.count {
                    pm.data.update(from: m.data, count: m.count)
                    pv.data.update(from: v.data, count: v.count)
                    restored = true
                } else { restored = false }
            case .blockwise(let b): restored = b.restore(tensors, name: p.name)
            }
            guard restored else { throw TrainingError("optimizer state has no moments for '\(p.name)'") }
        }
        self.step = step
    }
}

/// A fine-tuning error with a one-line message.
public struct TrainingError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ message: String) { description = message }
}

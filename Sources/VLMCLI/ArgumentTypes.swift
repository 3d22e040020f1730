import ArgumentParser
import VLMAutodiff
import VLMDemo
import VLMImage
import VLMModels
import VLMStore
import VLMTensor
import VLMTraining

// Options whose values come from a fixed set are parsed into their enums by ArgumentParser, so a
// wrong value is a usage error naming the allowed ones, and --help lists them. The enums live in
// the library modules; the CLI adds the parsing.

extension FineTuneMode: ExpressibleByArgument {}
extension TrainingObjective: ExpressibleByArgument {}
extension LearningRateSchedule.Kind: ExpressibleByArgument {}
extension SceneLayout: ExpressibleByArgument {}
extension ExportFormat: ExpressibleByArgument {}
extension ActivationPrecision: ExpressibleByArgument {}
extension KVCachePrecision: ExpressibleByArgument {}

extension OptimizerKind: ExpressibleByArgument {
    /// The HF Trainer's other spellings of the same two optimizers.
    public init?(argument: String) {
        switch argument {
        case "adamw_hf", "adamw_torch_fused": self = .adamw
        case "adamw_8bit", "paged_adamw_8bit": self = .adamw8bit
        default: self.init(rawValue: argument)
        }
    }
}

extension GGUFExportType: ExpressibleByArgument {}
extension LlavaInitVisionKind: ExpressibleByArgument {}
extension VisionFeatureSelect: ExpressibleByArgument {}
extension Activation: ExpressibleByArgument {
    /// The command line takes an activation only as init-llava's --projector-act.
    public static var allValueStrings: [String] { [Activation.gelu, .geluPytorchTanh].map(\.rawValue) }
}

extension MergeDType: ExpressibleByArgument {
    /// F16 and f16 alike, as dtypes are written both ways.
    public init?(argument: String) { self.init(rawValue: argument.lowercased()) }
}

/// `--kinds caption,colour,…`: a comma list of demo question kinds.
struct DemoKindList: ExpressibleByArgument {
    let kinds: Set<DemoQuestionKind>

    init?(argument: String) {
        var kinds = Set<DemoQuestionKind>()
        for name in argument.split(separator: ",", omittingEmptySubsequences: false) {
            guard let kind = DemoQuestionKind(rawValue: name.trimmingCharacters(in: .whitespaces)) else { return nil }
            kinds.insert(kind)
        }
        self.kinds = kinds
    }

    static var allValueStrings: [String] { DemoQuestionKind.allCases.map(\.rawValue) }
}

extension CaseIterable where Self: RawRepresentable, RawValue == String {
    /// "a, b or c", for usage lines.
    static var choices: String {
        let names = allCases.map(\.rawValue)
        return names.count < 2 ? names.joined() : names.dropLast().joined(separator: ", ") + " or " + names.last!
    }
}

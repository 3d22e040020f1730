import ArgumentParser
import Foundation
import VLMApp
import VLMGeneration
import VLMModels
import VLMTraining

/// LLaVA's training flags on `vlmsh finetune`: the names `llava/train/train.py` declares in its
/// ModelArguments, DataArguments and TrainingArguments (Hugging Face's, parsed by
/// HfArgumentParser), translated into vlmsh's own options before ArgumentParser sees the list.
/// HfArgumentParser's spellings are accepted: `--flag value`, `--flag=value`, booleans as
/// True/False/true/false/1/0 (and the rest of `strtobool`'s words), a bare `--flag` for true.
///
/// Every flag is in `table`: mapped to a vlmsh option, combined into `--mode`, checked against the
/// model folder (what the model is built of), accepted only at the value vlmsh works with, or
/// ignored (cluster, precision and memory settings that do not change what a CPU run computes;
/// listed in one line). A feature vlmsh lacks is an error saying so; a flag not in the table is
/// an error naming it. vlmsh's own options given as well override what the LLaVA flags say, and
/// a LLaVA flag given again overrides the earlier one (a script's, by the command line's).
enum LlavaArguments {
    /// What one LLaVA flag becomes.
    enum Mapping {
        /// The value goes to a vlmsh option, through `convert` when given (nil from it: no option).
        case option(String, convert: (@Sendable (String) throws -> String?)? = nil)
        /// A boolean: true turns on a vlmsh flag.
        case flag(String)
        /// Part of what trains (combined into `--mode`, see `mode`).
        case trains
        /// A fact of the model's architecture, which vlmsh reads from the model folder: checked
        /// against the loaded model (`LlavaModelCheck`).
        case model
        /// vlmsh works one way; the flag is accepted at the values meaning that way (compared
        /// case-insensitively; booleans as parsed), else unsupported with `reason`.
        case fixed([String], reason: String)
        /// Not supported by vlmsh: `reason` says what it lacks.
        case unsupported(String)
        /// No effect on what a single-process CPU run computes.
        case ignored

        var isOptionOrIgnored: Bool {
            switch self {
            case .option, .ignored: return true
            default: return false
            }
        }
    }

    struct Flag {
        let mapping: Mapping
        /// HfArgumentParser's `bool` fields: a bare flag means true, values are strtobool words.
        let isBoolean: Bool
    }

    private static func option(_ name: String, convert: (@Sendable (String) throws -> String?)? = nil) -> Flag {
        Flag(mapping: .option(name, convert: convert), isBoolean: false)
    }
    private static func bool(_ mapping: Mapping) -> Flag { Flag(mapping: mapping, isBoolean: true) }
    private static func value(_ mapping: Mapping) -> Flag { Flag(mapping: mapping, isBoolean: false) }

    /// Every LLaVA flag vlmsh knows, by name.
    static let table: [String: Flag] = [
        // ModelArguments
        "model_name_or_path": option("--model"),
        "version": option("--template", convert: template(forVersion:)),
        "freeze_backbone": bool(.trains),
        "tune_mm_mlp_adapter": bool(.trains),
        "vision_tower": value(.model),
        "mm_vision_select_layer": value(.model),
        "mm_vision_select_feature": value(.model),
        "mm_projector_type": value(.model),
        "pretrain_mm_mlp_adapter": option("--adapter-init", convert: projectorFolder),
        "mm_use_im_start_end": bool(.fixed(["false"], reason: "vlmsh does not add <im_start>/<im_end> tokens around images")),
        "mm_use_im_patch_token": bool(.fixed(["false"], reason: "vlmsh does not add <im_patch> tokens")),
        "mm_patch_merge_type": value(.model),
        // DataArguments
        "data_path": option("--data"),
        "image_folder": option("--image-folder"),
        "image_aspect_ratio": value(.model),
        "lazy_preprocess": bool(.ignored),
        "is_multimodal": bool(.ignored),
        // TrainingArguments (LLaVA's)
        "freeze_mm_mlp_adapter": bool(.trains),
        "lora_enable": bool(.trains),
        "lora_r": option("--lora-r"),
        "lora_alpha": option("--lora-alpha"),
        "lora_dropout": option("--lora-dropout"),
        "lora_weight_path": value(.fixed([""], reason: "start from an adapter folder with --adapter-init")),
        "lora_bias": value(.fixed(["none"], reason: "vlmsh's LoRA has no bias terms")),
        "mm_projector_lr": option("--mm-projector-lr"),
        "mm_vision_tower_lr": option("--mm-vision-tower-lr"),
        "group_by_modality_length": bool(.flag("--group-by-modality-length")),
        "model_max_length": option("--max-length"),
        "bits": value(.fixed(["16"], reason: "vlmsh trains LoRA over the model as loaded (no 4- or 8-bit QLoRA)")),
        "double_quant": bool(.ignored),
        "quant_type": value(.ignored),
        "mpt_attn_impl": value(.ignored),
        "cache_dir": value(.ignored),
        "remove_unused_columns": bool(.ignored),
        // TrainingArguments (Hugging Face's)
        "output_dir": option("--out"),
        "num_train_epochs": option("--epochs"),
        // The Trainer's -1 means "not set" (epochs decide).
        "max_steps": option("--steps", convert: { value in Int(value).map { $0 > 0 } == false ? nil : value }),
        "per_device_train_batch_size": option("--batch-size"),
        "gradient_accumulation_steps": option("--grad-accum"),
        "learning_rate": option("--lr"),
        "weight_decay": option("--weight-decay"),
        "warmup_ratio": option("--warmup-ratio"),
        "warmup_steps": option("--warmup-steps", convert: { $0 == "0" ? nil : $0 }),
        "lr_scheduler_type": option("--scheduler", convert: scheduler),
        "max_grad_norm": option("--max-grad-norm"),
        "seed": option("--seed"),
        "save_steps": option("--save-steps"),
        "save_strategy": value(.fixed(["steps", "no"], reason: "vlmsh saves every --save-steps steps and at the end")),
        "optim": option("--optim", convert: optimizer),
        "logging_steps": value(.fixed(["1"], reason: "vlmsh logs every step")),
        // bf16 is vlmsh's --bf16; the other cluster, precision and memory settings do not change
        // what a CPU run in one process computes.
        "bf16": bool(.flag("--bf16")),
        "deepspeed": value(.ignored), "tf32": bool(.ignored), "fp16": bool(.ignored),
        "gradient_checkpointing": bool(.flag("--gradient-checkpointing")), "dataloader_num_workers": value(.ignored), "report_to": value(.ignored),
        "evaluation_strategy": value(.ignored), "eval_strategy": value(.ignored), "eval_steps": value(.ignored),
        "save_total_limit": value(.ignored), "per_device_eval_batch_size": value(.ignored), "run_name": value(.ignored),
        "local_rank": value(.ignored), "ddp_find_unused_parameters": bool(.ignored), "logging_dir": value(.ignored),
        "torch_compile": bool(.ignored), "dataloader_pin_memory": bool(.ignored), "do_train": bool(.ignored),
    ]

    /// Hidden vlmsh options the translation passes on to `vlmsh finetune`.
    static let ignoredOption = "--llava-ignored"
    static let modelCheckOption = "--llava-model-check"
    static let launchOption = "--llava-launch"
    static let fromScriptOption = "--from-script"

    /// One LLaVA flag as given.
    struct Given: Equatable {
        let name: String
        let value: String
    }

    /// The arguments of `vlmsh …` with any LLaVA flags (and `--from-script`) of a `finetune`
    /// translated; other argument lists come back as they are.
    /// Problems are usage errors (exit code 64), as ArgumentParser's own are.
    static func translate(_ arguments: [String]) throws -> [String] {
        guard arguments.first == "finetune" else { return arguments }
        let rest = Array(arguments.dropFirst())
        guard rest.contains(where: isLlavaStyle) else { return arguments }
        do {
            return ["finetune"] + (try translateFinetune(rest))
        } catch let error as UsageError {
            throw ValidationError(error.description)
        }
    }

    /// A flag only LLaVA spells so: a name with an underscore, or one of the table's (vlmsh's
    /// own `--seed` means the same either way).
    static func isLlavaStyle(_ argument: String) -> Bool {
        guard let name = flagName(argument) else { return false }
        return "--" + name == fromScriptOption || name.contains("_") || (table[name] != nil && name != "seed")
    }

    /// `--name` or `--name=value` → name.
    static func flagName(_ argument: String) -> String? {
        guard argument.hasPrefix("--"), argument.count > 2 else { return nil }
        return String(argument.dropFirst(2).prefix { $0 != "=" })
    }

    /// `finetune`'s arguments: the script's LLaVA flags (`--from-script`), then the command line's
    /// LLaVA flags and vlmsh options, become vlmsh options alone.
    static func translateFinetune(_ arguments: [String]) throws -> [String] {
        var given: [Given] = [], native: [String] = [], script: LaunchScript?
        var i = 0
        while i < arguments.count {
            let argument = arguments[i]
            guard let name = flagName(argument), "--" + name == fromScriptOption || table[name] != nil || name.contains("_") else {
                native.append(argument)
                i += 1
                continue
            }
            let inline = argument.firstIndex(of: "=").map { String(argument[argument.index(after: $0)...]) }
            if "--" + name == fromScriptOption {
                guard let path = inline ?? (i + 1 < arguments.count ? arguments[i + 1] : nil) else { throw UsageError("\(fromScriptOption) needs a launch script") }
                guard script == nil else { throw UsageError("\(fromScriptOption) is given twice") }
                script = try LaunchScript(path: path)
                i += inline == nil ? 2 : 1
                continue
            }
            let (value, consumed) = try flagValue(name, inline: inline, next: i + 1 < arguments.count ? arguments[i + 1] : nil)
            given.append(Given(name: name, value: value))
            i += consumed
        }
        // The script's flags first: the command line's override them.
        let all = (script?.flags ?? []) + given
        var latest: [String: String] = [:], order: [String] = []
        for flag in all {
            if latest[flag.name] == nil { order.append(flag.name) }
            latest[flag.name] = flag.value
        }
        let overridden = Set(native.compactMap(flagName).map { "--" + $0 })
        var options: [(option: String, value: String?, from: String)] = []
        var ignored: [String] = [], checks: [String] = []
        var trains: [String: Bool] = [:]
        for name in order {
            let value = latest[name]!
            guard let flag = table[name] else { throw UsageError("--\(name): not a LLaVA train.py flag vlmsh knows") }
            let shown = "--\(name) \(value)"
            // A variable the script left unset stops the run unless the flag is only ignored or
            // becomes a vlmsh option given on the command line (checked below).
            if let variable = LaunchScript.unresolvedVariable(in: value), !flag.mapping.isOptionOrIgnored {
                throw UsageError("\(shown): \(variable) is not set\(script.map { " in \($0.path)" } ?? ""); give --\(name) on the command line")
            }
            switch flag.mapping {
            case .option(let option, let convert):
                guard let converted = try convert.map({ try $0(value) }) ?? value else { continue }
                options.append((option, converted, shown))
            case .flag(let option):
                if try boolean(value, name) { options.append((option, nil, shown)) }
            case .trains:
                trains[name] = try boolean(value, name)
            case .model:
                checks.append("\(name)=\(value)")
            case .fixed(let accepted, let reason):
                let normalized = flag.isBoolean ? String(try boolean(value, name)) : value.lowercased()
                guard accepted.contains(normalized) else { throw UsageError("\(shown): not supported by vlmsh (\(reason))") }
            case .unsupported(let reason):
                throw UsageError("\(shown): not supported by vlmsh (\(reason))")
            case .ignored:
                ignored.append(shown)
            }
        }
        if latest["save_strategy"]?.lowercased() == "no" { options.removeAll { $0.option == "--save-steps" } }
        if let mode = try mode(trains) { options.append(("--mode", mode, "--lora_enable/--tune_mm_mlp_adapter")) }

        var out: [String] = []
        for (option, value, from) in options where !overridden.contains(option) {
            if let value {
                if let variable = LaunchScript.unresolvedVariable(in: value) {
                    throw UsageError("\(from): \(variable) is not set\(script.map { " in \($0.path)" } ?? ""); give \(from.split(separator: " ")[0]) (or \(option)) on the command line")
                }
                out += [option, value]
            } else {
                out.append(option)
            }
        }
        // Attached with "=": the list starts with "--", which ArgumentParser would take for a flag.
        if !ignored.isEmpty { out.append(ignoredOption + "=" + ignored.joined(separator: ", ")) }
        for check in checks where !overridden.contains(modelCheckOption) { out += [modelCheckOption, check] }
        let record = FineTuneRequest.LaunchRecord(script: script?.path, arguments: all.flatMap { ["--" + $0.name, $0.value] })
        out += [launchOption, String(decoding: try JSONEncoder().encode(record), as: UTF8.self)]
        return out + native
    }

    /// The value of flag `name` and how many arguments it took (the flag's own included), as
    /// HfArgumentParser reads them: a boolean takes the next word unless it is another flag
    /// (argparse's `nargs="?"` with `const=True`), so a bare boolean flag is true.
    static func flagValue(_ name: String, inline: String?, next: String?) throws -> (String, Int) {
        if let inline { return (inline, 1) }
        let nextIsFlag = next.map { $0.hasPrefix("-") && Double($0) == nil } ?? true
        if table[name]?.isBoolean == true {
            return nextIsFlag ? ("True", 1) : (next!, 2)
        }
        guard let next, !nextIsFlag else { throw UsageError("--\(name) needs a value") }
        return (next, 2)
    }

    /// HfArgumentParser's `string_to_bool` (distutils' strtobool words).
    static func strtobool(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "y", "yes", "t", "true", "on", "1": return true
        case "n", "no", "f", "false", "off", "0": return false
        default: return nil
        }
    }

    private static func boolean(_ text: String, _ name: String) throws -> Bool {
        guard let value = strtobool(text) else { throw UsageError("--\(name) \(text): expected a boolean (True, False, true, false, 1 or 0)") }
        return value
    }

    /// What trains, from LLaVA's flags as train.py applies them: `tune_mm_mlp_adapter` trains the
    /// projector alone; `lora_enable` trains LoRA and, unless `freeze_mm_mlp_adapter`, the
    /// projector (created after PEFT wraps the model, it stays trainable); neither means a full
    /// fine-tune of the language model. nil when none of the flags is given (vlmsh's --mode).
    static func mode(_ trains: [String: Bool]) throws -> String? {
        guard !trains.isEmpty else { return nil }
        let lora = trains["lora_enable"] ?? false, tuneAdapter = trains["tune_mm_mlp_adapter"] ?? false
        let freezeAdapter = trains["freeze_mm_mlp_adapter"] ?? false, freezeBackbone = trains["freeze_backbone"] ?? false
        if tuneAdapter || (!lora && freezeBackbone) {
            guard !freezeAdapter else { throw UsageError("--freeze_mm_mlp_adapter True leaves nothing to train") }
            return "projector"
        }
        if lora { return freezeAdapter ? "lora" : "lora+projector" }
        throw UsageError("full fine-tuning of the language model (no --lora_enable True, --tune_mm_mlp_adapter True or --freeze_backbone True) is not supported by vlmsh")
    }

    /// LLaVA's conversation template (`--version`) → vlmsh's chat template.
    @Sendable static func template(forVersion version: String) throws -> String? {
        let templates = ["v1": "llava-v1", "vicuna_v1": "llava-v1", "llava_v1": "llava-v1", "plain": "plain",
                         "chatml_direct": "chatml", "qwen_1_5": "chatml", "qwen_2": "chatml",
                         "llava_llama_3": "llama-3", "mistral_instruct": "mistral"]
        guard let template = templates[version] else {
            if LaunchScript.unresolvedVariable(in: version) != nil { return version }
            throw UsageError("--version \(version): not supported by vlmsh (its chat templates: \(templates.keys.sorted().joined(separator: ", ")))")
        }
        return template
    }

    /// `--pretrain_mm_mlp_adapter DIR/mm_projector.safetensors` → the folder `--adapter-init` reads.
    @Sendable static func projectorFolder(_ path: String) throws -> String? {
        if path.hasSuffix(".bin") {
            throw UsageError("--pretrain_mm_mlp_adapter \(path): not supported by vlmsh (it reads projector weights as safetensors; give the folder of an mm_projector.safetensors)")
        }
        return path.hasSuffix(".safetensors") ? (path as NSString).deletingLastPathComponent : path
    }

    /// The Trainer's `lr_scheduler_type` → vlmsh's `--scheduler`.
    @Sendable static func optimizer(_ name: String) throws -> String? {
        guard let kind = OptimizerKind(argument: name.lowercased()) else {
            throw UsageError("--optim \(name): not supported by vlmsh (\(OptimizerKind.allCases.map(\.rawValue).joined(separator: " or ")), or the HF Trainer's other names for them)")
        }
        return kind.rawValue
    }

    @Sendable static func scheduler(_ name: String) throws -> String? {
        switch name.lowercased() {
        case "cosine", "linear", "constant": return name.lowercased()
        // vlmsh's constant schedule warms up when given warmup.
        case "constant_with_warmup": return "constant"
        default: throw UsageError("--lr_scheduler_type \(name): not supported by vlmsh (cosine, linear, constant or constant_with_warmup)")
        }
    }
}

/// LLaVA's flags that describe the model (`--vision_tower`, `--mm_vision_select_layer`, …):
/// vlmsh trains the model as its folder builds it, so each must agree with the loaded model.
enum LlavaModelCheck {
    /// `checks` are "name=value" pairs, as `LlavaArguments` passes them on.
    static func verify(_ checks: [String], against chat: ChatModel) throws {
        guard !checks.isEmpty else { return }
        guard let llava = (chat as? VisionLanguageModel)?.llava else {
            throw UsageError("--\(checks[0].prefix { $0 != "=" }): the model takes no images (a LLaVA model folder has a vision tower)")
        }
        for check in checks {
            let name = String(check.prefix { $0 != "=" }), value = String(check.drop { $0 != "=" }.dropFirst())
            let found: String
            switch name {
            case "vision_tower":
                continue   // a name on the Hub: the folder's own tower is the one that trains
            case "mm_vision_select_layer":
                found = llava.config.visionFeatureLayers.map(String.init).joined(separator: ",")
            case "mm_vision_select_feature":
                found = llava.dropsClassToken ? "patch" : "cls_patch"
            case "mm_projector_type":
                found = llava.projector.kind.rawValue
            case "image_aspect_ratio":
                found = llava.anyResolution != nil ? "anyres" : llava.padToSquare ? "pad" : "square"
                guard ["pad", "square", "anyres"].contains(value) else {
                    throw UsageError("--image_aspect_ratio \(value): not supported by vlmsh (pad, square or anyres)")
                }
            case "mm_patch_merge_type":
                // LLaVA-NeXT folders pack tiles as spatial_unpad; LLaVA's features are one flat run.
                found = llava.anyResolution != nil ? "spatial_unpad" : "flat"
            default:
                throw UsageError("--\(name): not a model setting vlmsh checks")
            }
            guard value == found else {
                throw UsageError("--\(name) \(value): the model folder has \(found) (vlmsh trains the model as its folder builds it)")
            }
        }
    }
}

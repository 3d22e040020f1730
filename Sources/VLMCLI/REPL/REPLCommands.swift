import ArgumentParser
import Foundation
import VLMApp
import VLMTraining

/// The REPL's command table: the engine's own commands, with the ones that take a `vlmsh`
/// subcommand's options inserted before /help. Their arguments are parsed here, as `vlmsh`
/// parses them; the work is the engine's or the library's.
public enum REPLCommands {
    public static let all: [REPLCommand] = Engine.commands(inserting: tools)

    static let tools: [REPLCommand] = [
        REPLCommand("/finetune", "--data F --out DIR [--mode \(FineTuneMode.allCases.map(\.rawValue).joined(separator: "|"))] [--steps N] …",
                    "fine-tune the loaded model (vlmsh finetune --help lists the options)", completion: .filePaths) { engine, args in
            let options = try parse(FineTuneOptions.self, args)
            try engine.finetune(try options.request())
        },
        REPLCommand("/eval", "--data F [--limit N] [--blank-images] …", "score the loaded model (vlmsh eval --help lists the options)",
                    completion: .filePaths) { engine, args in
            let command = try parse(EvalCommand.self, args)
            guard command.model.adapter == nil else { throw UsageError("/eval evaluates the loaded model; apply an adapter with /adapter load PATH first") }
            try engine.evaluate(command.request, store: !command.noStore)
        },
        REPLCommand("/make-demo-data", "--out DIR …", "write the synthetic shapes dataset (vlmsh make-demo-data --help)",
                    completion: .filePaths) { engine, args in
            engine.console.line(try parse(DemoDataCommand.self, args).execute().line)
        },
        REPLCommand("/init-llava", "--out DIR …", "a new LLaVA folder around a language model (vlmsh init-llava --help)",
                    completion: .filePaths) { engine, args in
            engine.console.line(try parse(InitLlavaCommand.self, args).execute())
        },
        REPLCommand("/merge", "--model M --adapter DIR --out DIR", "an adapter merged into a new model folder (vlmsh merge --help)",
                    completion: .filePaths) { engine, args in
            engine.console.line(try parse(MergeCommand.self, args).execute().line)
        },
    ]

    /// A subcommand's options parsed as `vlmsh` would, or one usage line.
    static func parse<C: ParsableArguments>(_ type: C.Type, _ args: CommandArguments) throws -> C {
        let words = try args.words()
        do { return try C.parse(words) } catch {
            throw UsageError("\(args.name): \(C.message(for: error)) (usage: \(args.usage))")
        }
    }
}

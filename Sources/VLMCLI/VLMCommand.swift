import ArgumentParser
import Foundation
import VLMApp

public struct VLMCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vlmsh",
        abstract: "Load, chat with, fine-tune and evaluate vision-language models from a terminal.",
        subcommands: [
            ChatCommand.self, GenerateCommand.self, LogitsCommand.self, TokenizeCommand.self, RunCommand.self,
            ReplayCommand.self, SessionsCommand.self, ShowCommand.self, ExportCommand.self, BenchCommand.self, FinetuneCommand.self,
            PreprocessCommand.self,
            DemoDataCommand.self, InitLlavaCommand.self,
            EvalCommand.self, MergeCommand.self, ImportRunCommand.self, ExportRunCommand.self, ExportGGUFCommand.self,
        ],
        defaultSubcommand: ChatCommand.self
    )

    public init() {}
}

extension VLMCommand {
    /// Parses the arguments and runs the chosen command; any error becomes one line on stderr
    /// and exit code 1 (ArgumentParser's own usage errors keep their messages).
    public static func run(_ arguments: [String]? = nil) async {
        do {
            // LLaVA's training flags become vlmsh's options before ArgumentParser reads the list.
            var command = try parseAsRoot(try LlavaArguments.translate(arguments ?? Array(CommandLine.arguments.dropFirst())))
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: printable(error))
        }
    }

    /// The error as it may reach the terminal: messages quoting files and models go through
    /// TerminalText (control characters escaped, length capped); ArgumentParser's own errors
    /// (usage, help, exit codes) pass as they are.
    static func printable(_ error: Error) -> Error {
        switch error {
        case let error as ValidationError: return ValidationError(TerminalText.error(error.message))
        case is CleanExit, is ExitCode: return error
        default:
            if String(reflecting: type(of: error)).hasPrefix("ArgumentParser.") { return error }
            // Worded as ArgumentParser words errors it prints itself.
            let message = (error as? LocalizedError)?.errorDescription
                ?? (type(of: error) is NSError.Type ? error.localizedDescription : "\(error)")
            return PrintableError(description: TerminalText.error(message))
        }
    }
}

/// An error's message, already made safe to print.
struct PrintableError: Error, CustomStringConvertible {
    let description: String
}

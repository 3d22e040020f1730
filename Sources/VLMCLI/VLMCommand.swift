import ArgumentParser

public struct VLMCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vlmsh",
        abstract: "Load, chat with, fine-tune and evaluate vision-language models from a terminal.",
        subcommands: [
            ChatCommand.self, GenerateCommand.self, LogitsCommand.self, TokenizeCommand.self, RunCommand.self,
            ReplayCommand.self, SessionsCommand.self, ShowCommand.self, ExportCommand.self, BenchCommand.self, FinetuneCommand.self,
            PreprocessCommand.self,
            DemoDataCommand.self, InitLlavaCommand.self,
            EvalCommand.self, MergeCommand.self,
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
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

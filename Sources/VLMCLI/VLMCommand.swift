import ArgumentParser

public struct VLMCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vlmsh",
        abstract: "Load, chat with, fine-tune and evaluate vision-language models from a terminal.",
        subcommands: [GenerateCommand.self, LogitsCommand.self, TokenizeCommand.self, BenchCommand.self]
    )

    public init() {}
}

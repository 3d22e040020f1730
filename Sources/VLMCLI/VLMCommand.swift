import ArgumentParser

public struct VLMCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "vlmsh",
        abstract: "Work with vision-language models from a terminal.",
        subcommands: [])
    public init() {}
}

import ArgumentParser
import Foundation
import VLMApp
import VLMFormats
import VLMGeneration
import VLMModels
import VLMStore
import VLMTraining

struct ExportRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export-run",
        abstract: "Write a fine-tune as a folder that trains on transformers + PEFT under torchrun or DeepSpeed, with vlmsh's losses.",
        discussion: """
        The run is a stored one (its id, from vlmsh finetune) or the finetune flags after --from-args (vlmsh's or LLaVA's, \
        --from-script too). DIR gets llava.json with the images copied in, tokenized.jsonl (every row as vlmsh trains on it), \
        run.json (settings, the rows of every step), init/ (the weights at step 0), train.py, ds_config_zero2.json, \
        ds_config_zero3.json, requirements.txt and launch.sh. train.py leaves LLaVA's output files and trainer_state.json \
        in DIR/output, which vlmsh import-run reads.
        """)

    @Argument(help: "A stored fine-tune run's id.") var run: String?
    @Option(name: .long, help: "The launch folder to write.") var out: String
    @Option(name: .customLong("nproc-per-node"), help: "Processes launch.sh starts (torchrun --nproc_per_node, deepspeed --num_gpus).") var processes = 2
    @Option(name: .long, help: "What launch.sh runs by default: torchrun or deepspeed.") var launcher: RunExport.Launcher = .torchrun
    @Option(name: .customLong("from-args"), parsing: .remaining, help: "The rest of the line: the arguments of vlmsh finetune.") var fromArgs: [String] = []

    func validate() throws {
        if (run == nil) == fromArgs.isEmpty { throw ValidationError("give a run id or --from-args followed by finetune's arguments") }
    }

    func run() async throws {
        try requireFolderOrAbsent(out)
        let store = try openStore()
        let modelPath: String, request: FineTuneRequest, chat: ChatModel
        if let run {
            (modelPath, request) = try storedRequest(run, store: store)
            chat = try loadChatModel(path: modelPath)
        } else {
            var arguments = fromArgs
            // train.py names its own output folder: finetune's is not needed.
            if !arguments.contains(where: { $0 == "--out" || $0.hasPrefix("--out=") || $0 == "--output_dir" || $0.hasPrefix("--output_dir=") }) {
                arguments += ["--out", out + "/output"]
            }
            let command = try FinetuneCommand.parse(Array(try LlavaArguments.translate(["finetune"] + arguments).dropFirst()))
            try command.validate()
            request = try command.options.request()
            modelPath = URL(fileURLWithPath: try command.model.path()).standardizedFileURL.path
            chat = try loadChatModel(path: modelPath, mmproj: try command.model.mmprojPath(), template: command.model.template)
            try LlavaModelCheck.verify(command.options.llavaModelChecks, against: chat)
        }
        let summary = try RunExport.write(chat: chat, modelPath: modelPath, request: request, to: out,
                                          launch: .init(processes: processes, launcher: launcher), store: store, console: TerminalConsole())
        print(summary.text)
    }

    /// A stored run's model and request, from the arguments it was recorded with.
    func storedRequest(_ reference: String, store: Store) throws -> (String, FineTuneRequest) {
        guard let id = Int64(reference), id > 0 else { throw UsageError("\(reference): not a run id") }
        guard let record = try store.run(id: id) else { throw UsageError("no run \(id) in the store") }
        guard record.kind == .finetune,
              let args = try? JSONSerialization.jsonObject(with: Data(record.args.utf8)) as? [String: Any],
              let model = args["model"] as? String, let data = args["data"] as? String,
              let settings = try? JSONDecoder().decode(FineTuneSettings.self, from: Data(record.args.utf8)) else {
            throw UsageError("run \(id) is not a fine-tune recorded with its arguments")
        }
        return (model, FineTuneRequest(data: data, out: out + "/output", settings: settings, imageFolder: args["image_folder"] as? String))
    }
}

extension RunExport.Launcher: ExpressibleByArgument {}

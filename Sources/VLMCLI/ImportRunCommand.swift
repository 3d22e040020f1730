import ArgumentParser
import Foundation
import VLMApp
import VLMGeneration
import VLMModels
import VLMTraining

struct ImportRunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import-run",
        abstract: "Register a run trained elsewhere (LLaVA's train.py, torchrun, DeepSpeed) in the store.",
        discussion: """
        DIR is a Hugging Face Trainer output folder: its adapter (PEFT LoRA, the projector as safetensors, \
        mm_projector.bin or LLaVA's non_lora_trainables.bin), trainer_state.json and checkpoint-N/ folders. \
        Its metrics and checkpoints go into the store; --adapter DIR and /adapter load DIR use the folder.
        """)

    @Argument(help: "The run's output folder.") var directory: String
    @Option(name: .long, help: "Check that the adapter and every checkpoint apply to this model first (a path or a name in the model store).") var model: String?

    func run() async throws {
        let path = URL(fileURLWithPath: directory).standardizedFileURL.path
        let imported = try ImportedRun.read(directory: path)
        let model = try self.model.map { name -> (path: String, chat: ChatModel) in
            let resolved = try ModelStore.resolve(name)
            return (resolved, try loadChatModel(path: resolved))
        }
        let store = try openStore()
        print(try RunImport.register(imported, model: model, store: store).summary)
    }
}

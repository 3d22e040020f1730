import ArgumentParser
import Foundation
import VLMApp
import VLMAutodiff
import VLMGeneration
import VLMImage
import VLMModels
import VLMStore
import VLMTensor
import VLMTokenizers
import VLMTraining

/// Which model to load, with which adapter, and how to talk to it: shared by every command
/// that runs a model, so each takes the same options.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A .gguf file, a Hugging Face folder, or a name in the model store.")
    var model = "smollm2"

    @Option(name: .long, help: ArgumentHelp("With a LLaVA text GGUF as --model: its mmproj GGUF (llama.cpp's vision tower and projector).", valueName: "mmproj.gguf"))
    var mmproj: String?

    @Option(name: .long, help: "Chat template name: built in, or a NAME.txt in prompts/ or $VLMSH_PROMPTS (default: detected from the model).")
    var template: String?

    @Option(name: .long, help: "An adapter folder to apply: a PEFT LoRA, projector or vision tower weights, or a fine-tune's output (llama.cpp's --lora).")
    var adapter: String?

    @OptionGroup var runtime: RuntimeOptions

    /// The model file or folder `--model` names.
    func path() throws -> String { try ModelStore.resolve(model) }

    /// The mmproj file `--mmproj` names (a path).
    func mmprojPath() throws -> String? {
        try mmproj.map { reference in
            let path = (reference as NSString).expandingTildeInPath
            guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("--mmproj \(reference): no such file") }
            return path
        }
    }

    func load() throws -> ChatModel { try loadWithAdapter().model }

    /// The model with `--adapter` applied, and the applied adapter (for records).
    func loadWithAdapter(progress: Bool = false) throws -> (model: ChatModel, adapter: AppliedAdapter?) {
        let path = try path()
        let chat = try ProgressBar.run("loading \((path as NSString).lastPathComponent)", enabled: progress && ProgressBar.stderrIsTerminal) { _ in
            try loadChatModel(path: path, mmproj: try mmprojPath(), template: template)
        }
        return (chat, try adapter.map { try AppliedAdapter.apply(directory: $0, to: chat) })
    }

    /// A text model (GGUF or Hugging Face folder) with `--adapter`'s LoRA applied.
    func loadText() throws -> TextModel {
        if mmproj != nil { throw ValidationError("--mmproj: this command runs the text model only") }
        let text = try TextModel(path: path(), template: template)
        if let adapter { _ = try AppliedAdapter.apply(directory: adapter, to: text) }
        return text
    }

    /// For commands that take a model but no adapter: `--adapter` is an error saying what to use.
    func rejectAdapter(_ instead: String) throws {
        if adapter != nil { throw ValidationError("--adapter: \(instead)") }
    }
}

/// Options of every command that runs a model. `--max-memory`: what a model, an image or a
/// sequence needs is checked against it before it is allocated. `--activations`: how inference
/// multiplies quantized weights; `--kv-cache`: how it keeps keys and values. All are set once for
/// the process when the arguments are validated.
struct RuntimeOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Memory vlmsh may use, e.g. 8G or 512M (default: $VLMSH_MAX_MEMORY, else this machine's RAM).", valueName: "size"))
    var maxMemory: ByteCount?

    @Option(name: .long, help: ArgumentHelp("How inference multiplies quantized GGUF weights: f32 keeps activations Float32 (transformers' numbers); int8 quantizes them to 8 bits as llama.cpp does (faster, llama.cpp's numbers). Default: $VLMSH_ACTIVATIONS, else f32.", valueName: "f32|int8"))
    var activations: ActivationPrecision?

    @Option(name: .long, help: ArgumentHelp("How inference keeps the KV cache: f32 (transformers' numbers) or f16 (half the memory and of what decode reads at long contexts, as llama.cpp keeps it). Default: $VLMSH_KV_CACHE, else f16 with --activations int8 and f32 with f32.", valueName: "f32|f16"))
    var kvCache: KVCachePrecision?

    @Flag(name: .customLong("bf16"), help: "Large matrix products (training's, the vision encoder's, a Float32 prefill's) in bfloat16 with Float32 sums, as the seed's bf16 training (with AVX512-BF16; elsewhere a warning and Float32). Default: Float32.")
    var bf16 = false

    func validate() throws {
        if bf16 {
            // A LLaVA launch script's --bf16 True still runs on a CPU without the instructions.
            if Kernels.hasBF16Instructions { Kernels.bf16Products = true }
            else { FileHandle.standardError.write(Data("warning: --bf16: this CPU has no AVX512-BF16; products stay Float32\n".utf8)) }
        }
        if let activations {
            QuantizedMatrix.activations = activations
        } else if let text = ProcessInfo.processInfo.environment["VLMSH_ACTIVATIONS"], ActivationPrecision(rawValue: text) == nil {
            throw UsageError("VLMSH_ACTIVATIONS=\(text): use f32 or int8")
        }
        if let kvCache {
            KVCachePrecision.chosen = kvCache
        } else if let text = ProcessInfo.processInfo.environment["VLMSH_KV_CACHE"], KVCachePrecision(rawValue: text) == nil {
            throw UsageError("VLMSH_KV_CACHE=\(text): use f32 or f16")
        }
        if let maxMemory { return MemoryBudget.limit = maxMemory.bytes }
        // MemoryBudget reads the variable where no command line exists (the library); here a
        // value it cannot read is an error rather than a limit silently not applied.
        if let text = ProcessInfo.processInfo.environment["VLMSH_MAX_MEMORY"], MemoryBudget.parse(text) == nil {
            throw UsageError("VLMSH_MAX_MEMORY=\(text) is not a size (e.g. 8G, 512M, 1.5GiB or a number of bytes)")
        }
    }
}

/// A size in bytes as `MemoryBudget.parse` reads it (8G, 512M, 1.5GiB, plain bytes).
struct ByteCount: ExpressibleByArgument {
    let bytes: Int
    init?(argument: String) {
        guard let bytes = MemoryBudget.parse(argument) else { return nil }
        self.bytes = bytes
    }
}

/// The prompt: text (chat-wrapped unless --raw) or literal token ids.
struct PromptOptions: ParsableArguments {
    @Option(name: .long, help: "Prompt text; wrapped by the chat template as one user turn unless --raw.")
    var prompt: String?

    @Option(name: .long, help: "Comma-separated token ids, used verbatim.")
    var ids: String?

    @Flag(name: .long, help: "Tokenize the prompt as is (with BOS when the model adds one), no chat template.")
    var raw = false

    @Option(name: .long, help: "System message for the chat template.")
    var system: String?

    func validate() throws {
        if (prompt == nil) == (ids == nil) { throw ValidationError("give exactly one of --prompt and --ids") }
    }

    @Option(name: .long, help: "An image for the prompt (repeatable): attached to the user turn, or placed at the image tokens with --raw / --ids.")
    var image: [String] = []

    func promptIDs(_ model: ChatModel) throws -> [Int] {
        if let ids {
            let parsed = ids.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !parsed.isEmpty, parsed.allSatisfy({ $0 != nil }) else { throw ValidationError("--ids must be comma-separated integers") }
            return parsed.map { $0! }
        }
        var text = prompt ?? ""
        if raw { return model.promptEncoding.ids(text, addSpecialTokens: true) }
        if let support = model.images { text = ChatMessage.placingImages(image.count, in: text, placeholder: support.tokenText) }
        var messages: [ChatMessage] = []
        if let system { messages.append(ChatMessage(role: .system, text: system)) }
        messages.append(ChatMessage(role: .user, text: text))
        return model.promptEncoding.ids(messages, addGenerationPrompt: true)
    }

    /// The prompt as the model runs it: `promptIDs` with the images at their placeholders,
    /// each image keyed by its content hash (as the REPL keys them), its features encoded on use.
    func prepare(_ model: ChatModel) throws -> (ids: [Int], prompt: Prompt, features: ImageFeatures) {
        let ids = try promptIDs(model)
        let features = ImageFeatures(model: model)
        var hashes: [String] = [], counts: [Int] = []
        if !image.isEmpty {
            guard let support = model.images else { throw ValidationError("this model takes no images (--image)") }
            for path in image {
                let file = try ImageFile(path: path)
                let input = try support.input(hash: file.hash, image: file.image)
                features.attach([input])
                hashes.append(file.hash)
                counts.append(try support.featureCount(of: input))
            }
        }
        return (ids, try Prompt(ids: ids, images: hashes, support: model.images, featureCounts: counts.isEmpty ? nil : counts), features)
    }
}

/// Prints one JSON object on stdout.
func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

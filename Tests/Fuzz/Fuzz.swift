import Foundation
import VLMApp
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTokenizers
import VLMTraining

// Fuzz targets over every reader of untrusted input. Each target takes one input's bytes, puts
// them where the reader expects them (a file beside good fixture files, or a string) and runs
// the reader: an error is the expected outcome, a trap, a signal or a hang is a finding.
//
// Built with `-sanitize=fuzzer -DFUZZING` (`make fuzz`), libFuzzer drives the target named by
// `$VLMSH_FUZZ_TARGET`. Built plainly (every `swift build`), the same code replays files:
// `vlmsh-fuzz TARGET FILE…`, which the tests run over Tests/Fuzz/corpus.

/// The fixtures the targets read beside the fuzzed bytes; `$VLMSH_FUZZ_FIXTURES` or this checkout's.
let fixtures = ProcessInfo.processInfo.environment["VLMSH_FUZZ_FIXTURES"]
    ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fixtures/data").standardized.path

/// A scratch folder per process, holding a copy of a tiny LLaVA checkpoint whose files the
/// targets replace one at a time.
let scratch: String = {
    let dir = NSTemporaryDirectory() + "vlmsh-fuzz-\(getpid())"
    try? FileManager.default.removeItem(atPath: dir)
    try! FileManager.default.copyItem(atPath: fixtures + "/llava/clip-llama", toPath: dir)
    return dir
}()

let fixtureTokenizer = try! Tokenizer.load(folder: fixtures + "/llava/clip-llama")
let template = try! ChatTemplate.load(name: "chatml", directory: nil)
let processor = try! ImageProcessor.load(folder: fixtures + "/llava/clip-llama")

/// Writes `bytes` as `name` in the scratch folder, runs `body` on its path, puts the fixture back.
func withFile(_ name: String, _ bytes: Data, restoring fixture: String? = nil, _ body: (String) throws -> Void) {
    let path = scratch + "/" + name
    // Atomically: a model mapped by the previous input keeps its own file, as a user's would.
    retrying { try bytes.write(to: URL(fileURLWithPath: path), options: .atomic) }
    defer {
        if let fixture {
            retrying {
                try? FileManager.default.removeItem(atPath: path)
                try FileManager.default.copyItem(atPath: fixture, toPath: path)
            }
        }
    }
    _ = try? body(path)
}

/// The harness's own file work, retried: Foundation gives up on EINTR, and libFuzzer's timeout
/// timer (SIGALRM) interrupts a copy now and then.
func retrying(_ body: () throws -> Void) {
    for attempt in 1... {
        do { return try body() } catch { if attempt == 20 { fatalError("fuzz harness: \(error)") } }
    }
}

enum Target: String, CaseIterable {
    case gguf, safetensors, torch, config, tokenizer, preprocessor, image, data, script

    func run(_ bytes: Data) {
        let llava = fixtures + "/llava/clip-llama/"
        switch self {
        case .gguf:
            withFile("model.gguf", bytes) { _ = try TextModel(path: $0) }
        case .safetensors:
            withFile("model.safetensors", bytes, restoring: llava + "model.safetensors") { _ in _ = try VisionLanguageModel(path: scratch) }
        case .torch:
            withFile("weights.bin", bytes) { path in
                let file = try TorchCheckpointFile(path: path)
                for name in file.weightNames { _ = try file.matrix(name); _ = try file.floats(name) }
            }
        case .config:
            withFile("config.json", bytes, restoring: llava + "config.json") { _ in _ = try VisionLanguageModel(path: scratch) }
        case .tokenizer:
            withFile("tokenizer.json", bytes, restoring: llava + "tokenizer.json") { _ in
                let fuzzed = try Tokenizer.load(folder: scratch)
                _ = fuzzed.decode(fuzzed.encode("a cat <image> on a mat", addSpecialTokens: true))
            }
        case .preprocessor:
            withFile("preprocessor_config.json", bytes, restoring: llava + "preprocessor_config.json") { _ in
                let fuzzed = try ImageProcessor.load(folder: scratch)
                _ = try fuzzed.preprocess(RGBImage(width: 7, height: 5, pixels: [UInt8](repeating: 128, count: 7 * 5 * 3)))
            }
        case .image:
            _ = try? bytes.withUnsafeBytes { raw in
                // Up to 1M pixels: the decoders run the same code at any size, and a mutated header
                // declaring 64M pixels would spend a second per run filling them (the limit itself
                // is tested in ErrorTests).
                let image = try ImageLoader.decode(raw, path: "fuzz-image", maxPixels: 1 << 20)
                // Likewise a strip that resizing stretches (1×54 842 to the fixture's short side)
                // is correct but takes seconds under AddressSanitizer; the sizing rule itself is
                // tested in PreprocessingSizeTests.
                guard processor.preprocessingBytes(width: image.width, height: image.height, padToSquare: false).bytes < 32e6 else { return }
                _ = try processor.preprocess(image)
            }
        case .data:
            withFile("data.json", bytes) { path in
                _ = try TrainingDataset.load(path: path, tokenizer: fixtureTokenizer, template: template, image: (32000, 16),
                                             imageFolder: scratch, skipBadRows: true)
            }
        case .script:
            let text = String(decoding: bytes, as: UTF8.self)
            guard let entries = try? InputAssembler.entries(of: text) else { return }
            for entry in entries where entry.isCommand {
                guard let words = try? ShellWords.split(entry.text), let name = words.first else { continue }
                _ = Engine.builtInCommands.first { $0.name == name }
            }
        }
    }
}

#if FUZZING
// libFuzzer's own driver, started from this executable's main (SwiftPM names every executable's
// entry point itself, so libFuzzer's `main` cannot be the one that runs).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                     _ test: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

nonisolated(unsafe) var fuzzedTarget: Target!
#endif

@main
enum Main {
    static func main() {
        #if FUZZING
        guard let name = ProcessInfo.processInfo.environment["VLMSH_FUZZ_TARGET"], let target = Target(rawValue: name) else {
            print("set VLMSH_FUZZ_TARGET to one of " + Target.allCases.map(\.rawValue).joined(separator: ", "))
            exit(2)
        }
        fuzzedTarget = target
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(runFuzzerDriver(&argc, &argv) { data, size in
            fuzzedTarget.run(data.map { Data(bytes: $0, count: size) } ?? Data())
            return 0
        })
        #else
        // Replays files: `vlmsh-fuzz TARGET FILE…`.
        let args = CommandLine.arguments.dropFirst()
        guard let name = args.first, let target = Target(rawValue: name) else {
            print("usage: vlmsh-fuzz TARGET FILE…  (targets: " + Target.allCases.map(\.rawValue).joined(separator: ", ") + ")")
            exit(2)
        }
        for file in args.dropFirst() {
            guard let bytes = FileManager.default.contents(atPath: file) else { print("cannot read \(file)"); exit(2) }
            target.run(bytes)
        }
        try? FileManager.default.removeItem(atPath: scratch)
        #endif
    }
}

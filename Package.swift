// swift-tools-version:6.0
import PackageDescription

// Hot loops are compiled for the build machine's vector units (vlmsh is always built where it runs).
let fast: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "native"])]

let package = Package(
    name: "vlmsh",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "vlmsh", targets: ["vlmsh"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
    ],
    targets: [
        // System libraries (installed by `make deps`).
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS"),
        .systemLibrary(name: "CReadline", path: "Sources/CReadline"),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG"),
        // libjpeg behind setjmp/longjmp error handling, which Swift cannot do itself.
        .target(name: "CJPEGShim", linkerSettings: [.linkedLibrary("jpeg")]),

        // Where vlmsh keeps its models and store ($VLMSH_HOME): read by every other module.
        .target(name: "VLMHome"),

        // Integer dot products of quantized weights with 8-bit activations (decode and prefill),
        // decode attention and the thread pool, in C for the vector intrinsics; the instruction
        // set is picked at compile time for this machine. No SSE4a: clang picks its `insertq`
        // for some shuffles, which is microcoded and slow on the AMD parts that have it.
        .target(name: "CVLMKernels", cSettings: [.unsafeFlags(["-march=native", "-mno-sse4a", "-O3"])]),
        // Tensor core: buffers, kernels, quantized formats, threading, SeededRandom.
        .target(name: "VLMTensor", dependencies: ["CBLAS", "CVLMKernels"], swiftSettings: fast),
        // Ops with their forward and backward side by side, the tape that records them only when a
        // gradient is wanted, and the layers built on them (Linear over a QuantizedMatrix, LoRA, RoPE).
        .target(name: "VLMAutodiff", dependencies: ["VLMTensor", "CBLAS", "CVLMKernels"], swiftSettings: fast),
        // File formats: GGUF, safetensors.
        .target(name: "VLMFormats", dependencies: ["VLMHome", "VLMTensor"], swiftSettings: fast),
        // Tokenizers and chat templates.
        .target(name: "VLMTokenizers", dependencies: ["VLMFormats"], swiftSettings: fast),
        // Images: JPEG/PNG decoding and the CLIP/SigLIP/LLaVA preprocessing.
        .target(name: "VLMImage", dependencies: ["VLMTensor", "VLMFormats", "CJPEGShim", "CPNG"], swiftSettings: fast),
        // The synthetic shapes dataset of the demo model (`make-demo-data`).
        .target(name: "VLMDemo", dependencies: ["VLMTensor", "VLMFormats", "VLMImage"], swiftSettings: fast),
        // Model architectures, each written once over VLMAutodiff's ops for inference and training,
        // and loading.
        .target(name: "VLMModels", dependencies: ["VLMHome", "VLMTensor", "VLMAutodiff", "VLMFormats", "VLMTokenizers", "VLMImage"], swiftSettings: fast),
        // Sampling and the generation iterator.
        .target(name: "VLMGeneration", dependencies: ["VLMTensor", "VLMModels", "VLMTokenizers", "VLMImage"], swiftSettings: fast),
        // Fine-tuning: reverse-mode autodiff, LoRA and projector training, data, optimizer, evaluation.
        .target(name: "VLMTraining", dependencies: ["VLMTensor", "VLMAutodiff", "VLMFormats", "VLMTokenizers", "VLMImage", "VLMModels", "VLMGeneration"], swiftSettings: fast),
        // SQLite session store.
        .target(name: "VLMStore", dependencies: [
            "VLMHome", .product(name: "GRDB", package: "GRDB.swift"), .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Writer processes the store's multi-process tests launch and kill.
        .executableTarget(name: "vlmsh-store-child", dependencies: ["VLMStore"], path: "Tests/StoreChild"),
        // Fuzz targets over every reader of untrusted input (`make fuzz`); built plainly, it replays files.
        .executableTarget(name: "vlmsh-fuzz", dependencies: ["VLMApp", "VLMTraining", "VLMGeneration", "VLMModels", "VLMTokenizers",
                                                          "VLMImage", "VLMFormats"], path: "Tests/Fuzz",
                          exclude: ["corpus", "make_gguf_seed.py"]),
        // The application: the REPL engine (chat, sessions, command table), replay, fine-tune and
        // eval runs; it reports progress as events and never parses arguments or draws.
        .target(name: "VLMApp", dependencies: [
            "VLMTensor", "VLMFormats", "VLMTokenizers", "VLMImage", "VLMModels", "VLMGeneration", "VLMTraining", "VLMStore",
        ], swiftSettings: fast),
        // Command-line interface: subcommands' arguments, line editing, progress bars, JSON output.
        .target(name: "VLMCLI", dependencies: [
            "VLMApp", "VLMTensor", "VLMFormats", "VLMTokenizers", "VLMImage", "VLMModels", "VLMGeneration", "VLMTraining", "VLMStore", "VLMDemo",
            "CReadline", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: fast),
        .executableTarget(name: "vlmsh", dependencies: ["VLMCLI"]),

        // What the test targets share: the installed default model, skipped or failed when missing.
        .target(name: "VLMTestSupport", dependencies: ["VLMHome"], path: "Tests/TestSupport"),
        .testTarget(name: "VLMTensorTests", dependencies: ["VLMTensor"]),
        .testTarget(name: "VLMFormatsTests", dependencies: ["VLMTestSupport", "VLMFormats", "VLMTensor", "VLMHome"]),
        .testTarget(name: "VLMTokenizersTests", dependencies: ["VLMTokenizers", "VLMFormats"]),
        .testTarget(name: "VLMImageTests", dependencies: ["VLMImage", "VLMDemo", "VLMTensor", "VLMFormats"]),
        .testTarget(name: "VLMStoreTests", dependencies: ["VLMStore", "VLMHome", "vlmsh-store-child"]),
        .testTarget(name: "VLMModelsTests", dependencies: ["VLMTestSupport", "VLMHome", "VLMModels", "VLMAutodiff", "VLMGeneration", "VLMFormats", "VLMTensor", "VLMTokenizers", "VLMImage"]),
        .testTarget(name: "VLMGenerationTests", dependencies: ["VLMGeneration", "VLMTokenizers"]),
        .testTarget(name: "VLMTrainingTests", dependencies: ["VLMTestSupport", "VLMHome", "VLMTraining", "VLMAutodiff", "VLMModels", "VLMGeneration", "VLMFormats", "VLMTensor", "VLMTokenizers", "VLMImage"]),
        .testTarget(name: "VLMCLITests", dependencies: ["VLMTestSupport", "vlmsh-fuzz", "VLMCLI", "VLMApp", "VLMStore", "VLMModels", "VLMGeneration", "VLMTraining", "VLMHome"]),
    ]
)

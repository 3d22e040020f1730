import Foundation
import XCTest

/// PyTorch `.bin` checkpoints at the command line: a pickle that would run a command is refused
/// with one line naming the global and runs nothing; a damaged or lying archive is one error line.
extension HostileInputTests {
    static let torchBin = fixtures + "/torch_bin"
    /// What the hostile pickles of the fixtures would create if anything in them ran.
    static let pickleMarker = "/tmp/vlmsh-torch-pickle-ran"

    /// A copy of `torch_bin/clip-llama-bin` (config, tokenizer, sharded .bin with its index).
    func binModelFolder(_ prefix: String) throws -> String {
        let model = try scratchDirectory(prefix) + "/model"
        try FileManager.default.copyItem(atPath: Self.torchBin + "/clip-llama-bin", toPath: model)
        return model
    }

    /// The copy with its weights replaced by one `pytorch_model.bin`.
    func singleBinModel(_ weights: String, prefix: String) throws -> String {
        let model = try binModelFolder(prefix)
        for f in try FileManager.default.contentsOfDirectory(atPath: model) where f.hasPrefix("pytorch_model") {
            try FileManager.default.removeItem(atPath: model + "/" + f)
        }
        try FileManager.default.copyItem(atPath: weights, toPath: model + "/pytorch_model.bin")
        return model
    }

    func testPytorchModelBinFolderRunsLikeItsSafetensorsCopy() throws {
        let bin = try run(["logits", "--model", Self.torchBin + "/clip-llama-bin", "--prompt", "hi", "--top-k", "3"])
        XCTAssertEqual(bin.status, 0, bin.stderr)
    }

    func testHostilePicklesAreRefusedAndRunNothing() throws {
        for (file, global) in [("evil-system.bin", "posix.system"), ("evil-eval.bin", "builtins.eval"), ("evil-p4.bin", "posix.system")] {
            try? FileManager.default.removeItem(atPath: Self.pickleMarker)
            let model = try singleBinModel(Self.torchBin + "/" + file, prefix: "vlmsh-torch-evil")
            let r = try run(["logits", "--model", model, "--prompt", "hi"])
            XCTAssertFalse(r.signaled, "\(file): signal; \(r.stderr)")
            XCTAssertEqual(r.status, 1, "\(file): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(file): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains("refusing global '\(global)'"), "\(file): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: Self.pickleMarker), "\(file): the pickle ran a command")
        }
    }

    func testEveryDamagedTorchCheckpointIsOneErrorLine() throws {
        let args = { (model: String) in ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"] }
        let model = try binModelFolder("vlmsh-matrix-torch")
        let shardName = try XCTUnwrap(try FileManager.default.contentsOfDirectory(atPath: model).filter { $0.hasSuffix(".bin") }.sorted().first)
        let shard = model + "/" + shardName
        let good = try Data(contentsOf: URL(fileURLWithPath: shard))
        func put(_ bytes: Data) throws { try bytes.write(to: URL(fileURLWithPath: shard)) }
        for cut in cuts(good.count) {
            try put(good.prefix(cut))
            try assertOneLineError(args(model), "shard cut at \(cut)")
        }
        // Lying end record (no archive comment: it is the last 22 bytes): entry count, directory size and offset.
        let end = good.count - 22
        XCTAssertEqual(good[end..<(end + 4)], Data([0x50, 0x4B, 0x05, 0x06]))
        for (offset, width, label) in [(10, 2, "entry count"), (12, 4, "directory size"), (16, 4, "directory offset")] {
            for value: UInt32 in [0, 1, UInt32(good.count), 0xFFFF_FFFF] {
                var bytes = good
                withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange((end + offset)..<(end + offset + width), with: $0.prefix(width)) }
                try put(bytes)
                if value == 0xFFFF_FFFF {
                    // Saturated: the field is read from the zip64 end record torch always writes, which is right.
                    let r = try run(args(model))
                    XCTAssertEqual(r.status, 0, "\(label) saturated: \(r.stderr)")
                } else {
                    try assertOneLineError(args(model), "\(label) \(value)")
                }
            }
        }
        // Lying zip64 end record (56 bytes before the 20-byte locator), read once the end record points to it.
        let zip64 = end - 20 - 56
        XCTAssertEqual(good[zip64..<(zip64 + 4)], Data([0x50, 0x4B, 0x06, 0x06]))
        for (offset, label) in [(32, "zip64 entry count"), (40, "zip64 directory size"), (48, "zip64 directory offset")] {
            for value: UInt64 in [0, 1, UInt64(good.count), 1 << 40, UInt64.max] {
                var bytes = good
                bytes.replaceSubrange((end + 10)..<(end + 12), with: [0xFF, 0xFF])
                withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange((zip64 + offset)..<(zip64 + offset + 8), with: $0) }
                try put(bytes)
                try assertOneLineError(args(model), "\(label) \(value)")
            }
        }
        try put(good)
        // Archives whose pickle lies, a legacy file, a compressed one, a safetensors file named .bin.
        let lies = try FileManager.default.contentsOfDirectory(atPath: Self.torchBin).filter { $0.hasPrefix("lie-") }.sorted()
        XCTAssertGreaterThanOrEqual(lies.count, 6)
        for file in lies + ["legacy.bin", "compressed.bin", "../llava/clip-llama/model.safetensors"] {
            let single = try singleBinModel(Self.torchBin + "/" + file, prefix: "vlmsh-matrix-torch-lie")
            try assertOneLineError(args(single), file)
        }
        for (label, special) in try specialFiles(in: try scratchDirectory("vlmsh-matrix-torch-special")) {
            let single = try binModelFolder("vlmsh-matrix-torch-special")
            for f in try FileManager.default.contentsOfDirectory(atPath: single) where f.hasPrefix("pytorch_model") {
                try FileManager.default.removeItem(atPath: single + "/" + f)
            }
            if label == "FIFO" { XCTAssertEqual(mkfifo(single + "/pytorch_model.bin", 0o644), 0) }
            else if label == "folder" { try FileManager.default.createDirectory(atPath: single + "/pytorch_model.bin", withIntermediateDirectories: false) }
            else { try FileManager.default.copyItem(atPath: special, toPath: single + "/pytorch_model.bin") }
            try assertOneLineError(args(single), "pytorch_model.bin as \(label)")
        }
    }
}

import Foundation
import XCTest

/// Every kind of file vlmsh reads, damaged every way a disk, a download or a hostile user damages
/// it (cut short at many boundaries, lying length fields, wrong JSON types, a FIFO, an empty file,
/// a folder): the binary answers with one error line and exit status 1, never a signal or a hang.
extension HostileInputTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../Fixtures/data").standardized.path
    static let tinyGGUF = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../Fuzz/corpus/gguf/tiny-llama.gguf").standardized.path

    /// `run` must end in exit 1 with one stderr line.
    func assertOneLineError(_ arguments: [String], _ label: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(arguments)
        XCTAssertFalse(r.signaled, "\(label): killed by signal \(r.status); stderr: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.status, 1, "\(label): exit status; stderr: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(label): one error line, got: \(r.stderr)", file: file, line: line)
    }

    /// Cut points: the first 40 bytes one by one (magic, version, counts), then 40 more spread over the file.
    func cuts(_ count: Int) -> [Int] {
        Array(Set(Array(0..<min(40, count)) + (1...40).map { count * $0 / 41 })).sorted().filter { $0 < count }
    }

    /// The special files every reader must refuse at once.
    func specialFiles(in dir: String) throws -> [(String, String)] {
        let fifo = dir + "/fifo", empty = dir + "/empty", folder = dir + "/folder"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        FileManager.default.createFile(atPath: empty, contents: Data())
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        return [("FIFO", fifo), ("empty file", empty), ("folder", folder)]
    }

    func testEveryDamagedGGUFIsOneErrorLine() throws {
        let good = try Data(contentsOf: URL(fileURLWithPath: Self.tinyGGUF))
        let dir = try scratchDirectory("vlmsh-matrix-gguf")
        let path = dir + "/model.gguf"
        for cut in cuts(good.count) {
            try good.prefix(cut).write(to: URL(fileURLWithPath: path))
            try assertOneLineError(["generate", "--model", path, "--prompt", "hi", "--max-tokens", "1"], "cut at \(cut)")
        }
        // Lying counts: tensors and metadata entries (offsets 8 and 16), and the first key's length.
        for (offset, label) in [(8, "tensor count"), (16, "metadata count"), (24, "first key length")] {
            for value: UInt64 in [UInt64(good.count), 1 << 40, UInt64.max] {
                var bytes = good
                withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<(offset + 8), with: $0) }
                try bytes.write(to: URL(fileURLWithPath: path))
                try assertOneLineError(["generate", "--model", path, "--prompt", "hi", "--max-tokens", "1"], "\(label) \(value)")
            }
        }
        for (label, special) in try specialFiles(in: dir) {
            try assertOneLineError(["generate", "--model", special, "--prompt", "hi", "--max-tokens", "1"], label)
        }
    }

    func testEveryDamagedLlavaFolderIsOneErrorLine() throws {
        let source = Self.fixtures + "/llava/clip-llama"
        let dir = try scratchDirectory("vlmsh-matrix-llava")
        let model = dir + "/model"
        func fresh() throws {
            try? FileManager.default.removeItem(atPath: model)
            try FileManager.default.copyItem(atPath: source, toPath: model)
        }
        let args = ["generate", "--model", model, "--prompt", "hi", "--max-tokens", "1"]
        let weights = try Data(contentsOf: URL(fileURLWithPath: source + "/model.safetensors"))
        for cut in cuts(weights.count) {
            try fresh()
            try weights.prefix(cut).write(to: URL(fileURLWithPath: model + "/model.safetensors"))
            try assertOneLineError(args, "safetensors cut at \(cut)")
        }
        for value: UInt64 in [UInt64(weights.count), 1 << 40, UInt64.max] {
            try fresh()
            var bytes = weights
            withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(0..<8, with: $0) }
            try bytes.write(to: URL(fileURLWithPath: model + "/model.safetensors"))
            try assertOneLineError(args, "safetensors header length \(value)")
        }
        for name in ["config.json", "tokenizer.json", "preprocessor_config.json"] {
            let text = try Data(contentsOf: URL(fileURLWithPath: source + "/" + name))
            for cut in [0, 1, text.count / 3, text.count / 2, text.count - 2] {
                try fresh()
                try text.prefix(cut).write(to: URL(fileURLWithPath: model + "/" + name))
                try assertOneLineError(args, "\(name) cut at \(cut)")
            }
            for (label, special) in try specialFiles(in: try scratchDirectory("vlmsh-matrix-special")) {
                try fresh()
                try FileManager.default.removeItem(atPath: model + "/" + name)
                if label == "folder" {
                    try FileManager.default.createDirectory(atPath: model + "/" + name, withIntermediateDirectories: false)
                } else if label == "FIFO" {
                    XCTAssertEqual(mkfifo(model + "/" + name, 0o644), 0)
                } else {
                    try FileManager.default.copyItem(atPath: special, toPath: model + "/" + name)
                }
                try assertOneLineError(args, "\(name) as \(label)")
            }
        }
        // Wrong JSON types where numbers and objects belong.
        for (key, value) in [("num_hidden_layers", "\"two\""), ("vision_config", "[]"), ("text_config", "7"), ("image_token_index", "\"x\"")] {
            try fresh()
            var config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: model + "/config.json"))) as? [String: Any])
            if key == "num_hidden_layers", var text = config["text_config"] as? [String: Any] {
                text[key] = "two"; config["text_config"] = text
            } else {
                config[key] = try JSONSerialization.jsonObject(with: Data(value.utf8), options: .fragmentsAllowed)
            }
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: model + "/config.json"))
            try assertOneLineError(args, "config.json \(key) = \(value)")
        }
    }

    func testEveryDamagedImageIsOneErrorLineOrReadable() throws {
        let model = Self.fixtures + "/llava/clip-llama"
        let dir = try scratchDirectory("vlmsh-matrix-image")
        for name in ["tiny.png", "palette.png", "baseline.jpg"] {
            let good = try Data(contentsOf: URL(fileURLWithPath: Self.fixtures + "/images/files/" + name))
            let path = dir + "/" + name
            for cut in cuts(good.count) {
                try good.prefix(cut).write(to: URL(fileURLWithPath: path))
                let r = try run(["generate", "--model", model, "--image", path, "--prompt", "hi", "--max-tokens", "1"])
                XCTAssertFalse(r.signaled, "\(name) cut at \(cut): signal \(r.status)")
                // A cut inside trailing chunks can leave a whole picture: reading it is right too.
                if r.status != 0 {
                    XCTAssertEqual(r.status, 1, "\(name) cut at \(cut): \(r.stderr)")
                    XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(name) cut at \(cut): \(r.stderr)")
                }
            }
        }
        for (label, special) in try specialFiles(in: dir) {
            try assertOneLineError(["generate", "--model", model, "--image", special, "--prompt", "hi", "--max-tokens", "1"], "image \(label)")
        }
    }
}

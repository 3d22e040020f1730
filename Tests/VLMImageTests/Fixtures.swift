import Foundation
import VLMFormats

/// Fixtures from Tests/Fixtures/gen_images.py.
enum ImageFixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/images")

    struct Image: Decodable { let file: String; let width: Int; let height: Int; let orientation: Int }
    struct Config: Decodable { let folder: String; let pad: Bool; let images: [String]; let dtype: String }
    struct Index: Decodable { let images: [String: Image]; let configs: [String: Config] }

    static let index: Index = {
        let data = try! Data(contentsOf: root.appendingPathComponent("index.json"))
        return try! JSONDecoder().decode(Index.self, from: data)
    }()

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }
    static func file(_ name: String) -> String { path(index.images[name]!.file) }

    static func decoded(_ name: String) -> [UInt8]? {
        try? [UInt8](Data(contentsOf: root.appendingPathComponent("decoded/\(name).rgb")))
    }

    static func bytes(_ name: String) -> [UInt8] { try! [UInt8](Data(contentsOf: URL(fileURLWithPath: file(name)))) }

    /// A scratch file holding `bytes`, removed when the test process ends.
    static func scratch(_ bytes: [UInt8], name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-image-tests-\(getpid())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent(name)
        try! Data(bytes).write(to: url)
        return url.path
    }
}

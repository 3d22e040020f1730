import Foundation
import XCTest
@testable import VLMTraining
import VLMGeneration
import VLMImage
import VLMTensor
import VLMTokenizers

/// Training rows with several images (LLaVA's multi-image data: `"image": [a, b]` and one
/// `<image>` per picture in the human turns): each image is spliced at its placeholder by the
/// rule the chat uses for a multi-image conversation (`Prompt.imagePlacements`).
final class MultiImageDataTests: XCTestCase {
    static let fixtures = DataTests.fixtures
    static let images = DataTests.images

    func clipLlama() throws -> (Tokenizer, ChatTemplate) {
        let tokenizer = try Tokenizer.load(folder: DataTests.clipLlama)
        return (tokenizer, try ChatTemplate.load(name: "llava-v1", directory: DataTests.prompts))
    }

    /// A folder with a.png and b.png (different pictures) and `rows` as d.jsonl.
    func data(_ rows: [[String: Any]]) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-multi-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(atPath: Self.images + "/square.png", toPath: dir.appendingPathComponent("a.png").path)
        try FileManager.default.copyItem(atPath: Self.images + "/wide.png", toPath: dir.appendingPathComponent("b.png").path)
        let text = try rows.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) }.joined(separator: "\n")
        try text.write(to: dir.appendingPathComponent("d.jsonl"), atomically: true, encoding: .utf8)
        return dir.appendingPathComponent("d.jsonl").path
    }

    func turns(_ pairs: [(String, String)]) -> [[String: String]] { pairs.map { ["from": $0.0, "value": $0.1] } }

    /// The chat's expansion of `messages` with `images`: the rendered ids through `Prompt`, image
    /// slots back as the image token, and which image each run holds.
    func chatExpansion(_ messages: [ChatMessage], images: [String], tokenizer: Tokenizer, template: ChatTemplate) throws -> (ids: [Int], order: [String]) {
        let encoding = PromptEncoding(tokenizer: tokenizer, template: template, imageToken: .init(text: "<image>", id: 700))
        let support = ImageSupport(tokenID: 700, tokenText: "<image>", featureCount: 16,
                                   preprocess: { _ in Tensor(shape: [1], zeroed: true) }, encode: { $0 })
        let prompt = try Prompt(ids: encoding.ids(messages, addGenerationPrompt: false), images: images, support: support)
        var ids: [Int] = [], order: [String] = []
        for slot in prompt.slots {
            switch slot {
            case .token(let id): ids.append(id)
            case .image(let hash, let row):
                ids.append(700)
                if row == 0 { order.append(hash) }
            }
        }
        return (ids, order)
    }

    func testTwoImagesAreSplicedAtTheirPlaceholdersAsTheChatDoes() throws {
        let (tokenizer, template) = try clipLlama()
        let path = try data([
            ["id": "two-in-one-turn", "image": ["a.png", "b.png"],
             "conversations": turns([("human", "<image>\nFirst picture. <image>\nSecond picture. Same?"), ("gpt", "No.")])],
            ["id": "one-per-turn", "image": ["b.png", "a.png"],
             "conversations": turns([("human", "<image>\nWhat is it?"), ("gpt", "Stripes."), ("human", "<image>\nAnd this?"), ("gpt", "A square.")])],
            ["id": "no-placeholders", "image": ["a.png", "b.png"],
             "conversations": turns([("human", "Compare them."), ("gpt", "They differ.")])],
        ])
        let dir = (path as NSString).deletingLastPathComponent
        let a = dir + "/a.png", b = dir + "/b.png"
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16))
        XCTAssertEqual(data.problems, [])
        XCTAssertEqual(data.count, 3)

        let cases: [(messages: [ChatMessage], images: [String])] = [
            ([.init(role: .user, text: "<image>\nFirst picture. <image>\nSecond picture. Same?"), .init(role: .assistant, text: "No.")], [a, b]),
            ([.init(role: .user, text: "<image>\nWhat is it?"), .init(role: .assistant, text: "Stripes."),
              .init(role: .user, text: "<image>\nAnd this?"), .init(role: .assistant, text: "A square.")], [b, a]),
            // Without placeholders both images open the first human turn, as the chat attaches them.
            ([.init(role: .user, text: "<image>\n<image>\nCompare them."), .init(role: .assistant, text: "They differ.")], [a, b]),
        ]
        for (k, expected) in cases.enumerated() {
            let example = data[k]
            XCTAssertEqual(example.imagePaths, expected.images, "row \(k)")
            XCTAssertEqual(example.imageRanges.count, 2)
            let chat = try chatExpansion(expected.messages, images: expected.images, tokenizer: tokenizer, template: template)
            XCTAssertEqual(example.inputIDs, chat.ids, "row \(k): the chat's splice")
            XCTAssertEqual(chat.order, expected.images)
            for range in example.imageRanges {
                XCTAssertEqual(range.count, 16)
                XCTAssertTrue(example.inputIDs[range].allSatisfy { $0 == 700 })
                XCTAssertTrue(example.labels[range].allSatisfy { $0 == ignoreIndex })
            }
            XCTAssertLessThan(example.imageRanges[0].upperBound, example.imageRanges[1].lowerBound)
            XCTAssertEqual(example.inputIDs.filter { $0 == 700 }.count, 32)
        }
        // The second row's second image is in its second human turn, after the first reply.
        let second = data[1]
        let beforeSecondImage = second.imageRanges[1].lowerBound
        let reply = tokenizer.decode(zip(second.inputIDs[..<beforeSecondImage], second.labels).filter { $0.1 != ignoreIndex }.map(\.0))
        XCTAssertTrue(reply.contains("Stripes."), reply)

        // A batch scatters each row's images in order: row r's positions are its ranges, offset.
        let batch = data.batch([0, 2], padID: 0)
        XCTAssertEqual(batch.imagePaths, [[a, b], [a, b]])
        let length = batch.layout.length
        XCTAssertEqual(batch.imagePositions[1], data[2].imageRanges.flatMap { $0.map { length + $0 } })
        XCTAssertEqual(batch.imageRows.count, 64)
        XCTAssertEqual(data.modalityLengths, [data[0].length, data[1].length, data[2].length])
    }

    func testPlaceholdersAndImagesThatDoNotPairUpAreBadRows() throws {
        let (tokenizer, template) = try clipLlama()
        let path = try data([
            ["image": ["a.png", "b.png"], "conversations": turns([("human", "<image>\nOnly one placeholder."), ("gpt", "Hm.")])],
            ["image": ["a.png", "b.png"], "conversations": turns([("human", "<image> <image> <image> Three?"), ("gpt", "Hm.")])],
            ["image": "a.png", "conversations": turns([("human", "<image> and <image>"), ("gpt", "Hm.")])],
            ["image": [] as [String], "conversations": turns([("human", "Hi"), ("gpt", "Hm.")])],
            ["image": ["a.png", 3], "conversations": turns([("human", "Hi"), ("gpt", "Hm.")])],
            ["image": ["a.png", "missing.png"], "conversations": turns([("human", "Hi"), ("gpt", "Hm.")])],
            ["image": ["a.png", "b.png"], "conversations": turns([("human", "Hi"), ("gpt", "<image> Hm. <image>")])],
            ["image": ["a.png", "b.png"], "input_ids": [1, 700, 5, 6], "labels": [-100, -100, 5, 6]],
            ["image": ["a.png", "b.png"], "input_ids": [1, 700, 5, 700, 6], "labels": [-100, -100, 5, -100, 6]],
        ])
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16), skipBadRows: true)
        let dir = (path as NSString).deletingLastPathComponent
        let expected = [
            "\(path):1: 1 <image> placeholder for 2 images",
            "\(path):2: 3 <image> placeholders for 2 images",
            "\(path):3: 2 <image> placeholders for one image",
            "\(path):4: malformed row: \"image\" is an empty list",
            "\(path):5: malformed row: \"image\"[1] must be a file name, found a number",
            "\(path):6: image not found: \(dir)/missing.png",
            "\(path):7: the <image> placeholder is in an assistant turn",
            "\(path):8: 1 image placeholder for 2 images",
        ]
        XCTAssertEqual(data.problems.count, expected.count, data.problems.joined(separator: "\n"))
        for (problem, prefix) in zip(data.problems, expected) {
            XCTAssertTrue(problem.hasPrefix(prefix), "\(problem)\n  expected to start with\n\(prefix)")
        }
        // The pre-tokenized row with two image tokens for two images is good.
        XCTAssertEqual(data.count, 1)
        XCTAssertEqual(data[0].imageRanges, [1..<17, 18..<34])
    }
}

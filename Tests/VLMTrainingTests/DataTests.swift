import Foundation
import VLMHome
import VLMTestSupport
import XCTest
@testable import VLMTraining
import VLMGeneration
import VLMTokenizers
import VLMFormats

final class DataTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data")
    static let prompts = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("prompts").path
    static var clipLlama: String { fixtures.appendingPathComponent("llava/clip-llama").path }
    static var originalLlava: String { fixtures.appendingPathComponent("llava/original-llava").path }
    static var images: String { fixtures.appendingPathComponent("llava/images").path }

    // MARK: helpers

    func smolLM2() throws -> (Tokenizer, ChatTemplate) {
        let tokenizer = try Tokenizer.load(folder: Self.fixtures.appendingPathComponent("tokenizers/smollm2").path)
        let template = try ChatTemplate.load(name: "chatml", directory: Self.prompts, jinja: tokenizer.chatTemplateSource)
        return (tokenizer, template)
    }

    func clipLlama() throws -> (Tokenizer, ChatTemplate) {
        let tokenizer = try Tokenizer.load(folder: Self.clipLlama)
        return (tokenizer, try ChatTemplate.load(name: "llava-v1", directory: Self.prompts))
    }

    /// A fresh temporary folder holding `files` (name → contents).
    func folder(_ files: [String: String] = [:]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        for (name, text) in files {
            let url = dir.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try text.write(to: url, atomically: true, encoding: .utf8)
        }
        return dir
    }

    func copyImage(_ name: String, to url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.images + "/" + name, toPath: url.path)
    }

    /// Runs of consecutive target positions, each decoded.
    func targetRuns(_ example: TrainingExample, _ tokenizer: Tokenizer) -> [String] {
        var runs: [[Int]] = []
        var previous = false
        for label in example.labels {
            let target = label != ignoreIndex
            if target { if previous { runs[runs.count - 1].append(label) } else { runs.append([label]) } }
            previous = target
        }
        return runs.map { tokenizer.decode($0) }
    }

    func row(_ turns: [(String, String)], image: String? = nil) -> String {
        var object: [String: Any] = ["conversations": turns.map { ["from": $0.0, "value": $0.1] }]
        if let image { object["image"] = image }
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: label masking

    func testChatMLMasksEverythingButRepliesAndEndOfTurn() throws {
        let (tokenizer, template) = try smolLM2()
        let dir = try folder(["chat.jsonl": row([("human", "What is 2+2?"), ("gpt", "Four."), ("human", "And 3+3?"), ("gpt", "Six.")]) + "\n"])
        let data = try TrainingDataset.load(path: dir.appendingPathComponent("chat.jsonl").path, tokenizer: tokenizer,
                                            template: template, image: nil)
        XCTAssertEqual(data.count, 1)
        let example = data[0]
        let messages = [ChatMessage(role: .user, text: "What is 2+2?"), ChatMessage(role: .assistant, text: "Four."),
                        ChatMessage(role: .user, text: "And 3+3?"), ChatMessage(role: .assistant, text: "Six.")]
        // The same ids inference feeds for this conversation.
        XCTAssertEqual(example.inputIDs, tokenizer.encode(template.render(messages, addGenerationPrompt: false)))
        XCTAssertEqual(example.labels.count, example.inputIDs.count)
        XCTAssertEqual(targetRuns(example, tokenizer), ["Four.<|im_end|>", "Six.<|im_end|>"])
        // Targets start exactly where inference starts generating.
        let prompt = tokenizer.encode(template.render(Array(messages.prefix(1)), addGenerationPrompt: true))
        XCTAssertEqual(Array(example.inputIDs.prefix(prompt.count)), prompt)
        XCTAssertEqual(example.labels.firstIndex { $0 != ignoreIndex }, prompt.count)
        let context = tokenizer.decode(zip(example.inputIDs, example.labels).filter { $0.1 == ignoreIndex }.map(\.0))
        XCTAssertTrue(context.contains("What is 2+2?"), context)
        XCTAssertTrue(context.contains("And 3+3?"), context)
        XCTAssertTrue(context.contains("You are a helpful AI assistant named SmolLM"), context)
        XCTAssertTrue(context.hasSuffix("\n"), "the newline after <|im_end|> is not a target: \(context.debugDescription)")
        XCTAssertFalse(example.hasImage)
        XCTAssertEqual(example.modalityLength, -example.length)
        XCTAssertEqual(example.source, dir.appendingPathComponent("chat.jsonl").path + ":1")
    }

    func testRealSmolLM2TokenizerFromGGUF() throws {
        let path = try installedDefaultModel()
        let tokenizer = try Tokenizer.load(gguf: GGUFFile(path: path).metadata, file: path)
        let template = try ChatTemplate.load(name: "chatml", directory: Self.prompts, jinja: tokenizer.chatTemplateSource)
        let text = row([("human", "Name a colour."), ("gpt", "Blue, like the sky."), ("human", "Another?"), ("gpt", "Green 🌿.")])
        let dir = try folder(["d.json": "[\n" + text + "\n]"])
        let example = try TrainingDataset.load(path: dir.appendingPathComponent("d.json").path, tokenizer: tokenizer,
                                               template: template, image: nil)[0]
        XCTAssertEqual(example.source, dir.appendingPathComponent("d.json").path + ":2")
        XCTAssertEqual(targetRuns(example, tokenizer), ["Blue, like the sky.<|im_end|>", "Green 🌿.<|im_end|>"])
        let (folderTokenizer, folderTemplate) = try smolLM2()
        let same = try TrainingDataset.load(path: dir.appendingPathComponent("d.json").path, tokenizer: folderTokenizer,
                                            template: folderTemplate, image: nil)[0]
        XCTAssertEqual(example, same, "the GGUF and tokenizer.json SmolLM2 tokenizers agree")
    }

    func testSystemTurnAndUserAssistantSpeakers() throws {
        let (tokenizer, template) = try smolLM2()
        let dir = try folder(["chat.jsonl": row([("system", "Be terse."), ("user", "Hi"), ("assistant", "Hello.")])])
        let example = try TrainingDataset.load(path: dir.appendingPathComponent("chat.jsonl").path, tokenizer: tokenizer,
                                               template: template, image: nil)[0]
        let text = tokenizer.decode(example.inputIDs)
        XCTAssertTrue(text.hasPrefix("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi"), text)
        XCTAssertFalse(text.contains("SmolLM"))
        XCTAssertEqual(targetRuns(example, tokenizer), ["Hello.<|im_end|>"])
    }

    func testLlavaV1ImageExpansionAndMasking() throws {
        let (tokenizer, template) = try clipLlama()
        let data = try TrainingDataset.load(path: Self.fixtures.appendingPathComponent("train-data/llava.json").path,
                                            tokenizer: tokenizer, template: template, image: (700, 16))
        XCTAssertEqual(data.count, 3)
        XCTAssertEqual(data.problems, [])
        let first = data[0]
        XCTAssertEqual(first.imagePath, Self.images + "/square.png")
        XCTAssertEqual(first.inputIDs.filter { $0 == 700 }.count, 16)
        let range = try XCTUnwrap(first.imageRange)
        XCTAssertEqual(range.count, 16)
        XCTAssertEqual(Array(first.inputIDs[range]), [Int](repeating: 700, count: 16))
        XCTAssertTrue(first.labels[range].allSatisfy { $0 == ignoreIndex })
        // One placeholder expanded in place: the rest equals inference's tokenization.
        let messages = [ChatMessage(role: .user, text: "<image>\nWhat shape is this?"), ChatMessage(role: .assistant, text: "A square."),
                        ChatMessage(role: .user, text: "What color?"), ChatMessage(role: .assistant, text: "Red and blue.")]
        let rendered = tokenizer.encode(template.render(messages, addGenerationPrompt: false))
        XCTAssertEqual(rendered.filter { $0 == 700 }.count, 1)
        let at = rendered.firstIndex(of: 700)!
        XCTAssertEqual(first.inputIDs, Array(rendered[..<at]) + [Int](repeating: 700, count: 16) + Array(rendered[(at + 1)...]))
        XCTAssertEqual(first.inputIDs.first, tokenizer.bosTokenID, "llava-v1's textual <s> is the BOS")
        XCTAssertEqual(targetRuns(first, tokenizer), ["A square.</s>", "Red and blue.</s>"])
        // As in LLaVA, the token carrying the space after "ASSISTANT:" is the reply's first target.
        let firstTarget = try XCTUnwrap(first.labels.firstIndex { $0 != ignoreIndex })
        XCTAssertEqual(tokenizer.tokenString(first.inputIDs[firstTarget])?.hasPrefix("\u{2581}"), true)
        XCTAssertEqual(tokenizer.decode(Array(first.inputIDs[..<firstTarget])).hasSuffix("ASSISTANT:"), true)
        let context = tokenizer.decode(zip(first.inputIDs, first.labels).filter { $0.1 == ignoreIndex && $0.0 != 700 }.map(\.0))
        XCTAssertTrue(context.contains("What shape is this?") && context.contains("What color?") && context.contains("ASSISTANT:"), context)
        XCTAssertFalse(context.contains("square."), context)

        // No placeholder in the row: "<image>\n" opens the first human turn (LLaVA / ChatSession).
        let second = data[1]
        let withPlaceholder = [ChatMessage(role: .user, text: "<image>\nDescribe the picture."), ChatMessage(role: .assistant, text: "A wide striped image.")]
        let expected = tokenizer.encode(template.render(withPlaceholder, addGenerationPrompt: false))
        let p = expected.firstIndex(of: 700)!
        XCTAssertEqual(second.inputIDs, Array(expected[..<p]) + [Int](repeating: 700, count: 16) + Array(expected[(p + 1)...]))
        XCTAssertEqual(second.modalityLength, second.length)

        let third = data[2]
        XCTAssertFalse(third.hasImage)
        XCTAssertNil(third.imageRange)
        XCTAssertFalse(third.inputIDs.contains(700))
        XCTAssertEqual(third.modalityLength, -third.length)
        XCTAssertEqual(data.modalityLengths, [first.length, second.length, -third.length])
    }

    func testPlaceholderStaysWhereTheUserPutIt() throws {
        let (tokenizer, template) = try clipLlama()
        let dir = try folder(["d.jsonl": row([("human", "Look: <image> what is it?"), ("gpt", "A square.")], image: "a.png")])
        try copyImage("square.png", to: dir.appendingPathComponent("a.png"))
        let example = try TrainingDataset.load(path: dir.appendingPathComponent("d.jsonl").path, tokenizer: tokenizer,
                                               template: template, image: (700, 16))[0]
        let range = try XCTUnwrap(example.imageRange)
        let before = tokenizer.decode(Array(example.inputIDs[..<range.lowerBound]))
        XCTAssertTrue(before.hasSuffix("USER: Look: "), before)
        let after = tokenizer.decode(Array(example.inputIDs[range.upperBound...]))
        XCTAssertTrue(after.hasPrefix(" what is it? ASSISTANT:"), after)
    }

    func testOriginalLlavaSplitsAtThePlaceholderLikeInference() throws {
        // The tokenizer has no <image>: chunks are tokenized apart and joined with the -200 sentinel.
        let model = try VisionLanguageModel(path: Self.originalLlava, template: "llava-v1")
        let support = try XCTUnwrap(model.images)
        XCTAssertEqual(support.tokenID, -200)
        let dir = try folder(["d.json": "[" + row([("human", "<image>\nWhat is it?"), ("gpt", "A square.")], image: "square.png") + "]"])
        let data = try TrainingDataset.load(path: dir.appendingPathComponent("d.json").path, tokenizer: model.tokenizer,
                                            template: model.template, image: (support.tokenID, support.featureCount),
                                            imageFolder: Self.images)
        let example = data[0]
        let prompt = model.promptEncoding.ids([ChatMessage(role: .user, text: "<image>\nWhat is it?"),
                                               ChatMessage(role: .assistant, text: "A square.")], addGenerationPrompt: false)
        let at = try XCTUnwrap(prompt.firstIndex(of: -200))
        XCTAssertEqual(example.inputIDs, Array(prompt[..<at]) + [Int](repeating: -200, count: support.featureCount) + Array(prompt[(at + 1)...]))
        XCTAssertEqual(targetRuns(example, model.tokenizer).map { $0.trimmingCharacters(in: .whitespaces) }, ["A square.</s>"])
    }

    func testPlainTemplateKeepsOnlyTheImageOfTheHumanTurn() throws {
        let tokenizer = try Tokenizer.load(folder: Self.clipLlama)
        let template = try ChatTemplate.load(name: "plain", directory: Self.prompts)
        let dir = try folder(["d.jsonl": row([("human", "<image>\nRender a clear and concise summary of the photo."), ("gpt", "a red square")], image: "square.png")])
        let example = try TrainingDataset.load(path: dir.appendingPathComponent("d.jsonl").path, tokenizer: tokenizer,
                                               template: template, image: (700, 16), imageFolder: Self.images)[0]
        // preprocess_plain: <s> <image> caption \n, the caption and "\n" are the targets.
        let expected = tokenizer.encode("<s><image>a red square\n")
        XCTAssertEqual(example.inputIDs, [expected[0]] + [Int](repeating: 700, count: 16) + Array(expected[2...]))
        XCTAssertEqual(example.labels, [Int](repeating: ignoreIndex, count: 17) + Array(expected[2...]))
    }

    // MARK: pre-tokenized rows and paths

    func testPretokenizedRowsExpandTheImageToken() throws {
        let (tokenizer, template) = try clipLlama()
        let dir = try folder([
            "p.jsonl": """
            {"input_ids": [1, 700, 50, 51, 52], "labels": [-100, -100, -100, 51, 52], "image": "img/square.png"}
            {"input_ids": [1, 40, 41, 42], "labels": [-100, -100, 41, 42]}

            """,
        ])
        try copyImage("square.png", to: dir.appendingPathComponent("img/square.png"))
        let data = try TrainingDataset.load(path: dir.appendingPathComponent("p.jsonl").path, tokenizer: tokenizer,
                                            template: template, image: (700, 16))
        XCTAssertEqual(data.count, 2)
        XCTAssertEqual(data[0].inputIDs, [1] + [Int](repeating: 700, count: 16) + [50, 51, 52])
        XCTAssertEqual(data[0].labels, [Int](repeating: ignoreIndex, count: 18) + [51, 52])
        XCTAssertEqual(data[0].imageRange, 1..<17)
        XCTAssertEqual(data[0].imagePath, dir.appendingPathComponent("img/square.png").standardizedFileURL.path)
        XCTAssertEqual(data[0].targetCount, 2)
        XCTAssertEqual(data[1].inputIDs, [1, 40, 41, 42])
        XCTAssertEqual(data[1].labels, [-100, -100, 41, 42])
        XCTAssertEqual(data[1].source, dir.appendingPathComponent("p.jsonl").path + ":2")
    }

    func testImagePathsResolveAgainstTheDataFileOrTheImageFolder() throws {
        let (tokenizer, template) = try clipLlama()
        let text = row([("human", "Hi"), ("gpt", "Hello")], image: "pics/x.png")
        let dir = try folder(["sub/d.jsonl": text])
        try copyImage("tall.png", to: dir.appendingPathComponent("sub/pics/x.png"))
        let relative = try TrainingDataset.load(path: dir.appendingPathComponent("sub/d.jsonl").path, tokenizer: tokenizer,
                                                template: template, image: (700, 16))
        XCTAssertEqual(relative[0].imagePath, dir.appendingPathComponent("sub/pics/x.png").standardizedFileURL.path)

        let other = try folder()
        try copyImage("wide.png", to: other.appendingPathComponent("pics/x.png"))
        let viaFolder = try TrainingDataset.load(path: dir.appendingPathComponent("sub/d.jsonl").path, tokenizer: tokenizer,
                                                 template: template, image: (700, 16), imageFolder: other.path)
        XCTAssertEqual(viaFolder[0].imagePath, other.appendingPathComponent("pics/x.png").standardizedFileURL.path)

        // An absolute image path is used as is.
        let absolute = try self.folder(["a.jsonl": row([("human", "Hi"), ("gpt", "Hello")], image: Self.images + "/gray.png")])
        let data = try TrainingDataset.load(path: absolute.appendingPathComponent("a.jsonl").path, tokenizer: tokenizer,
                                            template: template, image: (700, 16), imageFolder: other.path)
        XCTAssertEqual(data[0].imagePath, Self.images + "/gray.png")
    }

    // MARK: bad data

    func testEveryBadRowKindIsReportedWithFileAndLine() throws {
        let (tokenizer, template) = try clipLlama()
        let good = row([("human", "Hi"), ("gpt", "Hello")])
        let lines = [
            good,                                                                        // 1
            row([("human", "What?"), ("gpt", "This.")], image: "missing.png"),           // 2
            "[1, 2]",                                                                    // 3
            "{\"id\": 7}",                                                               // 4
            "{\"conversations\": [{\"from\": \"human\", \"value\": 3}]}",               // 5
            "{\"conversations\": [{\"from\": \"human\"",                                // 6
            row([("human", "Hi")]),                                                      // 7
            row([("human", "<image> and <image>"), ("gpt", "Two.")], image: "ok.png"),   // 8
            "{\"input_ids\": [1, 2, 3], \"labels\": [-100, 2]}",                         // 9
            "",                                                                          // 10 (blank: skipped)
            row([("human", String(repeating: "word ", count: 40)), ("gpt", "Hello")]),   // 11 (over-long)
            row([("robot", "Hi"), ("gpt", "Hello")]),                                    // 12
            "{\"conversations\": [], \"image\": 5}",                                     // 13
            good,                                                                        // 14
            "{\"input_ids\": [1, true], \"labels\": [-100, 2]}",                      // 15
        ]
        let dir = try folder(["bad.jsonl": lines.joined(separator: "\n") + "\n"])
        try copyImage("square.png", to: dir.appendingPathComponent("ok.png"))
        let path = dir.appendingPathComponent("bad.jsonl").path
        // The good rows just fit.
        let goodOnly = try folder(["good.jsonl": good])
        let maxLength = try TrainingDataset.load(path: goodOnly.appendingPathComponent("good.jsonl").path, tokenizer: tokenizer,
                                                 template: template, image: (700, 16))[0].length
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16),
                                            maxLength: maxLength, skipBadRows: true)
        XCTAssertEqual(data.count, 2)
        XCTAssertEqual(data.examples.map(\.source), ["\(path):1", "\(path):14"])
        let expected = [
            "\(path):2: image not found: \(dir.appendingPathComponent("missing.png").standardizedFileURL.path)",
            "\(path):3: malformed row: expected a JSON object, found an array",
            "\(path):4: malformed row: no \"conversations\" (or \"input_ids\" and \"labels\")",
            "\(path):5: malformed row: conversations[0] must be an object with string \"from\" and \"value\"",
            "\(path):6: invalid JSON line",
            "\(path):7: no assistant turn",
            "\(path):8: 2 <image> placeholders for one image",
            "\(path):9: labels/input_ids length mismatch: 2 labels for 3 input_ids",
            "\(path):11: over-long sample: ",
            "\(path):12: malformed row: conversations[0]: unknown speaker \"robot\" (expected human, gpt, user, assistant or system)",
            "\(path):13: malformed row: \"image\" must be a file name or a list of them, found a number",
            "\(path):15: malformed row: \"input_ids\" must be an array of integers",
        ]
        XCTAssertEqual(data.problems.count, expected.count, data.problems.joined(separator: "\n"))
        for (problem, prefix) in zip(data.problems, expected) {
            XCTAssertTrue(problem.hasPrefix(prefix), "\(problem)\n  expected to start with\n\(prefix)")
        }
        XCTAssertTrue(data.problems[8].contains("no reply token is left within max length \(maxLength)"), data.problems[8])

        // Not skipping: one error naming the first problem and the count.
        XCTAssertThrowsError(try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16), maxLength: maxLength)) { error in
            let error = error as! TrainingDataError
            XCTAssertEqual(error.description, "\(data.problems[0]) (12 bad rows in \(path))")
            XCTAssertEqual(error.problems, data.problems)
        }
    }

    func testImageTokenTextsAreTokenizedPerImageRowWhenAsked() throws {
        let (tokenizer, template) = try clipLlama()
        func withTexts(_ texts: Any?, image: String? = "ok.png") -> String {
            var object = try! JSONSerialization.jsonObject(with: Data(row([("human", "What?"), ("gpt", "This.")], image: image).utf8)) as! [String: Any]
            if let texts { object["image_token_texts"] = texts }
            return String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
        }
        let sixteen = ["small red star", ""] + [String](repeating: "nothing", count: 14)
        let lines = [
            withTexts(sixteen),                                   // 1
            withTexts(["nothing", "nothing"]),                    // 2 (two texts for sixteen rows)
            withTexts([1, 2]),                                    // 3
            withTexts(nil),                                       // 4
            withTexts(sixteen, image: nil),                       // 5
        ]
        let dir = try folder(["texts.jsonl": lines.joined(separator: "\n") + "\n"])
        try copyImage("square.png", to: dir.appendingPathComponent("ok.png"))
        let path = dir.appendingPathComponent("texts.jsonl").path
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16),
                                            skipBadRows: true, readsImageTokenTexts: true)
        XCTAssertEqual(data.count, 1)
        let texts = try XCTUnwrap(data[0].imageTokenTexts)
        XCTAssertEqual(texts.count, 16)
        XCTAssertEqual(texts[0], tokenizer.encode(" small red star"))
        XCTAssertEqual(texts[1], [], "an empty text is no tokens (the zero vector)")
        XCTAssertEqual(texts[2], tokenizer.encode(" nothing"))
        XCTAssertEqual(data.problems, [
            "\(path):2: 2 image_token_texts for 16 image feature rows",
            "\(path):3: malformed row: \"image_token_texts\" must be an array of strings, found an array",
            "\(path):4: no \"image_token_texts\" (the image-token-embeddings objective needs them)",
            "\(path):5: \"image_token_texts\" but the row has no image",
        ])
        // Not asked for: the field is ignored, whatever it holds.
        let plain = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16))
        XCTAssertEqual(plain.count, 5)
        XCTAssertTrue(plain.examples.allSatisfy { $0.imageTokenTexts == nil })
    }

    func testJSONArrayElementsReportTheirLine() throws {
        let (tokenizer, template) = try clipLlama()
        let text = """
        [
          {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
          {
            "id": "no-reply",
            "conversations": [{"from": "human", "value": "Hi"}]
          },
          "text",
          {"image": "gone.png", "conversations": [{"from": "human", "value": "[Hi]"}, {"from": "gpt", "value": "{Hello}"}]}
        ]
        """
        let dir = try folder(["d.json": text])
        let path = dir.appendingPathComponent("d.json").path
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16), skipBadRows: true)
        XCTAssertEqual(data.examples.map(\.source), ["\(path):2"])
        XCTAssertEqual(data.problems, [
            "\(path):3: no assistant turn",
            "\(path):7: malformed row: expected a JSON object, found a string",
            "\(path):8: image not found: \(dir.appendingPathComponent("gone.png").standardizedFileURL.path)",
        ])
        XCTAssertThrowsError(try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16))) { error in
            XCTAssertEqual("\(error)", "\(path):3: no assistant turn (3 bad rows in \(path))")
        }
    }

    func testImageRowsAreBadForATextOnlyModelAndPlaceholdersWithoutImage() throws {
        let (tokenizer, template) = try clipLlama()
        let dir = try folder(["d.jsonl": [
            row([("human", "Hi"), ("gpt", "Hello")], image: "ok.png"),
            row([("human", "<image>\nHi"), ("gpt", "Hello")]),
            row([("human", "Hi"), ("gpt", "Hello")]),
        ].joined(separator: "\n")])
        try copyImage("square.png", to: dir.appendingPathComponent("ok.png"))
        let path = dir.appendingPathComponent("d.jsonl").path
        let textOnly = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, skipBadRows: true)
        XCTAssertEqual(textOnly.problems, ["\(path):1: the row has an image but the model takes no images"])
        XCTAssertEqual(textOnly.count, 2)
        let vision = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16), skipBadRows: true)
        XCTAssertEqual(vision.problems, ["\(path):2: <image> placeholder but the row has no image"])
    }

    func testEmptyAndAllBadDatasetsAreErrors() throws {
        let (tokenizer, template) = try clipLlama()
        let dir = try folder(["empty.json": "[]", "blank.jsonl": "\n\n", "bad.jsonl": "{}\n", "broken.json": "[{]"])
        XCTAssertThrowsError(try TrainingDataset.load(path: dir.appendingPathComponent("empty.json").path, tokenizer: tokenizer,
                                                      template: template, image: nil)) { error in
            XCTAssertEqual("\(error)", dir.appendingPathComponent("empty.json").path + ": no training rows")
        }
        XCTAssertThrowsError(try TrainingDataset.load(path: dir.appendingPathComponent("blank.jsonl").path, tokenizer: tokenizer,
                                                      template: template, image: nil)) { error in
            XCTAssertEqual("\(error)", dir.appendingPathComponent("blank.jsonl").path + ": the file is empty")
        }
        let bad = dir.appendingPathComponent("bad.jsonl").path
        XCTAssertThrowsError(try TrainingDataset.load(path: bad, tokenizer: tokenizer, template: template, image: nil, skipBadRows: true)) { error in
            XCTAssertEqual("\(error)", "\(bad): no usable rows: all 1 are bad; the first: \(bad):1: malformed row: no \"conversations\" (or \"input_ids\" and \"labels\")")
        }
        XCTAssertThrowsError(try TrainingDataset.load(path: dir.appendingPathComponent("broken.json").path, tokenizer: tokenizer,
                                                      template: template, image: nil, skipBadRows: true)) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir.appendingPathComponent("broken.json").path + ": invalid JSON"), "\(error)")
        }
        XCTAssertThrowsError(try TrainingDataset.load(path: dir.appendingPathComponent("nothing.json").path, tokenizer: tokenizer,
                                                      template: template, image: nil)) { error in
            XCTAssertEqual("\(error)", dir.appendingPathComponent("nothing.json").path + ": no such file")
        }
    }

    func testTruncationKeepsTheImageAndSomeTargets() throws {
        let (tokenizer, template) = try smolLM2()
        let long = row([("human", "Count."), ("gpt", "one two three four five six seven eight nine ten")])
        let dir = try folder(["d.jsonl": long])
        let path = dir.appendingPathComponent("d.jsonl").path
        let full = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil)[0]
        let firstTarget = try XCTUnwrap(full.labels.firstIndex { $0 != ignoreIndex })
        let cut = firstTarget + 3
        let truncated = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, maxLength: cut)[0]
        XCTAssertEqual(truncated.inputIDs, Array(full.inputIDs.prefix(cut)))
        XCTAssertEqual(truncated.labels, Array(full.labels.prefix(cut)))
        XCTAssertEqual(truncated.targetCount, 3)
        // Cutting before any reply token leaves nothing to learn.
        XCTAssertThrowsError(try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, maxLength: firstTarget)) { error in
            XCTAssertTrue("\(error)".hasPrefix("\(path):1: over-long sample: \(full.length) positions; no reply token is left within max length \(firstTarget)"), "\(error)")
        }
        // A limit at least the length changes nothing.
        XCTAssertEqual(try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, maxLength: full.length)[0], full)

        // A limit inside the image rows makes the row bad.
        let (llamaTokenizer, llavaTemplate) = try clipLlama()
        let imageDir = try folder(["i.jsonl": row([("human", "What is it?"), ("gpt", "A square.")], image: "square.png")])
        let imagePath = imageDir.appendingPathComponent("i.jsonl").path
        let withImage = try TrainingDataset.load(path: imagePath, tokenizer: llamaTokenizer, template: llavaTemplate,
                                                 image: (700, 16), imageFolder: Self.images)[0]
        let range = try XCTUnwrap(withImage.imageRange)
        XCTAssertThrowsError(try TrainingDataset.load(path: imagePath, tokenizer: llamaTokenizer, template: llavaTemplate, image: (700, 16),
                                                      imageFolder: Self.images, maxLength: range.lowerBound + 8)) { error in
            XCTAssertEqual("\(error)", "\(imagePath):1: over-long sample: \(withImage.length) positions; max length \(range.lowerBound + 8) would cut the image at \(range.lowerBound)..<\(range.upperBound) (1 bad row in \(imagePath))")
        }
    }

    // MARK: batching

    func testBatchRightPadsAndShiftsTargets() throws {
        let a = TrainingExample(inputIDs: [1, 700, 700, 10, 11, 12], labels: [-100, -100, -100, -100, 11, 12],
                                imagePath: "/x.png", imageRange: 1..<3, source: "d:1")
        let b = TrainingExample(inputIDs: [1, 20, 21], labels: [-100, 20, 21], source: "d:2")
        let batch = TrainingBatch(examples: [a, b], padID: 99)
        XCTAssertEqual(batch.layout, SequenceLayout(batch: 2, length: 6))
        XCTAssertEqual(batch.inputIDs, [1, 700, 700, 10, 11, 12, 1, 20, 21, 99, 99, 99])
        XCTAssertEqual(batch.labels, [-100, -100, -100, -100, 11, 12, -100, 20, 21, -100, -100, -100])
        XCTAssertEqual(batch.targets, [-100, -100, -100, 11, 12, -100, 20, 21, -100, -100, -100, -100])
        XCTAssertEqual(batch.labelTokenCount, 4)
        XCTAssertEqual(batch.lengths, [6, 3])
        XCTAssertEqual(batch.imagePaths, [["/x.png"], []])
        XCTAssertEqual(batch.imagePositions, [[1, 2], []])
        XCTAssertEqual(batch.sources, ["d:1", "d:2"])
        // Image rows of the second row sit after the first row's length.
        let c = TrainingBatch(examples: [b, a], padID: 0)
        XCTAssertEqual(c.imageRows, [7, 8])
        XCTAssertEqual(c.labelTokenCount, a.targetCount + b.targetCount)
    }

    func testDatasetBatchUsesTheTokenizerPadding() throws {
        let (tokenizer, template) = try clipLlama()
        let data = try TrainingDataset.load(path: Self.fixtures.appendingPathComponent("train-data/llava.json").path,
                                            tokenizer: tokenizer, template: template, image: (700, 16))
        let pad = TrainingBatch.padID(for: tokenizer)
        XCTAssertEqual(pad, 0, "clip-llama pads with <unk>")
        let batch = data.batch([2, 0], padID: pad)
        let length = max(data[0].length, data[2].length)
        XCTAssertEqual(length, data[0].length)
        XCTAssertEqual(batch.layout, SequenceLayout(batch: 2, length: length))
        XCTAssertEqual(Array(batch.inputIDs[data[2].length..<length]), [Int](repeating: pad, count: length - data[2].length))
        for r in 0..<2 {
            let example = data[[2, 0][r]]
            for i in 0..<length {
                let expected = i + 1 < example.length ? example.labels[i + 1] : ignoreIndex
                XCTAssertEqual(batch.targets[r * length + i], expected, "row \(r) position \(i)")
            }
        }
        XCTAssertEqual(batch.imagePositions[1], Array((length + data[0].imageRange!.lowerBound)..<(length + data[0].imageRange!.upperBound)))
        XCTAssertEqual(TrainingBatch.padID(for: try smolLM2().0), try smolLM2().0.tokenID("<|im_end|>"))
    }

    // MARK: order

    func testShuffleIsDeterministicPerSeedAndDiffersPerEpoch() {
        let lengths = (0..<50).map { $0 % 3 == 0 ? -($0 + 1) : $0 + 1 }
        for order in [TrainingOrder.shuffled, .lengthGrouped(batchSize: 4, gradientAccumulation: 2),
                      .modalityLengthGrouped(batchSize: 4, gradientAccumulation: 2)] {
            var r1 = SeededRandom(seed: 42), r2 = SeededRandom(seed: 42), r3 = SeededRandom(seed: 43)
            let epoch0 = order.indices(modalityLengths: lengths, random: &r1)
            XCTAssertEqual(epoch0, order.indices(modalityLengths: lengths, random: &r2), "\(order)")
            XCTAssertEqual(epoch0.sorted(), Array(0..<50), "\(order): a permutation")
            XCTAssertNotEqual(epoch0, order.indices(modalityLengths: lengths, random: &r1), "\(order): next epoch")
            XCTAssertNotEqual(epoch0, order.indices(modalityLengths: lengths, random: &r3), "\(order): other seed")
            var e0 = TrainingOrder.random(seed: 7, epoch: 0), e0b = TrainingOrder.random(seed: 7, epoch: 0), e1 = TrainingOrder.random(seed: 7, epoch: 1)
            XCTAssertEqual(order.indices(modalityLengths: lengths, random: &e0), order.indices(modalityLengths: lengths, random: &e0b))
            var again = TrainingOrder.random(seed: 7, epoch: 0)
            XCTAssertNotEqual(order.indices(modalityLengths: lengths, random: &again), order.indices(modalityLengths: lengths, random: &e1))
        }
        var r = SeededRandom(seed: 1)
        XCTAssertEqual(TrainingOrder.sequential.indices(modalityLengths: lengths, random: &r), Array(0..<50))
    }

    func testModalityGroupingKeepsBatchesPure() {
        // 24 image rows and 16 text rows, megabatch 4·2 = 8: every megabatch is one modality.
        let lengths = (0..<40).map { $0 < 24 ? 10 + $0 : -(5 + $0) }
        let order = TrainingOrder.modalityLengthGrouped(batchSize: 4, gradientAccumulation: 2)
        for seed in 0..<20 as Range<UInt64> {
            var random = SeededRandom(seed: seed)
            let indices = order.indices(modalityLengths: lengths, random: &random)
            XCTAssertEqual(indices.sorted(), Array(0..<40))
            for batch in TrainingOrder.batches(indices, batchSize: 4) {
                XCTAssertTrue(batch.allSatisfy { lengths[$0] > 0 } || batch.allSatisfy { lengths[$0] < 0 }, "seed \(seed): \(batch)")
            }
        }
        // 21 image and 15 text rows: the leftovers (5 image, 7 text) make a mixed first megabatch;
        // only it and the final partial one may mix.
        let uneven = (0..<36).map { $0 % 12 < 7 ? 1 + $0 : -(1 + $0) }
        var mixedSomewhere = false
        for seed in 0..<20 as Range<UInt64> {
            var random = SeededRandom(seed: seed)
            let indices = order.indices(modalityLengths: uneven, random: &random)
            XCTAssertEqual(indices.sorted(), Array(0..<36))
            let megabatches = TrainingOrder.batches(indices, batchSize: 8)
            for (m, megabatch) in megabatches.enumerated() {
                let pure = megabatch.allSatisfy { uneven[$0] > 0 } || megabatch.allSatisfy { uneven[$0] < 0 }
                if !pure { mixedSomewhere = true }
                if m == 0 { XCTAssertFalse(pure, "seed \(seed): the leftovers of both modalities come first") }
                if m != 0 && m != megabatches.count - 1 { XCTAssertTrue(pure, "seed \(seed) megabatch \(m): \(megabatch)") }
            }
        }
        XCTAssertTrue(mixedSomewhere, "the leftovers of both modalities share a megabatch")
        // One modality only: plain length grouping.
        var r1 = SeededRandom(seed: 3), r2 = SeededRandom(seed: 3)
        XCTAssertEqual(order.indices(modalityLengths: (1...10).map { $0 }, random: &r1),
                       TrainingOrder.lengthGrouped(batchSize: 4, gradientAccumulation: 2).indices(modalityLengths: (1...10).map { $0 }, random: &r2))
    }

    func testLengthGroupingSortsMegabatchesAndBalancesMicroBatches() {
        let lengths = (0..<32).map { ($0 * 37) % 101 + 1 }
        var random = SeededRandom(seed: 9)
        // gradient accumulation 1: each batch (= megabatch) longest first.
        let single = TrainingOrder.lengthGrouped(batchSize: 4, gradientAccumulation: 1).indices(modalityLengths: lengths, random: &random)
        for batch in TrainingOrder.batches(single, batchSize: 4) {
            XCTAssertEqual(batch.map { lengths[$0] }, batch.map { lengths[$0] }.sorted(by: >))
        }
        // gradient accumulation 2, batch 2: a megabatch sorted [a ≥ b ≥ c ≥ d] is dealt as [a, d], [b, c].
        let dealt = TrainingOrder.lengthGrouped(batchSize: 2, gradientAccumulation: 2).indices(modalityLengths: lengths, random: &random)
        for megabatch in TrainingOrder.batches(dealt, batchSize: 4) {
            let l = megabatch.map { lengths[$0] }
            XCTAssertTrue(l[0] >= l[2] && l[2] >= l[3] && l[3] >= l[1], "\(l)")
        }
        // A megabatch that does not divide evenly is dealt strided.
        XCTAssertEqual(TrainingOrder.splitToEvenChunks([5, 6, 7, 8, 9], lengths: Array(0..<10), count: 2), [[5, 7, 9], [6, 8]])
    }
}

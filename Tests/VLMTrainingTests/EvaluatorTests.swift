import XCTest
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers
import VLMTraining

/// Evaluation, adapter loading and merging on the tiny LLaVA (`llava/clip-llama`) against the
/// PyTorch + PEFT goldens of `data/train` (Tests/Fixtures/gen_train.py).
final class EvaluatorTests: XCTestCase {
    static let data = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data").path
    static let train = data + "/train"
    static let base = data + "/llava/clip-llama"
    static let loraInit = train + "/lora-init"
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: train + "/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()
    var cases: [String: [String: Any]] { Self.golden["cases"] as! [String: [String: Any]] }

    func loadModel(_ path: String = base) throws -> VisionLanguageModel { try VisionLanguageModel(path: path) }

    func temporaryDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "vlmsh-eval-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    /// Writes LLaVA-format rows to a temporary JSON file: one line, or one row per line.
    func writeRows(_ rows: [[String: Any]], pretty: Bool = false) throws -> String {
        let path = try temporaryDirectory() + "/rows.json"
        try JSONSerialization.data(withJSONObject: rows, options: pretty ? [.prettyPrinted] : []).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func row(_ id: String, kind: String?, image: String?, _ turns: [(String, String)]) -> [String: Any] {
        var r: [String: Any] = ["id": id, "conversations": turns.map { ["from": $0.0, "value": $0.1] }]
        if let kind { r["kind"] = kind }
        if let image { r["image"] = image }
        return r
    }

    // MARK: - Loss and token accuracy

    func testLossMatchesPyTorchAndTheTrainer() throws {
        let model = try loadModel()
        let result = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 0)
        XCTAssertEqual(result.rows.map(\.tokens), [8, 14, 14])
        XCTAssertNil(result.exactMatch)
        // Base model on example A: the projector case's loss before its first step.
        let baseA = (cases["projector"]!["losses"] as! [Double])[0]
        XCTAssertEqual(result.rows[0].loss, baseA, accuracy: 1e-4 * baseA)

        // The trainer's loss (TrainableModel, taped forward) on the same examples.
        let reference = try loadModel()
        let trainable = try TrainableModel(chat: reference, mode: .projector, lora: nil)
        let dataset = try TrainingDataset.load(path: Self.train + "/examples.jsonl", tokenizer: reference.tokenizer,
                                               template: reference.template, image: (reference.imageTokenID, reference.llava.featureCount))
        var pooled = TokenStatistics()
        for (i, row) in result.rows.enumerated() {
            var random = SeededRandom(seed: 0)
            let (_, stats) = try trainable.loss(dataset.batch([i], padID: 0), normalizer: 1, tape: Tape(), random: &random)
            XCTAssertEqual(row.tokens, stats.tokens, row.source)
            XCTAssertEqual(row.lossSum, stats.lossSum, accuracy: 1e-4 * stats.lossSum, row.source)
            XCTAssertEqual(row.correct, stats.correct, row.source)
            pooled += stats
        }
        // Pooled metrics: token-weighted mean, exp of it, argmax share.
        XCTAssertEqual(result.tokens, 36)
        XCTAssertEqual(result.meanLoss, pooled.lossSum / Double(pooled.tokens), accuracy: 1e-4)
        XCTAssertEqual(result.perplexity, exp(result.meanLoss), accuracy: 1e-9 * result.perplexity)
        XCTAssertEqual(result.tokenAccuracy, Double(pooled.correct) / Double(pooled.tokens))
        XCTAssertEqual(result.metrics.map(\.name), ["loss", "perplexity", "token_accuracy"])
    }

    func testAppliedLoRAGivesPEFTLosses() throws {
        let model = try loadModel()
        let adapter = try AppliedAdapter.apply(directory: Self.loraInit, to: model)
        XCTAssertEqual(adapter.kind, .lora)
        let result = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 0)
        let loraA = (cases["lora"]!["losses"] as! [Double])[0]
        XCTAssertEqual(result.rows[0].loss, loraA, accuracy: 1e-4 * loraA)
        // Σ CE of B (with image) and B-text from the gradient-accumulation goldens.
        let sumB = (cases["grad-accum"]!["sum_ce"] as! [Double])[1]
        let sumBText = (cases["grad-accum-text"]!["sum_ce"] as! [Double])[1]
        XCTAssertEqual(result.rows[1].lossSum, sumB, accuracy: 1e-4 * sumB)
        XCTAssertEqual(result.rows[2].lossSum, sumBText, accuracy: 1e-4 * sumBText)
        adapter.unload()
        let base = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 0, limit: 1)
        let baseA = (cases["projector"]!["losses"] as! [Double])[0]
        XCTAssertEqual(base.rows.count, 1)
        XCTAssertEqual(base.rows[0].loss, baseA, accuracy: 1e-4 * baseA)
    }

    // MARK: - Exact match

    func testExactAndNormalizedMatch() {
        XCTAssertTrue(Evaluator.isExactMatch("  A square.\n", "A square."))
        XCTAssertFalse(Evaluator.isExactMatch("a square.", "A square."))
        XCTAssertFalse(Evaluator.isExactMatch("A square", "A square."))
        XCTAssertEqual(Evaluator.normalizedAnswer(" Red and Blue.\n"), "red and blue")
        XCTAssertEqual(Evaluator.normalizedAnswer("Yes!?"), "yes")
        XCTAssertEqual(Evaluator.normalizedAnswer("3"), "3")
        XCTAssertNotEqual(Evaluator.normalizedAnswer("A squares"), Evaluator.normalizedAnswer("A square."))
        // Only trailing punctuation goes.
        XCTAssertEqual(Evaluator.normalizedAnswer("top-left."), "top-left")
    }

    func testPerKindTallyAndMetricNames() {
        func row(_ kind: String?, _ exact: Bool, _ normalized: Bool, generated: Bool = true) -> EvalRowResult {
            EvalRowResult(source: "f:1", id: nil, kind: kind, hasImage: true, tokens: 2, lossSum: 1, correct: 1,
                          reference: generated ? "x" : nil, generated: generated ? "x" : nil, exactMatch: exact, normalizedMatch: normalized)
        }
        let result = EvalResult(dataset: "f", rows: [row("colour", true, true), row("colour", false, true), row("shape", false, false),
                                                     row(nil, true, true), row("count", false, false, generated: false)],
                                blankImages: false, maxNewTokens: 8)
        let kinds = result.byKind
        XCTAssertEqual(Set(kinds.keys), ["colour", "shape", "count"])
        XCTAssertEqual(kinds["colour"]!.rows, 2)
        XCTAssertEqual(kinds["colour"]!.exactMatches, 1)
        XCTAssertEqual(kinds["colour"]!.normalizedMatches, 2)
        XCTAssertEqual(kinds["colour"]!.exactMatch, 0.5)
        XCTAssertEqual(kinds["shape"]!.exactMatch, 0)
        XCTAssertEqual(kinds["count"]!.generated, 0)
        XCTAssertEqual(result.generatedRows, 4)
        XCTAssertEqual(result.exactMatch, 0.5)
        XCTAssertEqual(result.normalizedMatch, 0.75)
        XCTAssertEqual(result.tokenAccuracy, 0.5)
        XCTAssertEqual(result.metrics.map(\.name), [
            "loss", "perplexity", "token_accuracy", "exact_match", "exact_match_normalized",
            "exact_match/colour", "exact_match_normalized/colour", "exact_match/shape", "exact_match_normalized/shape",
        ])
        let blank = EvalResult(dataset: "f", rows: result.rows, blankImages: true, maxNewTokens: 8)
        XCTAssertTrue(blank.metrics.allSatisfy { $0.name.hasPrefix("blank_images/") })
    }

    /// Greedy answers are what a chat gives for the same conversation, and scoring sees them: a
    /// file whose references are the model's own answers scores 100%, per kind too.
    func testGreedyAnswersMatchChatAndScore() throws {
        let model = try loadModel()
        let rows = [
            Self.row("q1", kind: "shape", image: Self.data + "/llava/images/square.png",
                     [("human", "<image>\nWhat shape is this?"), ("gpt", "A square."), ("human", "What color?"), ("gpt", "Red and blue.")]),
            Self.row("q2", kind: "caption", image: Self.data + "/llava/images/wide.png", [("human", "Describe the picture."), ("gpt", "A wide image.")]),
            Self.row("q3", kind: "shape", image: nil, [("human", "Say hello."), ("gpt", "Hello!")]),
        ]
        let first = try Evaluator.run(chat: model, dataset: try writeRows(rows, pretty: true), maxNewTokens: 6)
        XCTAssertEqual(first.rows.map(\.reference), ["Red and blue.", "A wide image.", "Hello!"])
        XCTAssertEqual(first.rows.map(\.kind), ["shape", "caption", "shape"])
        XCTAssertEqual(first.rows.map(\.id), ["q1", "q2", "q3"])
        let answers = first.rows.map { $0.generated! }

        // The same conversations through ChatSession, as the REPL sends them.
        var parameters = GenerationParameters()
        parameters.temperature = 0; parameters.maxTokens = 6; parameters.stopStrings = model.template.stopStrings
        func image(_ name: String) throws -> ImageInput {
            ImageInput(hash: name, pixels: try model.llava.preprocess(try ImageLoader.load(path: Self.data + "/llava/images/" + name)))
        }
        func reply(_ chat: ChatSession, _ text: String, images: [ImageInput] = []) throws -> String {
            let g = try chat.send(text, images: images, parameters: parameters)
            try withExtendedLifetime(chat) { while try g.next() != nil {} }
            return g.text
        }
        let multiTurn = ChatSession(model: model, history: [ChatMessage(role: .user, text: "<image>\nWhat shape is this?"),
                                                            ChatMessage(role: .assistant, text: "A square.")],
                                    historyImages: [[try image("square.png")], []])
        XCTAssertEqual(answers[0], try reply(multiTurn, "What color?"))
        XCTAssertEqual(answers[1], try reply(ChatSession(model: model), "Describe the picture.", images: [try image("wide.png")]))
        XCTAssertEqual(answers[2], try reply(ChatSession(model: model), "Say hello."))

        // References replaced by the answers (padded with spaces / changed case in one row).
        var own = rows
        for i in own.indices {
            var turns = own[i]["conversations"] as! [[String: String]]
            turns[turns.count - 1]["value"] = i == 2 ? "  " + answers[i].uppercased() + "  " : answers[i]
            own[i]["conversations"] = turns
        }
        // On one line, rows are told apart by their index.
        let second = try Evaluator.run(chat: model, dataset: try writeRows(own), maxNewTokens: 6)
        XCTAssertEqual(second.rows.map(\.id), ["q1", "q2", "q3"])
        XCTAssertEqual(second.rows.map(\.generated), first.rows.map(\.generated))
        let lettered = answers[2].uppercased() != answers[2]
        XCTAssertEqual(second.rows.map(\.exactMatch), [true, true, !lettered])
        XCTAssertEqual(second.rows.map(\.normalizedMatch), [true, true, true])
        XCTAssertEqual(second.byKind["shape"]!.rows, 2)
        XCTAssertEqual(second.byKind["shape"]!.normalizedMatches, 2)
        XCTAssertEqual(second.byKind["caption"]!.exactMatch, 1)
        XCTAssertEqual(second.normalizedMatch, 1)
    }

    /// A chat with a second picture attached after a turn about the first: the greedy answer is
    /// the chat's (both images spliced, in order), the teacher-forced loss the trainer's, and
    /// swapping the pictures changes both.
    func testTwoPictureRowsAnswerAsTheChatDoes() throws {
        let model = try loadModel()
        let turns = [("human", "<image>\nWhat shape is this?"), ("gpt", "A square."), ("human", "<image>\nAnd this one?"), ("gpt", "A wide image.")]
        var row = Self.row("two", kind: "shape", image: nil, turns)
        row["image"] = [Self.data + "/llava/images/square.png", Self.data + "/llava/images/wide.png"]
        row["group"] = "newest"
        var swapped = row
        swapped["image"] = [Self.data + "/llava/images/wide.png", Self.data + "/llava/images/square.png"]
        let result = try Evaluator.run(chat: model, dataset: try writeRows([row, swapped]), maxNewTokens: 6)
        XCTAssertEqual(result.rows.map(\.group), ["newest", "newest"])
        XCTAssertEqual(result.rows[0].reference, "A wide image.")

        var parameters = GenerationParameters()
        parameters.temperature = 0; parameters.maxTokens = 6; parameters.stopStrings = model.template.stopStrings
        func image(_ name: String) throws -> ImageInput {
            ImageInput(hash: name, pixels: try model.llava.preprocess(try ImageLoader.load(path: Self.data + "/llava/images/" + name)))
        }
        let chat = ChatSession(model: model, history: [ChatMessage(role: .user, text: "<image>\nWhat shape is this?"),
                                                       ChatMessage(role: .assistant, text: "A square.")],
                               historyImages: [[try image("square.png")], []])
        let g = try chat.send("<image>\nAnd this one?", images: [try image("wide.png")], parameters: parameters)
        try withExtendedLifetime(chat) { while try g.next() != nil {} }
        XCTAssertEqual(result.rows[0].generated, g.text)

        // Teacher forcing splices both images as training does: the trainer's loss on the row.
        let reference = try loadModel()
        let trainable = try TrainableModel(chat: reference, mode: .projector, lora: nil)
        let dataset = try TrainingDataset.load(path: try writeRows([row]), tokenizer: reference.tokenizer,
                                               template: reference.template, image: (reference.imageTokenID, reference.llava.featureCount))
        XCTAssertEqual(dataset.example(at: 0)?.imageRanges.count, 2)
        var random = SeededRandom(seed: 0)
        let (_, stats) = try trainable.loss(dataset.batch([0], padID: 0), normalizer: 1, tape: Tape(), random: &random)
        XCTAssertEqual(result.rows[0].tokens, stats.tokens)
        XCTAssertEqual(result.rows[0].lossSum, stats.lossSum, accuracy: 1e-4 * stats.lossSum)
        XCTAssertNotEqual(result.rows[0].lossSum, result.rows[1].lossSum)
    }

    func testPerKindAndGroupTallies() {
        func row(_ kind: String, _ group: String?, _ exact: Bool) -> EvalRowResult {
            EvalRowResult(source: "f:1", kind: kind, group: group, hasImage: true, tokens: 1, lossSum: 1, correct: 1,
                          reference: "x", generated: "x", exactMatch: exact, normalizedMatch: exact)
        }
        let result = EvalResult(dataset: "f", rows: [row("colour", "demo", true), row("colour", "other", false), row("colour", "other", true),
                                                     row("count", nil, true)], blankImages: false, maxNewTokens: 4)
        XCTAssertEqual(Set(result.byKindAndGroup.keys), ["colour/demo", "colour/other"])
        XCTAssertEqual(result.byKindAndGroup["colour/other"]!.exactMatch, 0.5)
        XCTAssertEqual(result.byKind["colour"]!.rows, 3)
        XCTAssertEqual(result.metrics.map(\.name).filter { $0.hasPrefix("exact_match/") }, [
            "exact_match/colour", "exact_match/colour/demo", "exact_match/colour/other", "exact_match/count",
        ])
    }

    func testPretokenizedRowsAnswerTheirLastSpan() throws {
        let model = try loadModel()
        let result = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 3)
        // Row A's reply: the last 8 labelled ids, decoded.
        let ids = [109, 95, 220, 661, 169, 644, 381, 654]
        XCTAssertEqual(result.rows[0].reference, model.tokenizer.decode(ids))
        XCTAssertEqual(result.generatedRows, 3)
        XCTAssertTrue(result.rows.allSatisfy { $0.generated != nil })
        // B and B-text share their reply (the last span of 8), not the first span.
        XCTAssertEqual(result.rows[1].reference, model.tokenizer.decode([430, 500, 221, 249, 300, 157, 657, 640]))
        XCTAssertEqual(result.rows[1].reference, result.rows[2].reference)
    }

    // MARK: - Image ablation

    func testBlankImagesReplaceTheImageFeatures() throws {
        let model = try loadModel()
        let square = try ImageLoader.load(path: Self.data + "/llava/images/wide.png")
        let blank = Evaluator.blankImage(like: square)
        XCTAssertEqual([blank.width, blank.height], [square.width, square.height])
        XCTAssertTrue(blank.pixels.allSatisfy { $0 == 128 })
        let real = try model.llava.imageFeatures(pixels: try model.llava.preprocess(square))
        let grey = try model.llava.imageFeatures(pixels: try model.llava.preprocess(blank))
        XCTAssertEqual(real.shape, grey.shape)
        XCTAssertGreaterThan(zip(real.array, grey.array).map { abs($0 - $1) }.max()!, 1e-3)

        let path = Self.train + "/examples.jsonl"
        let normal = try Evaluator.run(chat: model, dataset: path, maxNewTokens: 0)
        let ablated = try Evaluator.run(chat: model, dataset: path, maxNewTokens: 0, blankImages: true)
        XCTAssertTrue(ablated.blankImages)
        XCTAssertNotEqual(normal.rows[0].lossSum, ablated.rows[0].lossSum)
        XCTAssertNotEqual(normal.rows[1].lossSum, ablated.rows[1].lossSum)
        XCTAssertEqual(normal.rows[2].lossSum, ablated.rows[2].lossSum, "the text-only row has no image to blank")
        XCTAssertEqual(ablated.metrics.first?.name, "blank_images/loss")
    }

    // MARK: - Adapters on a loaded model

    static let exampleA = [1, 700, 333, 548, 599, 471, 74, 168, 499, 128, 595, 244, 23, 109, 95, 220, 661, 169, 644, 381, 654]

    /// Last-position logits of example A through a fresh ChatSession (the chat path).
    func chatLogits(_ model: VisionLanguageModel) throws -> [Float] {
        let image = ImageInput(hash: "square", pixels: try model.llava.preprocess(try ImageLoader.load(path: Self.data + "/llava/images/square.png")))
        let chat = ChatSession(model: model, history: [ChatMessage(role: .user, text: "<image>")], historyImages: [[image]])
        let slots = try ChatSession.expand(ids: Self.exampleA, images: [image], support: model.images)
        var p = GenerationParameters()
        p.temperature = 0; p.maxTokens = 1
        let g = try chat.generator(for: slots, parameters: p)
        _ = try withExtendedLifetime(chat) { try g.next() }
        return g.promptLogits
    }

    func assertClose(_ got: [Float], _ expected: [Double], tolerance: Double = 1e-4, _ message: String,
                     file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, expected.count, message, file: file, line: line)
        let worst = zip(got, expected).map { abs(Double($0) - $1) }.max() ?? .infinity
        XCTAssertLessThan(worst, tolerance, "\(message): max abs diff \(worst)", file: file, line: line)
    }

    func testAppliedAdapterReproducesPEFTAndUnloadRestoresTheBase() throws {
        let model = try loadModel()
        let base = Self.golden["base_logits"] as! [Double]
        let peft = Self.golden["lora_init_logits"] as! [Double]
        assertClose(try chatLogits(model), base, "base")

        let adapter = try AppliedAdapter.apply(directory: Self.loraInit, to: model)
        XCTAssertEqual(AppliedAdapter.installedAdapters(on: model.decoder).count, 14)
        XCTAssertTrue(adapter.summary.hasPrefix("lora r=4 alpha=8 on 14 layers"), adapter.summary)
        assertClose(try chatLogits(model), peft, "base + lora-init (PEFT)")
        adapter.unload()
        XCTAssertFalse(adapter.isApplied)
        XCTAssertTrue(AppliedAdapter.installedAdapters(on: model.decoder).isEmpty)
        assertClose(try chatLogits(model), base, "after unload")
        adapter.unload()  // twice is harmless
        assertClose(try chatLogits(model), base, "after a second unload")
    }

    /// A vision tower folder (what `--mode vision+projector` writes): the tower's tensors replace
    /// the model's, change the image rows, and come back on unload; without its projector the
    /// folder is refused with one line.
    func testVisionTowerFolderAppliesAndRestoresTheTower() throws {
        let model = try loadModel()
        let dir = try temporaryDirectory()
        let tower = try XCTUnwrap(model.llava.visionTransformer)
        let before = VisionTowerFiles.snapshot(tower)
        let nudged = VisionTowerFiles.snapshot(tower)
        for t in nudged { for i in 0..<t.count { t.data[i] += 0.02 * Float(i % 5) - 0.04 } }
        VisionTowerFiles.apply(nudged, to: tower)
        try VisionTowerFiles.save(tower, directory: dir)
        VisionTowerFiles.apply(before, to: tower)
        XCTAssertThrowsError(try AdapterKind.detect(directory: dir)) { error in
            XCTAssertTrue("\(error)".contains(ProjectorFiles.hfFile), "\(error)")
        }
        try ProjectorFiles.save(model.llava.projector, directory: dir)
        XCTAssertEqual(try AdapterKind.detect(directory: dir), .visionProjector)

        let adapter = try AppliedAdapter.apply(directory: dir, to: model)
        for (now, want) in zip(VisionTowerFiles.snapshot(tower), nudged) { XCTAssertEqual(now.array, want.array) }
        XCTAssertGreaterThan(zip(try chatLogits(model), Self.golden["base_logits"] as! [Double]).map { abs(Double($0) - $1) }.max()!, 1e-4,
                             "the tower changes the image rows")
        adapter.unload()
        for (now, then) in zip(VisionTowerFiles.snapshot(tower), before) { XCTAssertEqual(now.array, then.array) }
        assertClose(try chatLogits(model), Self.golden["base_logits"] as! [Double], "after unload")
    }

    /// A LoRA + projector folder: both change the logits, both come off again.
    func testLoRAProjectorFolderAppliesAndRestoresTheProjector() throws {
        let model = try loadModel()
        let dir = try temporaryDirectory()
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            try FileManager.default.copyItem(atPath: Self.loraInit + "/" + file, toPath: dir + "/" + file)
        }
        // A projector with every weight nudged.
        let other = try loadModel()
        for t in ProjectorFiles.snapshot(other.llava.projector) { XCTAssertGreaterThan(t.count, 0) }
        var nudged = ProjectorFiles.snapshot(other.llava.projector)
        for t in nudged { for i in 0..<t.count { t.data[i] += 0.05 * Float(i % 7) - 0.1 } }
        ProjectorFiles.apply(nudged, to: other.llava.projector)
        try ProjectorFiles.save(other.llava.projector, directory: dir)
        nudged = []
        XCTAssertEqual(try AdapterKind.detect(directory: dir), .loraProjector)

        let before = ProjectorFiles.snapshot(model.llava.projector)
        let adapter = try AppliedAdapter.apply(directory: dir, to: model)
        XCTAssertEqual(adapter.kind, .loraProjector)
        let peft = Self.golden["lora_init_logits"] as! [Double]
        let logits = try chatLogits(model)
        XCTAssertGreaterThan(zip(logits, peft).map { abs(Double($0) - $1) }.max()!, 1e-3, "the projector changes the image rows")
        let savedProjector = ProjectorFiles.snapshot(other.llava.projector)
        for (mine, theirs) in zip(ProjectorFiles.snapshot(model.llava.projector), savedProjector) { XCTAssertEqual(mine.array, theirs.array) }
        adapter.unload()
        for (now, then) in zip(ProjectorFiles.snapshot(model.llava.projector), before) { XCTAssertEqual(now.array, then.array) }
        assertClose(try chatLogits(model), Self.golden["base_logits"] as! [Double], "after unload")

        // A projector-only folder keeps the LoRA that is on.
        let projectorOnly = try temporaryDirectory()
        try ProjectorFiles.save(other.llava.projector, directory: projectorOnly)
        let lora = try AppliedAdapter.apply(directory: Self.loraInit, to: model)
        let projector = try AppliedAdapter.apply(directory: projectorOnly, to: model)
        XCTAssertEqual(projector.kind, .projector)
        XCTAssertNil(projector.lora)
        assertClose(try chatLogits(model), logits.map(Double.init), tolerance: 1e-5, "lora-init + the same projector as the combined folder")
        projector.unload()
        assertClose(try chatLogits(model), peft, "projector off, LoRA still on")
        lora.unload()
    }

    func testBadAdapterFoldersFailWithoutTouchingTheModel() throws {
        let model = try loadModel()
        let empty = try temporaryDirectory()
        XCTAssertThrowsError(try AppliedAdapter.apply(directory: empty, to: model)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(empty + "/adapter_config.json"), text)
            XCTAssertFalse(text.contains("\n"), text)
        }
        XCTAssertThrowsError(try AppliedAdapter.apply(directory: empty + "/nope", to: model)) { error in
            XCTAssertTrue("\(error)".contains("no such adapter folder"), "\(error)")
        }
        // A config without weights: LoRA.load names the missing file; nothing was installed.
        let broken = try temporaryDirectory()
        try FileManager.default.copyItem(atPath: Self.loraInit + "/adapter_config.json", toPath: broken + "/adapter_config.json")
        try Data("not safetensors".utf8).write(to: URL(fileURLWithPath: broken + "/" + ProjectorFiles.hfFile))
        XCTAssertThrowsError(try AppliedAdapter.apply(directory: broken, to: model)) { error in
            XCTAssertTrue("\(error)".contains("adapter_model.safetensors"), "\(error)")
        }
        assertClose(try chatLogits(model), Self.golden["base_logits"] as! [Double], "unchanged")
    }

    // MARK: - Text models

    /// clip-llama's language model alone as a Hugging Face text model folder (same weights, same
    /// tokenizer), so the LLaVA goldens of text-only rows hold for it.
    func textModelFolder() throws -> String {
        let dir = try temporaryDirectory() + "/clip-llama-text"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.base + "/config.json"))) as! [String: Any]
        try JSONSerialization.data(withJSONObject: config["text_config"]!).write(to: URL(fileURLWithPath: dir + "/config.json"))
        for file in ["tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: Self.base + "/" + file, toPath: dir + "/" + file)
        }
        let llava = try SafetensorsFile(path: Self.base + "/model.safetensors")
        let tensors = try llava.weightNames.filter { $0.hasPrefix("language_model.") }.sorted().map { name in
            (name: String(name.dropFirst("language_model.".count)), tensor: try llava.floats(name), dtype: GGMLType.f32)
        }
        try SafetensorsWriter.write(tensors, to: dir + "/model.safetensors")
        return dir
    }

    func testTextModelEvalAdapterAndMerge() throws {
        let folder = try textModelFolder()
        let model = try TextModel(path: folder)
        // Image rows are bad rows for a text model; with skipping, the text row is scored.
        let mixed = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 2, skipBadRows: true)
        XCTAssertEqual(mixed.skippedRows.count, 2)
        XCTAssertEqual(mixed.rows.map(\.source), [Self.train + "/examples.jsonl:3"])
        XCTAssertNotNil(mixed.rows[0].generated)
        XCTAssertThrowsError(try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl")) { error in
            XCTAssertTrue("\(error)".contains("examples.jsonl:1: the row has an image but the model takes no images"), "\(error)")
        }

        // The PEFT adapter (transformers 5 LLaVA key names) lands on the text model's layers.
        let sumBText = (cases["grad-accum-text"]!["sum_ce"] as! [Double])[1]
        let adapter = try AppliedAdapter.apply(directory: Self.loraInit, to: model)
        let adapted = try Evaluator.run(chat: model, dataset: Self.train + "/examples.jsonl", maxNewTokens: 4, skipBadRows: true)
        XCTAssertEqual(adapted.rows[0].lossSum, sumBText, accuracy: 1e-4 * sumBText)
        adapter.unload()

        // A projector folder does not fit a text model.
        let projectorOnly = try temporaryDirectory()
        try ProjectorFiles.save(try loadModel().llava.projector, directory: projectorOnly)
        XCTAssertThrowsError(try AppliedAdapter.apply(directory: projectorOnly, to: model)) { error in
            XCTAssertTrue("\(error)".contains(projectorOnly + "/" + ProjectorFiles.hfFile), "\(error)")
        }

        // Merged: tokenizer copied, loads as a text model, same loss and answers as base + adapter.
        let out = try temporaryDirectory() + "/merged"
        let report = try Merge.run(model: folder, adapter: Self.loraInit, output: out)
        XCTAssertEqual(report.copiedFiles, ["config.json", "tokenizer.json", "tokenizer_config.json"])
        let merged = try Evaluator.run(chat: try TextModel(path: out), dataset: Self.train + "/examples.jsonl", maxNewTokens: 4, skipBadRows: true)
        XCTAssertEqual(merged.rows[0].lossSum, sumBText, accuracy: 1e-4 * sumBText)
        XCTAssertEqual(merged.rows[0].generated, adapted.rows[0].generated)
    }

    // MARK: - Merge

    func testMergedLLaVAFolderGivesTheAdaptedLogits() throws {
        let out = try temporaryDirectory() + "/merged"
        let report = try Merge.run(model: Self.base, adapter: Self.loraInit, output: out)
        XCTAssertEqual(report.mergedWeights, 14)
        XCTAssertEqual(report.projectorTensors, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".tmp"))
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: out)),
                       ["config.json", "model.safetensors", "preprocessor_config.json", "processor_config.json",
                        "tokenizer.json", "tokenizer_config.json"])
        // Same key names as the input.
        let input = try SafetensorsFile(path: Self.base + "/model.safetensors")
        let merged = try SafetensorsFile(path: out + "/model.safetensors")
        XCTAssertEqual(Set(merged.weightNames), Set(input.weightNames))
        let model = try loadModel(out)
        XCTAssertTrue(AppliedAdapter.installedAdapters(on: model.decoder).isEmpty)
        assertClose(try chatLogits(model), Self.golden["lora_init_logits"] as! [Double], "merged")

        // An existing output is refused.
        XCTAssertThrowsError(try Merge.run(model: Self.base, adapter: Self.loraInit, output: out)) { error in
            XCTAssertTrue("\(error)".contains("already exists"), "\(error)")
        }
        // bf16 weights load and stay close.
        let half = try temporaryDirectory() + "/merged-bf16"
        _ = try Merge.run(model: Self.base, adapter: Self.loraInit, output: half, dtype: .bf16)
        XCTAssertEqual(try SafetensorsFile(path: half + "/model.safetensors").dtype("language_model.lm_head.weight"), "BF16")
        let logits = try chatLogits(try loadModel(half))
        assertClose(logits, Self.golden["lora_init_logits"] as! [Double], tolerance: 0.1, "bf16 merge")
    }

    /// Last-position logits of a chat turn with an image (any LLaVA layout).
    func turnLogits(_ model: VisionLanguageModel) throws -> [Float] {
        let image = ImageInput(hash: "wide", pixels: try model.llava.preprocess(try ImageLoader.load(path: Self.data + "/llava/images/wide.png")))
        var p = GenerationParameters()
        p.temperature = 0; p.maxTokens = 1
        // The generator reaches its session unowned: keep the session alive.
        let chat = ChatSession(model: model)
        let g = try chat.send("What is in the picture?", images: [image], parameters: p)
        _ = try withExtendedLifetime(chat) { try g.next() }
        return g.promptLogits
    }

    /// Original LLaVA layout (`llava_llama`, mm_projector keys, vision tower in a subfolder) with
    /// a LoRA + projector folder: the merged folder keeps the layout and gives the adapted logits.
    func testMergedOriginalLLaVAWithLoRAAndProjector() throws {
        let original = Self.data + "/llava/original-llava"
        let dir = try temporaryDirectory()
        let adapterDir = dir + "/adapter"
        try FileManager.default.createDirectory(atPath: adapterDir, withIntermediateDirectories: true)
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            try FileManager.default.copyItem(atPath: Self.loraInit + "/" + file, toPath: adapterDir + "/" + file)
        }
        let donor = try loadModel(original)
        let weights = ProjectorFiles.snapshot(donor.llava.projector)
        for t in weights { for i in 0..<t.count { t.data[i] *= 1.5 } }
        ProjectorFiles.apply(weights, to: donor.llava.projector)
        try ProjectorFiles.save(donor.llava.projector, directory: adapterDir)

        let model = try loadModel(original)
        let base = try turnLogits(model)
        let adapter = try AppliedAdapter.apply(directory: adapterDir, to: model)
        let expected = try turnLogits(model)
        XCTAssertGreaterThan(zip(base, expected).map { abs($0 - $1) }.max()!, 1e-3)
        adapter.unload()
        XCTAssertEqual(try turnLogits(model), base)

        let out = dir + "/merged"
        let report = try Merge.run(model: original, adapter: adapterDir, output: out)
        XCTAssertEqual(report.kind, .loraProjector)
        XCTAssertEqual(report.mergedWeights, 14)
        XCTAssertEqual(report.projectorTensors, 4)
        XCTAssertTrue(report.copiedFiles.contains("clip-vision"))
        let input = try SafetensorsFile(path: original + "/model.safetensors")
        XCTAssertEqual(Set(try SafetensorsFile(path: out + "/model.safetensors").weightNames), Set(input.weightNames))
        let merged = try turnLogits(try loadModel(out))
        XCTAssertLessThan(zip(merged, expected).map { abs($0 - $1) }.max()!, 1e-4)
    }

    func testMergeFusesW_plus_scaledBA() {
        let a = Tensor(shape: [2, 3], values: [1, 0, 2, 0, 1, -1])
        let b = Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        let w = Tensor(shape: [2, 3], values: [1, 1, 1, 1, 1, 1])
        Merge.fuse(LowRankAdapter(a: a, b: b, scale: 0.5), into: w)
        // B·A = [[1, 2, 0], [3, 4, 2]]; W + 0.5·B·A
        XCTAssertEqual(w.array, [1.5, 2, 1, 2.5, 3, 2])
    }

    /// A text model (HF folder without a tokenizer): the merged decoder equals base + adapter.
    func testMergedTextModelMatchesTheAdaptedDecoder() throws {
        let folder = Self.data + "/tinyllama/llama"
        func decoder(_ path: String) throws -> LlamaModel {
            let config = try JSONDecoder().decode(LlamaConfiguration.self, from: Data(contentsOf: URL(fileURLWithPath: path + "/config.json")))
            let weights = try WeightMap(file: path, source: try openCheckpoint(folder: path))
            weights.rename(LlamaWeights.sanitizeHF)
            return try LlamaModel(config: config, weights: weights, ropePairing: .halves)
        }
        let base = try decoder(folder)
        var random = SeededRandom(seed: 7)
        let lora = try LoRA.create(LoRAConfiguration(rank: 4, alpha: 8, dropout: 0), decoder: base, layout: .text, random: &random)
        for adapter in lora.adapters.values { for i in 0..<adapter.b.count { adapter.b.data[i] = (random.nextUnit() - 0.5) * 0.2 } }
        let dir = try temporaryDirectory()
        try lora.save(directory: dir + "/adapter", layout: .text, baseModel: folder)
        try base.setAdapters(lora.adapters)
        let tokens = [1, 5, 9, 2, 7, 3]
        let expected = Array(try base.forward(tokens: tokens, cache: base.makeCache()))

        let report = try Merge.run(model: folder, adapter: dir + "/adapter", output: dir + "/merged")
        XCTAssertFalse(report.isLlava)
        XCTAssertEqual(report.mergedWeights, lora.adapters.count)
        XCTAssertEqual(report.copiedFiles, ["config.json"])
        let merged = try decoder(dir + "/merged")
        let got = Array(try merged.forward(tokens: tokens, cache: merged.makeCache()))
        let worst = zip(got, expected).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst, 1e-4)

        // A projector folder cannot go into a text model; the output is not created.
        let projectorDir = dir + "/projector"
        try FileManager.default.createDirectory(atPath: projectorDir, withIntermediateDirectories: true)
        try ProjectorFiles.save(try loadModel().llava.projector, directory: projectorDir)
        XCTAssertThrowsError(try Merge.run(model: folder, adapter: projectorDir, output: dir + "/bad")) { error in
            XCTAssertTrue("\(error)".contains("no multimodal projector"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.tmp"))
    }
}

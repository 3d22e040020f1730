import Foundation
import XCTest
@testable import VLMTraining
import VLMGeneration
import VLMTensor
import VLMModels
#if canImport(Glibc)
import Glibc
#endif

/// Files above `TrainingDataset.eagerRowLimit` rows: indexed, parsed and tokenized only when used.
extension DataTests {
    /// LLaVA-665k-like rows: an id, one of a few shared images, 2–6 turns.
    static func generatedRow(_ n: Int) -> [String: Any] {
        let turns = 2 + 2 * (n % 3)
        let conversations: [[String: String]] = (0..<turns).map { t in
            t % 2 == 0 ? ["from": "human", "value": (t == 0 ? "<image>\n" : "") + "What colour is shape \(n) number \(t)?"]
                       : ["from": "gpt", "value": "It is red, as row \(n) says."]
        }
        return ["id": "row-\(n)", "image": "img\(n % 4).png", "conversations": conversations]
    }

    static func json(_ object: Any) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self)
    }

    /// `json(generatedRow(n))` written directly (200k rows through JSONSerialization take seconds).
    static func generatedLine(_ n: Int) -> String {
        let turns = (0..<(2 + 2 * (n % 3))).map { t in
            t % 2 == 0 ? #"{"from":"human","value":"\#(t == 0 ? #"<image>\n"# : "")What colour is shape \#(n) number \#(t)?"}"#
                       : #"{"from":"gpt","value":"It is red, as row \#(n) says."}"#
        }
        return #"{"conversations":[\#(turns.joined(separator: ","))],"id":"row-\#(n)","image":"img\#(n % 4).png"}"#
    }

    /// LLaVA's `modality_lengths` of a generated row, computed as LLaVA does (Python's `split()`).
    static func llavaModalityLength(_ row: [String: Any]) -> Int {
        let words = (row["conversations"] as! [[String: String]]).reduce(0) { $0 + $1["value"]!.split(whereSeparator: \.isWhitespace).count }
        return row["image"] != nil ? words : -words
    }

    func testALargeFileIsIndexedNotTokenizedAndABadRowDeepInIsReportedWhenMet() throws {
        let (tokenizer, template) = try clipLlama()
        let count = 200_000, badRow = 150_000
        let dir = try folder()
        for i in 0..<4 { try copyImage("square.png", to: dir.appendingPathComponent("img\(i).png")) }
        var text = ""
        text.reserveCapacity(count * 300)
        for n in 0..<count {
            // The bad row has no assistant turn: only tokenizing it shows that.
            text += n == badRow ? row([("human", "<image>\nHi")], image: "img0.png") : Self.generatedLine(n)
            text += "\n"
        }
        let path = dir.appendingPathComponent("big.jsonl").path
        try text.write(toFile: path, atomically: false, encoding: .utf8)

        let started = Date()
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: (700, 16))
        let seconds = Date().timeIntervalSince(started)
        XCTAssertTrue(data.isLazy)
        XCTAssertEqual(data.count, count)
        XCTAssertEqual(data.tokenizedRowCount, TrainingDataset.lazyProbeRows, "only the probe rows are tokenized at load")
        XCTAssertTrue(data.problems.isEmpty)
        XCTAssertLessThan(seconds, 5, "indexing 200k rows must not take as long as tokenizing them")

        XCTAssertEqual(Self.generatedLine(7), Self.json(Self.generatedRow(7)).replacingOccurrences(of: "\\/", with: "/"))
        // A lazily built row is the row an eager load builds.
        let small = try folder(["small.jsonl": (0..<3).map { Self.json(Self.generatedRow($0)) }.joined(separator: "\n")])
        for i in 0..<4 { try copyImage("square.png", to: small.appendingPathComponent("img\(i).png")) }
        let eager = try TrainingDataset.load(path: small.appendingPathComponent("small.jsonl").path, tokenizer: tokenizer,
                                             template: template, image: (700, 16))
        XCTAssertFalse(eager.isLazy)
        for i in 0..<3 {
            let lazy = try XCTUnwrap(data.example(at: i))
            XCTAssertEqual(lazy.inputIDs, eager[i].inputIDs)
            XCTAssertEqual(lazy.labels, eager[i].labels)
            XCTAssertEqual(lazy.imageRange, eager[i].imageRange)
            XCTAssertEqual(lazy.source, "\(path):\(i + 1)")
        }

        // The bad row is left out of its batch and reported once, with its line.
        let batch = data.batch([badRow - 1, badRow, badRow + 1], padID: 0)
        XCTAssertEqual(batch.sources, ["\(path):\(badRow)", "\(path):\(badRow + 2)"])
        XCTAssertEqual(data.problemsMetWhileReading, ["\(path):\(badRow + 1): no assistant turn"])
        XCTAssertNil(data.example(at: badRow))
        XCTAssertEqual(data.badRowsMetWhileReading, 1)
        XCTAssertEqual(data.tokenizedRowCount, TrainingDataset.lazyProbeRows + 3 + 3, "a known bad row is not tokenized again")

        // Lengths for grouping follow LLaVA's rule (words, signed by the image), without tokenizing.
        let lengths = data.modalityLengths
        XCTAssertEqual(lengths.count, count)
        for n in [0, 1, 2, 77, 199_999] { XCTAssertEqual(lengths[n], Self.llavaModalityLength(Self.generatedRow(n)), "row \(n)") }
        XCTAssertEqual(data.tokenizedRowCount, TrainingDataset.lazyProbeRows + 6)
        var random = SeededRandom(seed: 1)
        let order = TrainingOrder.modalityLengthGrouped(batchSize: 4, gradientAccumulation: 2).indices(for: data, random: &random)
        XCTAssertEqual(order.sorted(), Array(0..<count))
    }

    func testALargeJSONArrayIsIndexedByElementWithItsLines() throws {
        let (tokenizer, template) = try smolLM2()
        let good = row([("human", "Hi [there], {you}"), ("gpt", "Hello \"friend\"\\n")])
        var elements = (0..<30).map { _ in good }
        elements[12] = "{\"conversations\": [1 2]}"          // broken JSON inside one element
        elements[20] = "\"just text\""
        elements[25] = "{\n  \"conversations\":\n  [{\"from\": \"human\", \"value\": \"Hi\"}, {\"from\": \"gpt\", \"value\": \"Yo\"}]\n}"
        let dir = try folder(["a.json": "\u{FEFF}\n[\n" + elements.joined(separator: ",\n") + "\n]\n", "open.json": "[\n" + good + ",\n" + good])
        let path = dir.appendingPathComponent("a.json").path
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, skipBadRows: true, eagerRowLimit: 10)
        XCTAssertTrue(data.isLazy)
        XCTAssertEqual(data.count, 30)
        XCTAssertEqual(data.tokenizedRowCount, 30, "a file smaller than the probe is checked whole")
        XCTAssertEqual(data.problems.count, 2)
        XCTAssertTrue(data.problems[0].hasPrefix("\(path):15: invalid JSON element"), data.problems[0])
        XCTAssertEqual(data.problems[1], "\(path):23: malformed row: expected a JSON object, found a string")
        XCTAssertEqual(data.example(at: 25)?.source, "\(path):28")
        XCTAssertEqual(data.rawRow(of: 25)?["conversations"].map { ($0 as! [Any]).count }, 2)

        let open = dir.appendingPathComponent("open.json").path
        XCTAssertThrowsError(try TrainingDataset.load(path: open, tokenizer: tokenizer, template: template, image: nil, eagerRowLimit: 0)) { error in
            XCTAssertEqual("\(error)", "\(open): invalid JSON (the array is not closed)")
        }
    }

    func testBadElementsOfALazyArrayBeyondTheProbeAreSkippedWhenMet() throws {
        let (tokenizer, template) = try smolLM2()
        let good = row([("human", "Hi"), ("gpt", "Hello")])
        let total = TrainingDataset.lazyProbeRows + 40
        var elements = (0..<total).map { _ in good }
        let broken = TrainingDataset.lazyProbeRows + 5, text = TrainingDataset.lazyProbeRows + 9
        elements[broken] = "{\"conversations\": [1 2]}"
        elements[text] = "\"just text\""
        let dir = try folder(["a.json": "[\n" + elements.joined(separator: ",\n") + "\n]"])
        let path = dir.appendingPathComponent("a.json").path
        let data = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, eagerRowLimit: 10)
        XCTAssertTrue(data.problems.isEmpty)
        let usable = data.examples
        XCTAssertEqual(usable.count, total - 2)
        XCTAssertEqual(data.problemsMetWhileReading.count, 2)
        XCTAssertTrue(data.problemsMetWhileReading[0].hasPrefix("\(path):\(broken + 2): invalid JSON element"), data.problemsMetWhileReading[0])
        XCTAssertEqual(data.problemsMetWhileReading[1], "\(path):\(text + 2): malformed row: expected a JSON object, found a string")

        // Bad rows within the probe stop the load as in an eager one, unless skipped.
        elements[3] = "\"early\""
        try ("[\n" + elements.joined(separator: ",\n") + "\n]").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, eagerRowLimit: 10)) { error in
            XCTAssertEqual("\(error)", "\(path):5: malformed row: expected a JSON object, found a string (1 bad row in \(path))")
        }
        let skipping = try TrainingDataset.load(path: path, tokenizer: tokenizer, template: template, image: nil, skipBadRows: true, eagerRowLimit: 10)
        XCTAssertEqual(skipping.problems, ["\(path):5: malformed row: expected a JSON object, found a string"])
        XCTAssertNil(skipping.example(at: 3))
        XCTAssertEqual(skipping.badRowsMetWhileReading, 0, "a bad row of the probe was reported at load")
    }

    func testADataFileThatIsAFIFOOrAFolderIsRefusedWithoutWaiting() throws {
        let (tokenizer, template) = try smolLM2()
        let dir = try folder()
        let fifo = dir.appendingPathComponent("pipe.jsonl").path
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        let started = Date()
        XCTAssertThrowsError(try TrainingDataset.load(path: fifo, tokenizer: tokenizer, template: template, image: nil)) { error in
            XCTAssertEqual("\(error)", "\(fifo): not a regular file")
        }
        XCTAssertThrowsError(try TrainingDataset.load(path: dir.path, tokenizer: tokenizer, template: template, image: nil)) { error in
            XCTAssertEqual("\(error)", "\(dir.path): not a regular file")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
    }

    func testRowLengthScannerFollowsLLaVAsWordCount() {
        func length(_ text: String) -> Int {
            Array(text.utf8).withUnsafeBufferPointer { RowLengthScanner.modalityLength($0) }
        }
        XCTAssertEqual(length(#"{"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nTwo  words"}, {"value": "a\tb\u0020c", "from": "gpt"}]}"#), 6)
        XCTAssertEqual(length(#"{"conversations": [{"from": "human", "value": "x \"quoted\" y"}], "other": {"value": "not counted"}}"#), -3)
        XCTAssertEqual(length(#"{"image": null, "conversations": [{"value": "one"}]}"#), -1)
        XCTAssertEqual(length(#"{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "image": "x.png"}"#), 3)
        XCTAssertEqual(length(#"{"conversations": [{"value": "un"#), 0, "a row that does not scan counts 0")
        XCTAssertEqual(length(#""text""#), 0)
    }

    func testTrainingPassesOverBadRowsOfALazyFileAndCountsThem() throws {
        let model = try VisionLanguageModel(path: Self.clipLlama)
        let good = row([("human", "Hi"), ("gpt", "Hello")]), bad = row([("human", "Hi")])
        let rows = (0..<TrainingDataset.lazyProbeRows).map { _ in good } + Array(repeating: bad, count: 6)
        let dir = try folder(["d.jsonl": rows.joined(separator: "\n")])
        let path = dir.appendingPathComponent("d.jsonl").path
        let data = try TrainingDataset.load(path: path, tokenizer: model.tokenizer, template: model.template,
                                            image: (model.imageTokenID, model.llava.featureCount), eagerRowLimit: 0)
        var settings = FineTuneSettings()
        settings.mode = .projector
        settings.steps = rows.count   // one epoch of micro-batches, and 6 more
        let trainer = try Trainer(model: try TrainableModel(chat: model, mode: .projector, lora: nil), dataset: data, settings: settings)
        while !trainer.isFinished { try trainer.step() }
        XCTAssertEqual(trainer.state.step, rows.count)
        XCTAssertEqual(data.badRowsMetWhileReading, 6)
        let lines = (TrainingDataset.lazyProbeRows + 1...rows.count).map { "\(path):\($0): no assistant turn" }
        XCTAssertEqual(data.problemsMetWhileReading.sorted(), lines.sorted())
        XCTAssertTrue(trainer.state.history.allSatisfy { $0.labelTokens > 0 }, "every step trained on good rows")
    }
}

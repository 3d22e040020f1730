import VLMGeneration
import VLMTokenizers
import XCTest

final class SamplerTests: XCTestCase {
    func sample(_ logits: [Float], _ configure: (inout GenerationParameters) -> Void, history: Set<Int> = [], times: Int = 1) -> [Int] {
        var p = GenerationParameters()
        p.seed = 1234
        configure(&p)
        var sampler = Sampler(parameters: p)
        return (0..<times).map { _ in logits.withUnsafeBufferPointer { sampler.sample($0, history: history) } }
    }

    func testGreedyAndTopOneAreArgmaxWithFirstOnTies() {
        let logits: [Float] = [0.5, 3, -1, 3, 2]
        XCTAssertEqual(sample(logits, { $0.temperature = 0 }), [1])
        XCTAssertEqual(Set(sample([0.5, 3, -1, 2.9, 2], { $0.temperature = 1.5; $0.topK = 1; $0.minP = 0 }, times: 50)), [1])
        logits.withUnsafeBufferPointer { XCTAssertEqual(Sampler.argmax($0), 1) }
    }

    func testTopPAndMinPCutTheTail() {
        // softmax([3, 2, 1, 0]) ≈ [0.644, 0.237, 0.087, 0.032]
        let logits: [Float] = [3, 2, 1, 0]
        let free: (inout GenerationParameters) -> Void = { $0.temperature = 1; $0.topK = 0; $0.topP = 1; $0.minP = 0 }
        XCTAssertEqual(Set(sample(logits, { free(&$0); $0.topP = 0.5 }, times: 300)), [0])
        XCTAssertEqual(Set(sample(logits, { free(&$0); $0.topP = 0.9 }, times: 600)), [0, 1, 2])
        XCTAssertEqual(Set(sample(logits, { free(&$0); $0.minP = 0.3 }, times: 600)), [0, 1])
        XCTAssertEqual(Set(sample(logits, { free(&$0); $0.topK = 2 }, times: 600)), [0, 1])
    }

    func testUncutSamplingFollowsTheSoftmax() {
        let logits: [Float] = [1, 0, 2, 0.5]
        let n = 40_000
        let draws = sample(logits, { $0.temperature = 1; $0.topK = 0; $0.topP = 1; $0.minP = 0 }, times: n)
        let e = logits.map { expf($0) }, total = e.reduce(0, +)
        for id in 0..<4 {
            let frequency = Float(draws.filter { $0 == id }.count) / Float(n)
            XCTAssertEqual(frequency, e[id] / total, accuracy: 0.01, "token \(id)")
        }
    }

    func testTemperatureSharpens() {
        let logits: [Float] = [1, 0]
        let cold = sample(logits, { $0.temperature = 0.1; $0.topK = 0; $0.topP = 1; $0.minP = 0 }, times: 2000)
        XCTAssertGreaterThan(cold.filter { $0 == 0 }.count, 1990)
    }

    func testRepetitionPenaltyAsTransformers() {
        // Positive logits are divided, negative multiplied: [2, -1, 0.5] with penalty 2 on {0, 1} → [1, -2, 0.5].
        XCTAssertEqual(sample([2, -1, 0.5], { $0.temperature = 0; $0.repetitionPenalty = 2 }, history: [0, 1]), [0])
        XCTAssertEqual(sample([2, -1, 0.5], { $0.temperature = 0; $0.repetitionPenalty = 5 }, history: [0, 1]), [2])
    }

    func testSameSeedSameDrawsDifferentSeedDifferentDraws() {
        let logits = (0..<100).map { Float($0 % 7) / 3 }
        let a = sample(logits, { $0.seed = 9; $0.topK = 0; $0.minP = 0 }, times: 50)
        XCTAssertEqual(a, sample(logits, { $0.seed = 9; $0.topK = 0; $0.minP = 0 }, times: 50))
        XCTAssertNotEqual(a, sample(logits, { $0.seed = 10; $0.topK = 0; $0.minP = 0 }, times: 50))
    }
}

/// The generate loop driven by scripted logits, with a real tokenizer for the text.
final class GeneratorTests: XCTestCase {
    static let tokenizerFolder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data/tokenizers/tiny-bpe-gpt2").path

    /// A generator whose model always "predicts" the next id of `script`.
    func scripted(_ script: [Int], eos: Set<Int> = [], configure: (inout GenerationParameters) -> Void = { _ in }) throws -> (Generator, Tokenizer) {
        let tokenizer = try Tokenizer.load(folder: Self.tokenizerFolder)
        var parameters = GenerationParameters()
        parameters.temperature = 0
        configure(&parameters)
        let logits = UnsafeMutableBufferPointer<Float>.allocate(capacity: tokenizer.vocabSize)
        addTeardownBlock { logits.deallocate() }
        var position = 0
        let next: () -> Generator.Logits = {
            logits.initialize(repeating: 0)
            logits[script[min(position, script.count - 1)]] = 10
            position += 1
            return UnsafeBufferPointer(logits)
        }
        let generator = Generator(tokenizer: tokenizer, parameters: parameters, promptIDs: [1, 2], stopTokens: eos,
                                  prefill: next, step: { _ in next() })
        return (generator, tokenizer)
    }

    func drain(_ g: Generator) throws -> String {
        var streamed = ""
        while let t = try g.next() { streamed += t.text }
        return streamed
    }

    func testStopsAtEndOfSequenceAndMaxTokens() throws {
        let tokenizer = try Tokenizer.load(folder: Self.tokenizerFolder)
        let ids = tokenizer.encode("hello world and more")
        let eos = 0
        var (g, _) = try scripted(ids + [eos, ids[0]], eos: [eos])
        let text = try drain(g)
        XCTAssertEqual(text, "hello world and more")
        XCTAssertEqual(g.ids, ids + [eos])
        XCTAssertEqual(g.finishReason, .endOfSequence)

        (g, _) = try scripted(ids, configure: { $0.maxTokens = 2 })
        _ = try drain(g)
        XCTAssertEqual(g.ids.count, 2)
        XCTAssertEqual(g.finishReason, .length)
    }

    func testStopStringIsCutEvenAcrossTokens() throws {
        let tokenizer = try Tokenizer.load(folder: Self.tokenizerFolder)
        let ids = tokenizer.encode("one two three four five")
        let (g, _) = try scripted(ids, configure: { $0.stopStrings = ["ee fo"]; $0.maxTokens = 50 })
        let streamed = try drain(g)
        XCTAssertEqual(streamed, "one two thr")
        XCTAssertEqual(g.text, streamed)
        XCTAssertEqual(g.finishReason, .stopString)
    }

    func testStreamedPiecesConcatenateToTheDecodedText() throws {
        let tokenizer = try Tokenizer.load(folder: Self.tokenizerFolder)
        let ids = tokenizer.encode("naïve café — 東京 🙂 ok")
        let (g, _) = try scripted(ids, configure: { $0.maxTokens = ids.count })
        let streamed = try drain(g)
        XCTAssertEqual(streamed, tokenizer.decode(ids))
        XCTAssertFalse(streamed.contains("\u{FFFD}"))
    }
}

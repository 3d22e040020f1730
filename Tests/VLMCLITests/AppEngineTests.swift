import Foundation
import VLMApp
import VLMModels
import VLMStore
import VLMTraining
import XCTest

/// The application layer without a terminal: the engine's /finetune reports its steps as events,
/// leaves the result applied, and `/adapter unload` returns to the weights it started from.
final class AppEngineTests: XCTestCase {
    /// Records every event, as a front end would receive them.
    final class RecordingConsole: Console {
        var events: [AppEvent] = []
        var errors: [String] = []
        func report(_ event: AppEvent) { events.append(event) }
        func error(_ text: String) { errors.append(text) }

        var steps: [TrainingStep] { events.compactMap { if case .trainingStep(let s) = $0 { return s } else { return nil } } }
        var messages: [String] { events.compactMap { if case .message(let m) = $0 { return m } else { return nil } } }
    }

    func logits(_ engine: Engine) throws -> [Float] {
        let decoder = try XCTUnwrap(engine.model).decoder
        return Array(try decoder.forward(tokens: [1, 700, 333, 548, 599], cache: decoder.makeCache()))
    }

    func testFinetuneReportsStepsAndRestoresTheBaseWeights() throws {
        let dir = try scratchDirectory("vlmsh-app")
        let console = RecordingConsole()
        let engine = Engine(console: console, store: try Store(path: dir + "/vlmsh.sqlite"))
        try engine.load(EvalMergeCLITests.base)
        let base = try logits(engine)

        var settings = FineTuneSettings()
        settings.mode = .loraProjector
        settings.steps = 3
        settings.learningRate = 1e-2
        try engine.finetune(FineTuneRequest(data: EvalMergeCLITests.examples, out: dir + "/run", settings: settings))
        XCTAssertEqual(console.steps.map(\.step), [1, 2, 3])
        XCTAssertTrue(console.steps.allSatisfy { $0.total == 3 && $0.loss.isFinite })
        XCTAssertTrue(console.messages.contains { $0.hasPrefix("run 1 completed: 3 steps") }, "\(console.messages)")
        let tuned = try logits(engine)
        XCTAssertGreaterThan(zip(base, tuned).map { abs($0 - $1) }.max()!, 1e-3, "the result stays applied")

        XCTAssertTrue(engine.handle("/adapter unload"))
        XCTAssertEqual(console.errors, [])
        XCTAssertEqual(try logits(engine), base, "the base weights are back exactly")
    }

    func testLoadingIsOneTaskBetweenBeganAndEnded() throws {
        let console = RecordingConsole()
        let engine = Engine(console: console, store: try Store(path: try scratchDirectory("vlmsh-app") + "/vlmsh.sqlite"))
        try engine.load(EvalMergeCLITests.base)
        guard case .began(let label) = console.events.first else { return XCTFail("\(console.events)") }
        XCTAssertEqual(label, "loading clip-llama")
        guard case .ended(failed: false) = console.events[1] else { return XCTFail("\(console.events)") }
    }
}

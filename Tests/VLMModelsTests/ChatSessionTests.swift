import VLMGeneration
import VLMModels
import VLMTensor
import VLMTokenizers
import XCTest

/// Follow-up turns reuse the cached prefix and give what a from-scratch run gives.
final class ChatSessionTests: XCTestCase {
    func greedy(_ maxTokens: Int) -> GenerationParameters {
        var p = GenerationParameters()
        p.temperature = 0
        p.maxTokens = maxTokens
        return p
    }

    func testSecondTurnThroughPrefixReuseEqualsFromScratch() throws {
        let model = try TextModel(path: Fixtures.defaultModel())
        let chat = ChatSession(model: model)
        let first = try chat.send("What is the capital of France?", parameters: greedy(24))
        while try first.next() != nil {}
        XCTAssertEqual(first.text, "The capital of France is Paris.")
        chat.commit(reply: first.text)

        let second = try chat.send("And of Germany?", parameters: greedy(16))
        while try second.next() != nil {}
        XCTAssertGreaterThan(chat.reusedPositions, 37, "the first turn's prompt and reply come from the cache")

        let fresh = ChatSession(model: model, history: Array(chat.messages.prefix(2)))
        let again = try fresh.send("And of Germany?", parameters: greedy(16))
        while try again.next() != nil {}
        XCTAssertEqual(fresh.reusedPositions, 0)
        let diff = maxDifference(second.promptLogits, again.promptLogits)
        XCTAssertLessThan(diff, 1e-3, "prefix-reuse vs from-scratch logits, max diff \(diff)")
        XCTAssertEqual(second.ids, again.ids)
    }

    func testImagesNeedAnImageModelAndPlaceholdersMustMatch() throws {
        let support = ImageSupport(tokenID: 7, tokenText: "<image>", featureCount: 3, preprocess: { _ in Tensor(shape: [1]) }, encode: { $0 })
        let img = { (h: String) in ImageInput(hash: h, pixels: .init(shape: [1])) }
        XCTAssertEqual(try ChatSession.expand(ids: [1, 7, 2], images: [img("a")], support: support),
                       [.token(1), .image(hash: "a", row: 0), .image(hash: "a", row: 1), .image(hash: "a", row: 2), .token(2)])
        XCTAssertEqual(try ChatSession.expand(ids: [7, 7, 7, 5, 7], images: [img("a"), img("b")], support: support).count, 7)
        XCTAssertThrowsError(try ChatSession.expand(ids: [1, 7, 7, 2], images: [img("a")], support: support))
        XCTAssertThrowsError(try ChatSession.expand(ids: [1, 7, 2], images: [img("a"), img("b")], support: support))
        XCTAssertThrowsError(try ChatSession.expand(ids: [1, 7, 2, 7], images: [img("a")], support: support))

        let text = try TextModel(path: Fixtures.defaultModel())
        XCTAssertThrowsError(try ChatSession(model: text).send("hi", images: [img("a")], parameters: greedy(1)))
    }
}

import Foundation
import VLMTestSupport
import XCTest

/// `vlmsh finetune --optim adamw_bnb_8bit` on SmolLM2: the losses of 50 LoRA steps stay within 2 %
/// of AdamW's with a quarter of its optimizer state, and a run resumed from a checkpoint (8-bit
/// moments saved and restored) continues as the uninterrupted one.
final class Adam8bitCLITests: XCTestCase {
    var home = ""

    override func setUpWithError() throws {
        home = NSTemporaryDirectory() + "vlmsh-adam8bit-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        // 50 made-up facts (a colour per invented name), text only: one epoch of 50 steps sees each
        // once, so the loss stays far from zero and compares the optimizers on what they learn,
        // not on how fast they memorize.
        let colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
        let syllables = ["ka", "lo", "mi", "ren", "tu", "vas", "zo", "pel", "dri", "nu"]
        let rows = (0..<50).map { i -> [String: Any] in
            let name = syllables[i % 10].capitalized + syllables[(i * 7 + 3) % 10] + syllables[(i / 10 + i) % 10]
            return ["id": "\(i)", "conversations": [["from": "human", "value": "What colour is \(name)'s boat?"],
                                                   ["from": "gpt", "value": "\(name)'s boat is \(colours[(i * 5 + i / 8) % 8])."]]]
        }
        try JSONSerialization.data(withJSONObject: rows).write(to: URL(fileURLWithPath: home + "/facts.json"))
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: home) }

    func finetune(_ extra: [String], out: String) throws -> (losses: [Double], summary: [String: Any]) {
        let r = try CLITests.vlmsh(["finetune", "--model", try installedDefaultModel(), "--data", home + "/facts.json",
                                    "--out", home + "/" + out, "--lr", "1e-3", "--lora-dropout", "0", "--json"] + extra,
                                   home: home, timeout: 600)
        XCTAssertEqual(r.status, 0, r.stderr)
        var losses: [Double] = [], summary: [String: Any] = [:]
        for line in r.stdout.split(separator: "\n") {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { continue }
            if let loss = o["loss"] as? Double { losses.append(loss) }
            if let s = o["summary"] as? [String: Any] { summary = s }
        }
        return (losses, summary)
    }

    func testLossesStayWithinTwoPercentOfAdamW() throws {
        let full = try finetune(["--steps", "50"], out: "adamw")
        let eight = try finetune(["--steps", "50", "--optim", "adamw_bnb_8bit"], out: "adamw8bit")
        XCTAssertEqual(full.losses.count, 50)
        XCTAssertEqual(eight.losses.count, 50)
        XCTAssertLessThan(full.losses.suffix(10).reduce(0, +), full.losses.prefix(10).reduce(0, +), "training learns")
        XCTAssertGreaterThan(full.losses.suffix(10).reduce(0, +) / 10, 0.05, "the data is not memorized")
        for (step, (a, b)) in zip(full.losses, eight.losses).enumerated() {
            XCTAssertLessThanOrEqual(abs(a - b), 0.02 * a, "step \(step + 1): AdamW \(a), 8-bit \(b)")
        }
        let fullBytes = try XCTUnwrap(full.summary["optimizer_state_bytes"] as? Int)
        let eightBytes = try XCTUnwrap(eight.summary["optimizer_state_bytes"] as? Int)
        // SmolLM2's 30 layers, LoRA r=8 on q, k, v, o (576→576/192) and gate, up, down (576↔1536):
        // 81 408 LoRA values a layer, 8 bytes each in AdamW. In 8 bits, the k and v B matrices
        // (192×8 = 1536 < 4096 values) keep Float32 moments; the other 78 336 values take 2 bytes
        // each plus 8 bytes for each of their 306 blocks of 256.
        XCTAssertEqual(fullBytes, 30 * 81_408 * 8)
        XCTAssertEqual(eightBytes, 30 * (78_336 * 2 + 306 * 8 + 3_072 * 8))
    }

    func testResumingRestoresTheEightBitState() throws {
        let whole = try finetune(["--steps", "4", "--save-steps", "2", "--optim", "adamw_bnb_8bit"], out: "whole")
        let resumed = try finetune(["--resume", home + "/whole/checkpoint-2"], out: "resumed")
        XCTAssertEqual(resumed.losses.count, 2)
        for (a, b) in zip(whole.losses.suffix(2), resumed.losses) { XCTAssertEqual(a, b, accuracy: 1e-6 * a) }
    }
}

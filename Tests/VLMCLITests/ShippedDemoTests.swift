import Foundation
import XCTest

/// The demo vision-language model shipped in models/vlmsh-demo (built by sessions/build-demo.vlm):
/// installed into a store by scripts/install-demo.sh as `make model` does, it answers questions
/// about shapes images it never saw, and with a blank image it cannot.
final class ShippedDemoTests: XCTestCase {
    var home = ""

    override func setUpWithError() throws {
        home = try scratchHomeWithDefaultModel("vlmsh-shipped-demo")
        try CLITests.installDemo(home: home)
    }

    func vlmsh(_ arguments: [String]) throws -> CLITests.Result {
        let r = try CLITests.vlmsh(arguments, home: home, timeout: 900)
        XCTAssertEqual(r.status, 0, "vlmsh \(arguments.joined(separator: " ")): \(r.stderr)")
        return r
    }

    /// Exact-match rates by question kind on `data`, and the answer given to each row id.
    func scores(_ data: String, _ extra: [String] = []) throws -> (rates: [String: Double], answers: [String: String]) {
        let r = try vlmsh(["eval", "--model", "vlmsh-demo", "--data", data, "--kinds", "colour,shape,count",
                           "--max-new-tokens", "6", "--no-store", "--json"] + extra)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let kinds = try XCTUnwrap(object["by_kind"] as? [String: [String: Any]])
        let rows = try XCTUnwrap(object["per_row"] as? [[String: Any]])
        let answers = Dictionary(rows.map { ($0["id"] as? String ?? "", $0["generated"] as? String ?? "") }) { a, _ in a }
        return (kinds.compactMapValues { $0["exact_match"] as? Double }, answers)
    }

    func testAnswersUnseenImagesAndNotBlankOnes() throws {
        // Fresh images from a seed the build never used, drawn as the build's data were.
        let data = home + "/shapes"
        _ = try vlmsh(["make-demo-data", "--out", data, "--train", "0", "--validation", "0", "--test", "40",
                       "--image-size", "96", "--jitter", "0", "--seed", "2026"])
        let (seen, answers) = try scores(data + "/test.json"), blank = try scores(data + "/test.json", ["--blank-images"]).rates
        print("shipped demo on 40 unseen images: \(seen); with blank images: \(blank)")
        // The build measured 96.8 % / 97.4 % / 100 % on its 200 test images (README); these 40
        // give 100 % / 97.4 % / 100 %. The bars are the issue's (90 % on colour and shape, 75 %
        // on counting; counting held at 90 %).
        XCTAssertGreaterThanOrEqual(seen["colour"] ?? 0, 0.9, "\(seen)")
        XCTAssertGreaterThanOrEqual(seen["shape"] ?? 0, 0.9, "\(seen)")
        XCTAssertGreaterThanOrEqual(seen["count"] ?? 0, 0.9, "\(seen)")
        for kind in ["colour", "shape", "count"] {
            XCTAssertLessThan(blank[kind] ?? 1, (seen[kind] ?? 0) - 0.25, "\(kind) is answered as well without the image: \(blank)")
        }

        // A chat turn through the store name, as the REPL's default model, answers as eval did.
        let test = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: data + "/test.json"))) as? [[String: Any]])
        let row = try XCTUnwrap(test.first { $0["kind"] as? String == "colour" })
        let question = try XCTUnwrap((row["conversations"] as? [[String: String]])?.first?["value"]).replacingOccurrences(of: "<image>\n", with: "")
        let reply = try vlmsh(["generate", "--model", "vlmsh-demo", "--image", data + "/" + (row["image"] as! String),
                               "--prompt", question, "--max-tokens", "6", "--temperature", "0"])
        XCTAssertEqual(reply.stdout.trimmingCharacters(in: .whitespacesAndNewlines), answers[row["id"] as! String], reply.stderr)
    }
}

import Foundation
import XCTest

/// The chats README.md shows with the demo model are what the shipped model says: each code
/// block with a `>>> /image …` line is replayed greedily through `vlmsh run`, every `>>>` line as
/// the user's input and the lines under it as the expected reply.
final class ReadmeTranscriptTests: XCTestCase {
    struct Transcript { var inputs: [String] = []; var replies: [String] = [] }

    /// The README's image chats. A `>>>` line's comment (after two or more spaces, in
    /// parentheses) is for the reader, not the model.
    static func transcripts(in readme: String) -> [Transcript] {
        var found: [Transcript] = []
        for (i, block) in readme.components(separatedBy: "```").enumerated() where i % 2 == 1 && block.contains(">>> /image ") {
            var t = Transcript()
            var reply: [String]? = nil
            func closeReply() { if let r = reply { t.replies.append(r.joined(separator: "\n")) }; reply = nil }
            for line in block.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
                if line.hasPrefix(">>> ") {
                    closeReply()
                    var input = String(line.dropFirst(4))
                    if let comment = input.range(of: #"\s{2,}\(.*\)$"#, options: .regularExpression) { input.removeSubrange(comment) }
                    else if let comment = input.range(of: #"\s{2,}#.*$"#, options: .regularExpression) { input.removeSubrange(comment) }
                    t.inputs.append(input)
                    if !input.hasPrefix("/") { reply = [] }
                } else if reply != nil, !line.trimmingCharacters(in: .whitespaces).isEmpty {
                    reply!.append(line)
                }
            }
            closeReply()
            found.append(t)
        }
        return found
    }

    func testReadmeChatsAreWhatTheShippedDemoSays() throws {
        let readme = try String(contentsOf: CLITests.root.appendingPathComponent("README.md"), encoding: .utf8)
        let transcripts = Self.transcripts(in: readme)
        XCTAssertGreaterThanOrEqual(transcripts.count, 2, "README's image chats")
        let home = try scratchHomeWithDefaultModel("vlmsh-readme")
        try CLITests.installDemo(home: home)
        for (n, t) in transcripts.enumerated() {
            XCTAssertFalse(t.replies.isEmpty, "transcript \(n) shows no reply")
            // Paths in README are relative to the checkout.
            let inputs = t.inputs.map { $0.hasPrefix("/image ") ? "/image " + CLITests.root.path + "/" + $0.dropFirst(7) : $0 }
            let script = home + "/readme-\(n).vlm"
            try (["/set temperature 0"] + inputs).joined(separator: "\n").appending("\n").write(toFile: script, atomically: true, encoding: .utf8)
            let r = try CLITests.vlmsh(["run", script, "--model", "vlmsh-demo", "--json"], home: home, timeout: 600)
            XCTAssertEqual(r.status, 0, r.stderr)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            let replies = try XCTUnwrap(object["replies"] as? [String]).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            XCTAssertEqual(replies, t.replies, "README transcript \(n) (inputs \(t.inputs))")
        }
    }
}

import Foundation
import VLMStore
import XCTest

final class ExportTests: XCTestCase {
    private var path = ""
    private var store: Store!
    private var session: Int64 = 0

    override func setUpWithError() throws {
        path = try temporaryDatabasePath()
        store = try Store(path: path)
        let model = try store.upsertModel(path: "/m/llava.gguf", fingerprint: "fp", architecture: "llava")
        session = try store.createSession(name: "demo", model: model, params: #"{"temperature": 0}"#, template: "vicuna")
        let cat = try store.addImage(sha256: fakeSHA(1), path: "/img/cat.png", width: 640, height: 480, bytes: 5000)
        try store.appendTurn(session: session, role: .system, text: "You are helpful.")
        try store.appendTurn(session: session, role: .user, text: "What is in the picture?", images: [cat], promptTokens: 600)
        try store.appendTurn(session: session, role: .assistant, text: "A \"cat\".\nOn a mat.", promptTokens: 600,
                             completionTokens: 9,
                             timings: TurnTimings(ttft: 0.25, prefillTokensPerSecond: 2400, decodeTokensPerSecond: 18.5),
                             params: #"{"top_k": 40}"#, seed: 7)
        // The same image again: LLaVA gets one <image> token, on its first human turn.
        try store.appendTurn(session: session, role: .user, text: "And its colour?", images: [cat])
        try store.appendTurn(session: session, role: .assistant, text: "Orange.")
    }

    override func tearDown() {
        store = nil
        removeDatabaseFolder(path)
    }

    private func iso(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    func testMarkdown() throws {
        let created = iso(try XCTUnwrap(store.session(id: session)).created)
        let sha = String(fakeSHA(1).prefix(12))
        let expected = """
            # Session \(session): demo

            - Created: \(created)
            - Model: /m/llava.gguf (llava)
            - Template: vicuna
            - Params: `{"temperature":0}`

            ## System

            You are helpful.

            ## User

            ![cat.png](/img/cat.png) 640×480, sha256 \(sha)

            What is in the picture?

            *600 prompt tokens*

            ## Assistant

            A "cat".
            On a mat.

            *600 prompt tokens · 9 completion tokens · TTFT 0.250 s · prefill 2400.0 tok/s · decode 18.5 tok/s · seed 7*

            ## User

            ![cat.png](/img/cat.png) 640×480, sha256 \(sha)

            And its colour?

            ## Assistant

            Orange.

            """
        XCTAssertEqual(try store.export(session: session, format: .md), expected)
    }

    func testJSONLines() throws {
        let turns = try store.turns(session: session)
        let text = try store.export(session: session, format: .jsonl)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.count, turns.count + 1, "one object per turn, newline-terminated")
        XCTAssertEqual(lines.last, "")
        let image = #"{"path":"/img/cat.png","sha256":"\#(fakeSHA(1))","width":640,"height":480}"#
        XCTAssertEqual(String(lines[1]), """
            {"session":\(session),"index":1,"role":"user","text":"What is in the picture?","images":[\(image)],\
            "prompt_tokens":600,"completion_tokens":null,"ttft":null,"prefill_tps":null,"decode_tps":null,\
            "params":null,"seed":null,"created":"\(iso(turns[1].created))"}
            """)
        XCTAssertEqual(String(lines[2]), """
            {"session":\(session),"index":2,"role":"assistant","text":"A \\"cat\\".\\nOn a mat.","images":[],\
            "prompt_tokens":600,"completion_tokens":9,"ttft":0.25,"prefill_tps":2400.0,"decode_tps":18.5,\
            "params":{"top_k":40},"seed":7,"created":"\(iso(turns[2].created))"}
            """)
        for line in lines.dropLast() {
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(line.utf8)), String(line))
        }
    }

    func testLLaVA() throws {
        let expected = #"""
            [
              {
                "id": "demo",
                "image": "/img/cat.png",
                "conversations": [
                  {
                    "from": "human",
                    "value": "<image>\nWhat is in the picture?"
                  },
                  {
                    "from": "gpt",
                    "value": "A \"cat\".\nOn a mat."
                  },
                  {
                    "from": "human",
                    "value": "And its colour?"
                  },
                  {
                    "from": "gpt",
                    "value": "Orange."
                  }
                ]
              }
            ]

            """#
        let text = try store.export(session: session, format: .llava)
        XCTAssertEqual(text, expected)
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: Any]])
        XCTAssertEqual(parsed.count, 1)
    }

    func testLLaVAImageTokenGoesOnTheTurnThatHadTheImage() throws {
        let s = try store.createSession()
        let dog = try store.addImage(sha256: fakeSHA(2), path: "/img/dog.png", width: 1, height: 1, bytes: 1)
        try store.appendTurn(session: s, role: .user, text: "Hi")
        try store.appendTurn(session: s, role: .assistant, text: "Hello")
        try store.appendTurn(session: s, role: .user, text: "Look", images: [dog])
        try store.appendTurn(session: s, role: .assistant, text: "A dog")
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(
            with: Data(store.export(session: s, format: .llava).utf8)) as? [[String: Any]])
        XCTAssertEqual(parsed[0]["id"] as? String, "session-\(s)")
        XCTAssertEqual(parsed[0]["image"] as? String, "/img/dog.png")
        let values = (parsed[0]["conversations"] as? [[String: String]])?.map { $0["value"] ?? "" }
        XCTAssertEqual(values, ["Hi", "Hello", "<image>\nLook", "A dog"])

        // A session without images exports a text-only record.
        let plain = try store.createSession()
        try store.appendTurn(session: plain, role: .user, text: "2+2?")
        XCTAssertFalse(try store.export(session: plain, format: .llava).contains("\"image\""))
        XCTAssertThrowsError(try store.export(session: 9999, format: .md))
    }

    /// A picture file with `bytes` in `folder`, recorded in the store as a chat records it.
    private func picture(_ name: String, _ bytes: String, in folder: String) throws -> Int64 {
        let path = folder + "/" + name
        try Data(bytes.utf8).write(to: URL(fileURLWithPath: path))
        return try store.addImage(sha256: ContentHash.hex(bytes), path: path, width: 1, height: 1, bytes: Int64(bytes.utf8.count))
    }

    func testLLaVAFolderIsSelfContainedWithSeveralPicturesAndSessions() throws {
        let originals = NSTemporaryDirectory() + "vlmsh-export-src-\(UUID().uuidString)"
        let out = NSTemporaryDirectory() + "vlmsh-export-out-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: originals, withIntermediateDirectories: true)
        defer { for dir in [originals, out] { try? FileManager.default.removeItem(atPath: dir) } }
        let a = try picture("a.PNG", "first picture", in: originals), b = try picture("b.jpg", "second picture", in: originals)
        let c = try picture("c", "third picture", in: originals)
        let two = try store.createSession(name: "two-pictures")
        try store.appendTurn(session: two, role: .user, text: "Same?", images: [a, b])
        try store.appendTurn(session: two, role: .assistant, text: "No.")
        try store.appendTurn(session: two, role: .user, text: "And this one?", images: [c])
        try store.appendTurn(session: two, role: .assistant, text: "Also no.")
        let again = try store.createSession()
        try store.appendTurn(session: again, role: .user, text: "Seen before?", images: [b])
        try store.appendTurn(session: again, role: .assistant, text: "Yes.")

        let written = try store.exportLLaVAFolder(sessions: [two, again], to: out)
        XCTAssertEqual(written.dataFile, out + "/llava.json")
        XCTAssertEqual(written.records, 2)
        XCTAssertEqual(written.images, 3)
        let records = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/llava.json"))) as? [[String: Any]])
        XCTAssertEqual(records.map { $0["id"] as? String }, ["two-pictures", "session-\(again)"])
        let names = ["first picture", "second picture", "third picture"].map { "images/" + ContentHash.hex($0).prefix(16) }
        XCTAssertEqual(records[0]["image"] as? [String], [names[0] + ".png", names[1] + ".jpg", names[2]])
        XCTAssertEqual(records[1]["image"] as? String, names[1] + ".jpg")
        let values = (records[0]["conversations"] as? [[String: String]])?.map { $0["value"] ?? "" }
        XCTAssertEqual(values, ["<image>\n<image>\nSame?", "No.", "<image>\nAnd this one?", "Also no."])
        for (name, content) in zip([names[0] + ".png", names[1] + ".jpg", names[2]], ["first picture", "second picture", "third picture"]) {
            XCTAssertEqual(try String(contentsOfFile: out + "/" + name, encoding: .utf8), content)
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/images").count, 3)
        // Again into the same folder: the same files.
        XCTAssertEqual(try store.exportLLaVAFolder(sessions: [two, again], to: out), written)

        // A picture changed since the chat is not what the model saw: refused, naming it.
        try Data("edited".utf8).write(to: URL(fileURLWithPath: originals + "/c"))
        try FileManager.default.removeItem(atPath: out)
        XCTAssertThrowsError(try store.exportLLaVAFolder(sessions: [two], to: out)) { error in
            XCTAssertTrue("\(error)".contains(originals + "/c: the file changed since session \(two) attached it"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/llava.json"))
        try FileManager.default.removeItem(atPath: originals + "/c")
        XCTAssertThrowsError(try store.exportLLaVAFolder(sessions: [two], to: out)) { error in
            XCTAssertTrue("\(error)".contains("is gone"), "\(error)")
        }

        // Several sessions print as one list too.
        let text = try store.export(sessions: [two, again], format: .llava)
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [Any])?.count, 2)
    }
}

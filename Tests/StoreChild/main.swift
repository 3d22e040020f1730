import Foundation
import VLMStore

/// Writer processes for the store's multi-process tests (VLMStoreTests launches this binary):
///
///     vlmsh-store-child writer-loop <database>   append whole turns for 60 s, printing
///                                                "committed <id>" after each (it is killed mid-way)
///     vlmsh-store-child fixed-writer <database>  append `fixedWriterTurns` turns to the session
///                                                "shared" and as many to a session of its own
enum StoreChild {
    /// Images linked to each turn of the writer loop: a killed writer must leave whole turns.
    static let imagesPerTurn = 3
    static let fixedWriterTurns = 150

    /// A deterministic fake image hash, the same the tests use.
    static func fakeSHA(_ n: Int) -> String { ContentHash.hex("image-\(n)") }

    static func writerLoop(path: String) throws {
        let store = try Store(path: path)
        let session = try store.session(named: "victim")?.id ?? store.createSession(name: "victim")
        let run = try store.runs().first?.id ?? store.startRun()
        let deadline = Date().addingTimeInterval(60)
        // Continue numbering where the previous (killed) child stopped: text encodes the index.
        var n = try store.turns(session: session).count
        while Date() < deadline {
            var images: [Int64] = []
            for k in 0..<imagesPerTurn {
                images.append(try store.addImage(sha256: fakeSHA(n * 7 + k), path: "/img/\(n)-\(k).png",
                                                  width: 8, height: 8, bytes: 64))
            }
            // Long text so some kills land while pages are being written.
            let text = String(repeating: "turn \(n) ", count: 200)
            let id = try store.appendTurn(session: session, role: n % 2 == 0 ? .user : .assistant, text: text,
                                          images: images, promptTokens: n, completionTokens: n)
            try store.addMetric(run: run, step: n, loss: 1)
            FileHandle.standardOutput.write(Data("committed \(id)\n".utf8))
            n += 1
        }
    }

    static func fixedWriter(path: String) throws {
        let store = try Store(path: path)
        guard let shared = try store.session(named: "shared")?.id else {
            throw StoreChildError(message: "\(path) has no session named \"shared\"")
        }
        let own = try store.createSession(name: "pid-\(getpid())")
        for i in 0..<fixedWriterTurns {
            let image = try store.addImage(sha256: fakeSHA(i % 20), path: "/img/\(i % 20).png", width: 1, height: 1, bytes: 1)
            try store.appendTurn(session: shared, role: .user, text: "\(getpid()) #\(i)", images: [image])
            try store.appendTurn(session: own, role: .assistant, text: "#\(i)")
            if i % 10 == 0 { _ = try store.sessions() }
        }
    }
}

struct StoreChildError: Error, CustomStringConvertible { let message: String; var description: String { message } }

let arguments = CommandLine.arguments.dropFirst()
do {
    switch (arguments.first, arguments.count) {
    case ("writer-loop", 2): try StoreChild.writerLoop(path: arguments.last!)
    case ("fixed-writer", 2): try StoreChild.fixedWriter(path: arguments.last!)
    default: throw StoreChildError(message: "usage: vlmsh-store-child writer-loop|fixed-writer <database>")
    }
} catch {
    FileHandle.standardError.write(Data("vlmsh-store-child: \(error)\n".utf8))
    exit(1)
}

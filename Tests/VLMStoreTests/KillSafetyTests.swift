import Foundation
import VLMStore
import XCTest

/// A writer killed with SIGKILL mid-stream must leave a healthy file where every committed
/// turn is whole (text plus all its image links) and the next process carries on.
///
/// The writer is the `vlmsh-store-child writer-loop` executable (Tests/StoreChild).
final class KillSafetyTests: XCTestCase {
    static let imagesPerTurn = 3

    func testKillDuringWritesLeavesCompleteTurns() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }

        var committed: [Int64] = []
        for round in 0..<3 {
            committed += try runChildAndKill(path: path, afterTurns: 40 + 25 * round)

            let store = try Store(path: path)
            XCTAssertEqual(try store.integrityCheck(), "ok", "round \(round)")
            XCTAssertEqual(store.appliedMigrations, [])
            let session = try XCTUnwrap(store.session(named: "victim"))
            let turns = try store.turns(session: session.id)
            let ids = Set(turns.map(\.id))
            XCTAssertTrue(committed.allSatisfy(ids.contains), "every reported commit survived (round \(round))")
            XCTAssertEqual(turns.map(\.index), Array(0..<turns.count))
            for turn in turns {
                XCTAssertEqual(turn.images.count, Self.imagesPerTurn, "turn \(turn.id) is whole")
                XCTAssertEqual(turn.text, String(repeating: "turn \(turn.index) ", count: 200))
                XCTAssertEqual(turn.promptTokens, turn.index)
            }
        }
    }

    /// Starts the child, waits until it has reported `afterTurns` commits, then SIGKILLs it
    /// without warning. Returns the ids it reported.
    private func runChildAndKill(path: String, afterTurns: Int) throws -> [Int64] {
        let process = try storeChild(["writer-loop", path])
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()

        var ids: [Int64] = []
        var buffer = ""
        let reader = output.fileHandleForReading
        while ids.count < afterTurns {
            let chunk = reader.availableData
            if chunk.isEmpty { break }  // child exited early
            buffer += String(decoding: chunk, as: UTF8.self)
            while let newline = buffer.firstIndex(of: "\n") {
                let line = buffer[..<newline]
                buffer = String(buffer[buffer.index(after: newline)...])
                if line.hasPrefix("committed "), let id = Int64(line.dropFirst("committed ".count)) { ids.append(id) }
            }
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        XCTAssertGreaterThanOrEqual(ids.count, afterTurns, "child wrote turns before the kill")
        XCTAssertEqual(process.terminationReason, .uncaughtSignal, "child was killed, did not finish")
        return ids
    }
}

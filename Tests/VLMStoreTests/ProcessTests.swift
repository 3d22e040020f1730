import Foundation
import VLMStore
import XCTest

/// Re-runs this test binary with one test selected, as a separate process. On Linux the XCTest
/// runner is the executable itself and takes the test name as an argument; on macOS it is
/// `xctest -XCTest <name> <bundle>`.
func childProcess(test: String, environment extra: [String: String]) -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
    #if os(macOS)
    process.arguments = ["-XCTest", test, Bundle(for: ProcessTests.self).bundlePath]
    #else
    process.arguments = [test]
    #endif
    process.environment = ProcessInfo.processInfo.environment.merging(extra) { $1 }
    return process
}

/// Separate processes (separate POSIX lock owners) writing one file at once.
final class ProcessTests: XCTestCase {
    static let childVariable = "VLMSH_STORE_WRITER_DB"
    static let turnsPerChild = 150

    /// The child: a fixed number of turns to the shared session and to its own. A no-op in a
    /// normal test run.
    func testChildFixedWriter() throws {
        guard let path = ProcessInfo.processInfo.environment[Self.childVariable] else { return }
        let store = try Store(path: path)
        let shared = try XCTUnwrap(store.session(named: "shared")).id
        let own = try store.createSession(name: "pid-\(getpid())")
        for i in 0..<Self.turnsPerChild {
            let image = try store.addImage(sha256: fakeSHA(i % 20), path: "/img/\(i % 20).png", width: 1, height: 1, bytes: 1)
            try store.appendTurn(session: shared, role: .user, text: "\(getpid()) #\(i)", images: [image])
            try store.appendTurn(session: own, role: .assistant, text: "#\(i)")
            if i % 10 == 0 { _ = try store.sessions() }
        }
    }

    func testTwoProcessesWriteConcurrently() throws {
        if ProcessInfo.processInfo.environment[Self.childVariable] != nil { return }
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)
        let shared = try store.createSession(name: "shared")

        let children = (0..<2).map { _ in
            childProcess(test: "VLMStoreTests.ProcessTests/testChildFixedWriter", environment: [Self.childVariable: path])
        }
        let logs = children.map { child -> Pipe in
            let pipe = Pipe()
            child.standardOutput = pipe
            child.standardError = pipe
            return pipe
        }
        for child in children { try child.run() }
        // The parent writes too, through its own pool.
        for i in 0..<Self.turnsPerChild {
            try store.appendTurn(session: shared, role: .assistant, text: "parent #\(i)")
        }
        for (child, log) in zip(children, logs) {
            let output = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            child.waitUntilExit()
            XCTAssertEqual(child.terminationStatus, 0, output)
            XCTAssertFalse(output.contains("locked"), output)
        }

        let turns = try store.turns(session: shared)
        XCTAssertEqual(turns.count, 3 * Self.turnsPerChild)
        XCTAssertEqual(turns.map(\.index), Array(0..<turns.count))
        let summaries = try store.sessions()
        XCTAssertEqual(summaries.count, 3)
        XCTAssertEqual(summaries.filter { $0.name?.hasPrefix("pid-") == true }.map(\.turnCount), [150, 150])
        XCTAssertEqual(try store.integrityCheck(), "ok")
    }
}

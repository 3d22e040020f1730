import Foundation
import XCTest

/// Drives the real REPL through a pseudo-terminal, keystroke by keystroke.
final class REPLTests: XCTestCase {
    /// A `vlmsh` process whose controlling terminal is a pty we hold the master side of.
    final class Terminal {
        let process = Process()
        let master: Int32
        var output = ""

        init(home: String) throws {
            master = PTY.openpt(O_RDWR | O_NOCTTY)
            guard master >= 0, PTY.grantpt(master) == 0, PTY.unlockpt(master) == 0, let name = PTY.ptsname(master) else {
                throw XCTSkip("no pseudo-terminals here")
            }
            // O_NOCTTY: the pty must become the child's terminal, not this test's.
            let slave = FileHandle(fileDescriptor: open(name, O_RDWR | O_NOCTTY), closeOnDealloc: true)
            // setsid -c makes the pty the controlling terminal, so ^C becomes SIGINT as for a user.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
            process.arguments = ["-c", CLITests.binary.path]
            var env = ProcessInfo.processInfo.environment
            env["VLMSH_HOME"] = home
            env["TERM"] = "xterm"
            env["INPUTRC"] = "/dev/null"
            process.environment = env
            process.standardInput = slave
            process.standardOutput = slave
            process.standardError = slave
            try process.run()
            try slave.close()
        }

        func type(_ keys: String) {
            _ = keys.utf8CString.withUnsafeBufferPointer { write(master, $0.baseAddress, $0.count - 1) }
        }

        /// Reads until `text` has appeared `count` times in the whole output, or fails after `timeout`.
        @discardableResult
        func expect(_ text: String, count: Int = 1, timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while Date() < deadline {
                if output.components(separatedBy: text).count - 1 >= count { return true }
                var fds = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
                if poll(&fds, 1, 100) > 0 {
                    let n = read(master, &buffer, buffer.count)
                    if n <= 0 { break }
                    output += String(decoding: buffer[0..<n], as: UTF8.self)
                }
            }
            XCTFail("'\(text)' (×\(count)) did not appear; output so far:\n\(output)", file: file, line: line)
            return false
        }

        /// Reads until the output holds more than `count` characters.
        func waitForMore(than count: Int, timeout: TimeInterval = 30) {
            let deadline = Date().addingTimeInterval(timeout)
            while output.count <= count && Date() < deadline { _ = expectQuietly(0.1) }
            XCTAssertGreaterThan(output.count, count, "no streamed reply: \(output)")
        }

        func finish() -> Int32 {
            type("\u{04}")   // Ctrl-D
            let deadline = Date().addingTimeInterval(20)
            while process.isRunning && Date() < deadline { _ = expectQuietly(0.1) }
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            close(master)
            return process.terminationStatus
        }

        private func expectQuietly(_ seconds: Double) -> Bool {
            var buffer = [UInt8](repeating: 0, count: 4096)
            var fds = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            if poll(&fds, 1, Int32(seconds * 1000)) > 0 {
                let n = read(master, &buffer, buffer.count)
                if n > 0 { output += String(decoding: buffer[0..<n], as: UTF8.self) }
            }
            return true
        }
    }

    func home() throws -> String {
        let model = try CLITests.defaultModel()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-repl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/models", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf", withDestinationPath: model)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testMessageHistoryRecallCompletionAndMultiline() throws {
        let t = try Terminal(home: try home())
        t.expect("loaded ")
        t.type("/set temperature 0\r")
        t.type("What is the capital of France?\r")
        t.expect("The capital of France is Paris.")

        // Up arrow recalls the last entry; Enter sends it again.
        t.type("\u{1b}[A\r")
        t.expect("The capital of France is Paris.", count: 2)

        // Tab completes a command.
        t.type("/hist\t\r")
        t.expect("assistant: The capital of France is Paris.", count: 2)

        // A """ block is one message.
        t.type("\"\"\"\rSay only\rthe word yes.\r\"\"\"\r")
        t.type("/history\r")
        t.expect("user: Say only\r\nthe word yes.")   // the terminal turns \n into \r\n

        // A bad command or file keeps the REPL going.
        t.type("/image /no/such/file.png\r")
        t.expect("error:")
        t.type("/frobnicate\r")
        t.expect("unknown command /frobnicate")
        t.type("/stats\r")
        t.expect("time to first token")
        XCTAssertEqual(t.finish(), 0)

        // The history file keeps entries for the next REPL.
        let history = try String(contentsOfFile: t.process.environment!["VLMSH_HOME"]! + "/history", encoding: .utf8)
        XCTAssertTrue(history.contains("What is the capital of France?"), history)
    }
}

/// The pty calls Glibc keeps behind feature macros Swift does not set, looked up at run time.
enum PTY {
    static func symbol<T>(_ name: String, as: T.Type) -> T {
        unsafeBitCast(dlsym(UnsafeMutableRawPointer(bitPattern: 0), name)!, to: T.self)
    }
    static let openpt = symbol("posix_openpt", as: (@convention(c) (Int32) -> Int32).self)
    static let grantpt = symbol("grantpt", as: (@convention(c) (Int32) -> Int32).self)
    static let unlockpt = symbol("unlockpt", as: (@convention(c) (Int32) -> Int32).self)
    static let ptsname = symbol("ptsname", as: (@convention(c) (Int32) -> UnsafeMutablePointer<CChar>?).self)
}

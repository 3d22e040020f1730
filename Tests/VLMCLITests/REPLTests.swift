import Foundation
import VLMCLI
import XCTest

/// Drives the real REPL through a pseudo-terminal, keystroke by keystroke.
final class REPLTests: XCTestCase {
    /// A `vlmsh` process whose controlling terminal is a pty we hold the master side of. The child
    /// is spawned directly as a session leader (POSIX_SPAWN_SETSID) and opens the pty's slave side,
    /// which makes it its controlling terminal: ^C written to the master becomes SIGINT for it, as
    /// for a user. Every wait polls with a deadline, and `stop()` (also run at deinit) kills the
    /// child, so a failing test cannot hang `swift test`.
    final class Terminal {
        let pid: pid_t
        let master: Int32
        let home: String
        private(set) var bytes: [UInt8] = []
        private var status: Int32?
        private var closed = false

        /// Everything the terminal showed so far.
        var output: String { String(decoding: bytes, as: UTF8.self) }

        init(home: String, arguments: [String] = []) throws {
            #if !os(Linux)
            throw XCTSkip("pty tests need Linux: a session leader opening a tty acquires it as controlling terminal")
            #endif
            let setsid: Int32 = 0x80   // POSIX_SPAWN_SETSID (glibc ≥ 2.26; behind _GNU_SOURCE)
            self.home = home
            master = PTY.openpt(O_RDWR | O_NOCTTY)
            guard master >= 0, PTY.grantpt(master) == 0, PTY.unlockpt(master) == 0, let name = PTY.ptsname(master) else {
                throw XCTSkip("no pseudo-terminals here")
            }
            let slavePath = String(cString: name)

            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addclose(&actions, master)
            // Opened after setsid, without O_NOCTTY: the pty becomes the child's controlling terminal.
            posix_spawn_file_actions_addopen(&actions, 0, slavePath, O_RDWR, 0)
            posix_spawn_file_actions_adddup2(&actions, 0, 1)
            posix_spawn_file_actions_adddup2(&actions, 0, 2)

            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var none = sigset_t(), defaults = sigset_t()
            sigemptyset(&none)
            sigemptyset(&defaults)
            for signal in [SIGINT, SIGQUIT, SIGPIPE, SIGTERM] { sigaddset(&defaults, signal) }
            posix_spawnattr_setsigmask(&attributes, &none)
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            posix_spawnattr_setflags(&attributes, Int16(setsid | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

            var env = ProcessInfo.processInfo.environment
            env["VLMSH_HOME"] = home
            env["TERM"] = "xterm"
            env["INPUTRC"] = "/dev/null"
            let argv = ([CLITests.binary.path] + arguments).map { strdup($0) } + [nil]
            let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
            defer { (argv + envp).forEach { free($0) } }
            var child: pid_t = 0
            let rc = posix_spawn(&child, CLITests.binary.path, &actions, &attributes, argv, envp)
            guard rc == 0 else {
                close(master)
                throw NSError(domain: NSPOSIXErrorDomain, code: Int(rc), userInfo: [NSLocalizedDescriptionKey: "posix_spawn vlmsh failed"])
            }
            pid = child
        }

        deinit { stop() }

        func type(_ keys: String) {
            let data = Array(keys.utf8)
            var offset = 0
            let deadline = Date().addingTimeInterval(10)
            while offset < data.count && Date() < deadline {
                let n = data.withUnsafeBytes { write(master, $0.baseAddress! + offset, $0.count - offset) }
                if n > 0 { offset += n } else if n < 0 && errno != EINTR && errno != EAGAIN { return } else { _ = pump(0.01) }
            }
        }

        /// Reads what arrives within `seconds`; false at end of output (the child closed the pty).
        @discardableResult
        func pump(_ seconds: Double) -> Bool {
            var fds = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            guard poll(&fds, 1, Int32(seconds * 1000)) > 0 else { return true }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = read(master, &buffer, buffer.count)
            if n > 0 { bytes += buffer[0..<n]; return true }
            if n < 0 && errno == EINTR { return true }
            // EIO once the child is gone: nothing more will come.
            usleep(10_000)
            return false
        }

        func occurrences(_ text: String) -> Int { output.components(separatedBy: text).count - 1 }

        /// Reads until `text` has appeared `count` times in the whole output, or fails after `timeout`.
        @discardableResult
        func expect(_ text: String, count: Int = 1, timeout: TimeInterval = 30, file: StaticString = #filePath, line: UInt = #line) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if occurrences(text) >= count { return true }
                if !pump(0.1) && !isRunning { break }
            }
            if occurrences(text) >= count { return true }
            XCTFail("'\(text)' (×\(count)) did not appear within \(timeout) s; output so far:\n\(output)", file: file, line: line)
            return false
        }

        /// Prompts shown so far.
        var prompts: Int { occurrences(">>> ") }

        /// Types one entry and waits for the next prompt.
        @discardableResult
        func enter(_ entry: String, timeout: TimeInterval = 60, file: StaticString = #filePath, line: UInt = #line) -> Bool {
            let before = prompts
            type(entry + "\r")
            return expect(">>> ", count: before + 1, timeout: timeout, file: file, line: line)
        }

        /// What the terminal showed after the last `marker` (escape sequences and \r removed).
        func text(after marker: String) -> String {
            let out = output
            guard let range = out.range(of: marker, options: .backwards) else { return "" }
            return Self.plain(String(out[range.upperBound...]))
        }

        static func plain(_ s: String) -> String {
            s.replacingOccurrences(of: "\u{1b}\\[[0-9;?]*[A-Za-z]", with: "", options: .regularExpression)
                .replacingOccurrences(of: "\r", with: "")
        }

        var isRunning: Bool {
            if status != nil { return false }
            var s: Int32 = 0
            let r = waitpid(pid, &s, WNOHANG)
            if r == pid { status = s; return false }
            return r == 0
        }

        /// The exit code once the child exits within `timeout` (128+N after signal N), else nil.
        func waitForExit(timeout: TimeInterval = 20) -> Int32? {
            let deadline = Date().addingTimeInterval(timeout)
            while isRunning && Date() < deadline { pump(0.05) }
            guard !isRunning, let s = status else { return nil }
            return s & 0x7f == 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f)
        }

        /// Ctrl-D, then the exit code (-1 when the child had to be killed).
        func finish() -> Int32 {
            type("\u{04}")
            let code = waitForExit() ?? -1
            stop()
            return code
        }

        /// Ends the child if it still runs and closes the pty; safe to call again.
        func stop() {
            if isRunning {
                _ = kill(pid, SIGKILL)
                var s: Int32 = 0
                if waitpid(pid, &s, 0) == pid { status = s }
            }
            if !closed { close(master); closed = true }
        }
    }

    func home(withDefaultModel: Bool = true) throws -> String {
        let model = withDefaultModel ? try CLITests.defaultModel() : nil
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-repl-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/models", withIntermediateDirectories: true)
        if let model {
            try FileManager.default.createSymbolicLink(atPath: dir + "/models/SmolLM2-135M-Instruct.Q4_1.gguf", withDestinationPath: model)
        }
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return dir
    }

    func testMessageHistoryRecallCompletionAndMultiline() throws {
        let t = try Terminal(home: try home(), arguments: ["--model", "smollm2"])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        // The initial load draws a progress line on the terminal's stderr.
        XCTAssertTrue(t.output.contains("\rloading SmolLM2-135M-Instruct.Q4_1.gguf"), t.output)
        t.enter("/set temperature 0")
        t.enter("What is the capital of France?")
        t.expect("The capital of France is Paris.")

        // Up arrow recalls the last entry; Enter sends it again.
        t.type("\u{1b}[A\r")
        t.expect("The capital of France is Paris.", count: 2)
        t.expect(">>> ", count: 4)

        // Tab completes a command.
        t.enter("/hist\t")
        t.expect("assistant: The capital of France is Paris.", count: 2)

        // A """ block is one message.
        t.type("\"\"\"\rSay only\rthe word yes.\r")
        t.enter("\"\"\"")
        t.enter("/history")
        t.expect("user: Say only\r\nthe word yes.")   // the terminal turns \n into \r\n

        // A bad command or file keeps the REPL going.
        t.enter("/image /no/such/file.png")
        t.expect("error:")
        t.enter("/frobnicate")
        t.expect("unknown command /frobnicate")
        t.enter("/stats")
        t.expect("time to first token")
        XCTAssertEqual(t.finish(), 0)

        // The history file keeps entries for the next REPL.
        let history = try String(contentsOfFile: t.home + "/history", encoding: .utf8)
        XCTAssertTrue(history.contains("What is the capital of France?"), history)
    }

    /// Ctrl-C at the prompt drops the line; Ctrl-C mid-reply stops the reply, keeps what streamed,
    /// and leaves readline working (completion, next message, /quit).
    func testCtrlCClearsTheLineAndStopsAReply() throws {
        let t = try Terminal(home: try home(), arguments: ["--model", "smollm2"])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }

        t.type("never sent")
        guard t.expect("never sent") else { return }
        t.type("\u{03}")
        guard t.expect(">>> ", count: 2) else { return }
        t.enter("/stats")
        XCTAssertTrue(t.text(after: "/stats").contains("no reply yet"), t.output)
        XCTAssertFalse(t.output.contains("unknown command"), t.output)

        t.enter("/set max_tokens 400")
        t.enter("/set temperature 0")
        let prompt = "Tell me a very long story about a brave knight and a clever dragon."
        let before = t.prompts
        t.type(prompt + "\r")
        guard t.expect(prompt + "\r\n") else { return }
        // Some reply has streamed: stop it.
        let deadline = Date().addingTimeInterval(60)
        while t.text(after: prompt + "\r\n").count < 40 && t.prompts == before && Date() < deadline { t.pump(0.05) }
        let streamed = t.text(after: prompt + "\r\n")
        XCTAssertGreaterThanOrEqual(streamed.count, 40, "no streamed reply: \(t.output)")
        XCTAssertEqual(t.prompts, before, "the reply ended before Ctrl-C: \(t.output)")
        t.type("\u{03}")
        guard t.expect(">>> ", count: before + 1, timeout: 15) else { return }

        // Readline still completes (raw mode restored) and the reply was cut short.
        t.enter("/sta\t")
        let stats = t.text(after: "/stats")
        XCTAssertTrue(stats.contains("time to first token"), t.output)
        let generated = stats.range(of: #"decode [0-9.]+ tok/s \(([0-9]+) tokens\)"#, options: .regularExpression)
            .flatMap { Int(stats[$0].split(separator: "(").last!.split(separator: " ").first!) }
        XCTAssertNotNil(generated, stats)
        XCTAssertLessThan(generated ?? 400, 100, "Ctrl-C did not stop the reply: \(stats)")

        // The partial reply is in the chat, and the next message gets a reply.
        t.enter("/history")
        XCTAssertTrue(t.text(after: "/history").contains("assistant: " + streamed.prefix(20)), t.output)
        t.enter("Say only the word yes.")
        XCTAssertFalse(t.text(after: "Say only the word yes.\r\n").replacingOccurrences(of: ">>> ", with: "")
            .trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, t.output)
        t.type("/quit\r")
        XCTAssertEqual(t.waitForExit(), 0, t.output)
    }

    /// `vlmsh` alone (what `make run` opens) loads the demo model from the store, which answers
    /// about an attached image.
    func testBareREPLOpensTheDemoModel() throws {
        let dir = try home()
        try CLITests.installDemo(home: dir)
        let t = try Terminal(home: dir)
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        XCTAssertTrue(t.output.contains("loaded \(dir)/models/vlmsh-demo (it sees images"), t.output)
        t.enter("/image " + CLITests.root.appendingPathComponent("sessions/data/foreign/images/foreign-020.png").path)
        t.enter("/set temperature 0")
        t.enter("What colour is the circle?")
        XCTAssertTrue(t.text(after: "What colour is the circle?").contains("\nRed.\n"), t.output)
    }

    /// `/image` on a LLaVA model: Tab completes the path, the message's image is encoded (with a
    /// progress line on the terminal) and a reply streams; a missing file is one error line.
    func testImageOnALlavaModel() throws {
        let model = LlavaCLITests.llava.appendingPathComponent("clip-llama").path
        let images = LlavaCLITests.llava.appendingPathComponent("images").path
        let t = try Terminal(home: try home(withDefaultModel: false), arguments: ["--model", model])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        XCTAssertTrue(t.output.contains("loaded \(model)"), t.output)

        t.enter("/image \(images)/squ\t")   // completes to square.png
        XCTAssertTrue(t.output.contains("attached \(images)/square.png (40×40)"), t.output)
        t.enter("/set temperature 0")
        t.enter("/set max_tokens 8")
        t.enter("What is in the picture?")
        let reply = t.text(after: "What is in the picture?\r\n")
        XCTAssertTrue(reply.contains("encoding image |████████████████████| 1/1"), t.output)
        let streamed = reply.components(separatedBy: "\n").dropFirst().joined(separator: "\n")
            .replacingOccurrences(of: ">>> ", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertFalse(streamed.isEmpty, "no streamed reply: \(t.output)")
        t.enter("/stats")
        XCTAssertTrue(t.text(after: "/stats").contains("time to first token"), t.output)

        // The same picture again is cached: no second encode.
        t.enter("/image \(images)/square.png")
        t.enter("And now?")
        XCTAssertFalse(t.text(after: "And now?\r\n").contains("encoding image"), t.output)

        t.enter("/image /no/such/picture.png")
        let error = t.text(after: "/image /no/such/picture.png\r\n").replacingOccurrences(of: ">>> ", with: "")
        XCTAssertEqual(error.split(separator: "\n"), ["error: /no/such/picture.png: cannot read file"], t.output)
        t.enter("/show")
        XCTAssertTrue(t.text(after: "/show").contains("16 positions per image"), t.output)
        t.type("/quit\r")
        XCTAssertEqual(t.waitForExit(), 0, t.output)
    }

    /// A path with a space, quoted, reaches /image whole; an unterminated quote is one error line
    /// and the REPL goes on.
    func testQuotedImagePathWithASpace() throws {
        let model = LlavaCLITests.llava.appendingPathComponent("clip-llama").path
        let folder = try scratchDirectory("vlmsh-repl") + "/my pics"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: LlavaCLITests.llava.appendingPathComponent("images/square.png").path,
                                         toPath: folder + "/square 1.png")
        let t = try Terminal(home: try home(withDefaultModel: false), arguments: ["--model", model])
        defer { t.stop() }
        guard t.expect(">>> ", timeout: 60) else { return }
        t.enter("/image \"\(folder)/square 1.png\"")
        XCTAssertTrue(t.output.contains("attached \(folder)/square 1.png (40×40)"), t.output)
        t.enter("/image '\(folder)/square 1.png' \(folder.replacingOccurrences(of: " ", with: "\\ "))/square\\ 1.png")
        XCTAssertEqual(t.occurrences("attached \(folder)/square 1.png (40×40)"), 3, t.output)
        t.enter("/image \"\(folder)/square 1.png")
        XCTAssertTrue(t.text(after: "square 1.png\r\n").contains("error: unterminated \" quote"), t.output)
        t.enter("/frobnicate")
        t.expect("unknown command /frobnicate")
        t.enter("/show")
        XCTAssertTrue(t.text(after: "/show").contains("16 positions per image"), t.output)
        t.type("/quit\r")
        XCTAssertEqual(t.waitForExit(), 0, t.output)
    }

    // MARK: - Progress bar and sparkline

    func testProgressBarRendering() {
        let bar = ProgressBar(label: "fine-tuning", total: 8, enabled: false)
        XCTAssertTrue(bar.render().hasPrefix("fine-tuning |                    | 0/8 0."), bar.render())
        bar.update(step: 3, trailing: "loss 1.23 lr 1e-4 12 tok/s")
        XCTAssertTrue(bar.render().hasPrefix("fine-tuning |███████▌            | 3/8 "), bar.render())
        XCTAssertTrue(bar.render().hasSuffix("s loss 1.23 lr 1e-4 12 tok/s"), bar.render())
        bar.update(fraction: 0.5)
        XCTAssertTrue(bar.render().contains("|██████████          | 50% "), bar.render())
        XCTAssertNotNil(bar.estimatedRemaining)

        let spinner = ProgressBar(label: "loading", enabled: false)
        XCTAssertTrue(spinner.render().hasPrefix("loading 0."), spinner.render())
        spinner.finish()
        XCTAssertTrue(spinner.render().hasSuffix("s done"), spinner.render())

        XCTAssertEqual(ProgressBar.bar(0, width: 4), "    ")
        XCTAssertEqual(ProgressBar.bar(1, width: 4), "████")
        XCTAssertEqual(ProgressBar.bar(0.5 + 1.0 / 32, width: 4), "██▏ ")
        XCTAssertEqual(ProgressBar.duration(0.42), "0.4s")
        XCTAssertEqual(ProgressBar.duration(42), "0:42")
        XCTAssertEqual(ProgressBar.duration(3725), "1:02:05")
    }

    func testProgressBarDrawsInPlaceThrottledAndOnlyWhenEnabled() throws {
        func drawn(enabled: Bool, _ body: (ProgressBar) -> Void) -> String {
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(pipe(&fds), 0)
            let bar = ProgressBar(label: "work", total: 1000, enabled: enabled, fileDescriptor: fds[1], interval: 0.1)
            body(bar)
            close(fds[1])
            var out: [UInt8] = [], buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = read(fds[0], &buffer, buffer.count)
                if n <= 0 { break }
                out += buffer[0..<n]
            }
            close(fds[0])
            return String(decoding: out, as: UTF8.self)
        }
        // A thousand quick updates draw a handful of times, then the final state and one newline.
        let out = drawn(enabled: true) { bar in
            for i in 1...1000 { bar.update(step: i) }
            bar.finish()
            bar.update(step: 1)   // after finish: nothing
        }
        let frames = out.components(separatedBy: "\r").filter { !$0.isEmpty }
        XCTAssertLessThan(frames.count, 10, out)
        XCTAssertTrue(frames.last!.hasPrefix("work |████████████████████| 1000/1000 "), out)
        XCTAssertTrue(out.hasSuffix("\u{1b}[K\n"), out)
        XCTAssertEqual(out.filter { $0 == "\n" }.count, 1, out)

        XCTAssertEqual(drawn(enabled: false) { bar in bar.update(step: 5); bar.animate(); bar.finish() }, "")

        // Animated: the spinner turns while the caller blocks.
        let animated = drawn(enabled: true) { bar in bar.animate(); usleep(500_000); bar.finish() }
        XCTAssertGreaterThanOrEqual(animated.components(separatedBy: "\r").count, 4, animated)
        XCTAssertTrue(animated.contains("work ⠙ |"), animated)
    }

    func testSparkline() {
        XCTAssertEqual(sparkline([1, 2, 3, 4, 5, 6, 7, 8]), "▁▂▃▄▅▆▇█")
        XCTAssertEqual(sparkline([3.2, 2.1, 1.0]), "█▅▁")
        XCTAssertEqual(sparkline([2, 2]), "▄▄")
        XCTAssertEqual(sparkline([1, .nan, 2]), "▁ █")
        XCTAssertEqual(sparkline([]), "")
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

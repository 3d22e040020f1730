import Foundation
import VLMHome
import VLMStore
import XCTest

final class StoreTests: XCTestCase {
    func testMigratesEmptyFileOnceAndRecordsVersion() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))

        let first = try Store(path: path)
        XCTAssertEqual(first.appliedMigrations, ["v1"])
        XCTAssertEqual(try first.schemaVersion(), 1)
        XCTAssertEqual(try first.migrations(), ["v1"])
        let id = try first.createSession(name: "kept")

        let second = try Store(path: path)
        XCTAssertEqual(second.appliedMigrations, [], "reopening must not migrate again")
        XCTAssertEqual(try second.schemaVersion(), 1)
        XCTAssertEqual(try second.session(named: "kept")?.id, id)
        XCTAssertEqual(try second.integrityCheck(), "ok")
    }

    func testWALModeAndDefaultPath() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)
        try store.createSession()
        XCTAssertTrue(FileManager.default.fileExists(atPath: path + "-wal"), "pool runs in WAL mode")

        XCTAssertEqual(Store.defaultPath(environment: ["VLMSH_HOME": "/data/v"]), "/data/v/vlmsh.sqlite")
        XCTAssertTrue(Store.defaultPath(environment: [:]).hasSuffix("/.vlmsh/vlmsh.sqlite"))
    }

    /// One resolver for the CLI, the store and the tests: VLMSH_HOME wins, else $HOME/.vlmsh.
    func testHomeFollowsVLMSHHomeThenHome() {
        XCTAssertEqual(VLMHome.path(environment: ["VLMSH_HOME": "/data/v", "HOME": "/u"]), "/data/v")
        XCTAssertEqual(VLMHome.path(environment: ["VLMSH_HOME": "", "HOME": "/u"]), "/u/.vlmsh")
        XCTAssertEqual(VLMHome.path(environment: ["HOME": "/u"]), "/u/.vlmsh")
        XCTAssertEqual(VLMHome.models(environment: ["VLMSH_HOME": "/data/v"]), "/data/v/models")
        XCTAssertEqual(Store.defaultPath(environment: ["HOME": "/u"]), "/u/.vlmsh/vlmsh.sqlite")
    }

    func testSimultaneousOpensOfAFreshFile() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let errors = ErrorBox()
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            do { _ = try Store(path: path) } catch { errors.add(error) }
        }
        XCTAssertEqual(errors.all, [])
        XCTAssertEqual(try Store(path: path).migrations(), ["v1"])
    }

    func testSessionsTurnsAndImages() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)

        let model = try store.upsertModel(path: "/m/a.gguf", fingerprint: "fp1", architecture: "llava")
        XCTAssertEqual(try store.upsertModel(path: "/moved/a.gguf", fingerprint: "fp1", architecture: "llava"), model)
        XCTAssertEqual(try store.model(id: model)?.path, "/moved/a.gguf")

        let s = try store.createSession(name: "cats", model: model, params: #"{ "temperature" : 0.7 }"#, template: "chatml")
        let image = try store.addImage(sha256: fakeSHA(1), path: "/img/cat.png", width: 640, height: 480, bytes: 1234)
        XCTAssertEqual(try store.addImage(sha256: fakeSHA(1).uppercased(), path: "/elsewhere/cat.png", width: 640, height: 480, bytes: 1234), image)
        let other = try store.addImage(sha256: fakeSHA(2), path: "/img/dog.png", width: 32, height: 16, bytes: 99)

        try store.appendTurn(session: s, role: .system, text: "Be brief.")
        let t1 = try store.appendTurn(session: s, role: .user, text: "What?", images: [other, image], promptTokens: 600)
        try store.appendTurn(session: s, role: .assistant, text: "A cat and a dog.", promptTokens: 600, completionTokens: 6,
                             timings: TurnTimings(ttft: 0.5, prefillTokensPerSecond: 1200, decodeTokensPerSecond: 20),
                             params: #"{"top_p": 0.9}"#, seed: UInt64.max)

        let session = try XCTUnwrap(store.session(id: s))
        XCTAssertEqual(session.name, "cats")
        XCTAssertEqual(session.model?.fingerprint, "fp1")
        XCTAssertEqual(session.params, #"{"temperature":0.7}"#, "JSON is stored minified")
        XCTAssertEqual(session.template, "chatml")

        let turns = try store.turns(session: s)
        XCTAssertEqual(turns.map(\.index), [0, 1, 2])
        XCTAssertEqual(turns.map(\.role), [.system, .user, .assistant])
        XCTAssertEqual(turns[1].id, t1)
        XCTAssertEqual(turns[1].images.map(\.path), ["/img/dog.png", "/img/cat.png"], "attachment order kept")
        XCTAssertEqual(turns[1].images[1].width, 640)
        XCTAssertEqual(turns[2].timings, TurnTimings(ttft: 0.5, prefillTokensPerSecond: 1200, decodeTokensPerSecond: 20))
        XCTAssertEqual(turns[2].params, #"{"top_p":0.9}"#)
        XCTAssertEqual(turns[2].seed, UInt64.max)
        XCTAssertEqual(turns[2].completionTokens, 6)
        XCTAssertNil(turns[0].seed)

        let replay = try store.createSession(model: model, parent: s)
        XCTAssertEqual(try store.session(id: replay)?.parent, s)
        let summaries = try store.sessions()
        XCTAssertEqual(summaries.map(\.id), [s, replay])
        XCTAssertEqual(summaries.map(\.turnCount), [3, 0])
        XCTAssertEqual(summaries[0].modelPath, "/moved/a.gguf")
        XCTAssertNil(summaries[1].name)
    }

    func testErrorsNameTheDatabaseFile() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)
        let a = try store.createSession(name: "a")
        let b = try store.createSession(name: "b")

        func expect(_ kind: StoreError.Kind, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try body(), file: file, line: line) { error in
                guard let error = error as? StoreError else { return XCTFail("\(error)", file: file, line: line) }
                XCTAssertEqual(error.kind, kind, "\(error)", file: file, line: line)
                XCTAssertTrue(error.description.hasPrefix(path + ": "), error.description, file: file, line: line)
                XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
            }
        }
        expect(.nameTaken) { try store.createSession(name: "a") }
        expect(.nameTaken) { try store.renameSession(b, to: "a") }
        expect(.notFound) { try store.appendTurn(session: 999, role: .user, text: "x") }
        expect(.notFound) { try store.appendTurn(session: a, role: .user, text: "x", images: [42]) }
        expect(.invalidArgument) { try store.createSession(params: "{nope") }
        expect(.invalidArgument) { try store.addImage(sha256: "abc", path: "/x", width: 1, height: 1, bytes: 1) }
        expect(.notFound) { try store.updateRunStatus(77, .failed) }
        XCTAssertEqual(try store.turns(session: a), [], "failed appends leave nothing behind")

        try store.renameSession(b, to: "c")
        XCTAssertEqual(try store.session(named: "c")?.id, b)
        try store.renameSession(b, to: nil)
        XCTAssertNil(try store.session(named: "c"))

        // A file that is not SQLite fails to open with a one-line message naming it.
        let bogus = (path as NSString).deletingLastPathComponent + "/bogus.sqlite"
        try Data(repeating: 0x41, count: 4096).write(to: URL(fileURLWithPath: bogus))
        XCTAssertThrowsError(try Store(path: bogus)) { error in
            XCTAssertTrue("\(error)".hasPrefix(bogus + ": "), "\(error)")
        }
    }

    func testRunsMetricsCheckpointsEvals() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let store = try Store(path: path)
        let s = try store.createSession()
        let run = try store.startRun(session: s, args: #"{"lr": 0.0001, "epochs": 2}"#, outDir: "/out/r1")
        let other = try store.startRun()

        XCTAssertEqual(try store.run(id: run)?.status, .running)
        XCTAssertNil(try store.run(id: run)?.finished)
        for step in 1...3 {
            try store.addMetric(run: run, step: step, loss: 3.0 / Double(step), lr: 1e-4, gradNorm: 1.5, tokensPerSecond: 250)
        }
        try store.addMetrics([MetricRecord(run: run, step: 3, evalLoss: 0.9)])
        let metrics = try store.metrics(run: run)
        XCTAssertEqual(metrics.map(\.step), [1, 2, 3, 3])
        XCTAssertEqual(metrics[1].loss, 1.5)
        XCTAssertEqual(metrics[3].evalLoss, 0.9)
        XCTAssertNil(metrics[3].loss)

        let c1 = try store.addCheckpoint(run: run, step: 2, path: "/out/r1/step-2", kind: .lora, sha256: fakeSHA(9))
        try store.addCheckpoint(run: other, step: 1, path: "/out/r2/proj", kind: .projector)
        XCTAssertEqual(try store.checkpoints(run: run).map(\.id), [c1])
        XCTAssertEqual(try store.checkpoints().map(\.kind), [.lora, .projector])

        try store.updateRunStatus(run, .completed)
        try store.updateRunStatus(other, .stopped)
        let done = try XCTUnwrap(store.run(id: run))
        XCTAssertEqual(done.status, .completed)
        XCTAssertNotNil(done.finished)
        XCTAssertEqual(done.args, #"{"lr":0.0001,"epochs":2}"#)
        XCTAssertEqual(done.outDir, "/out/r1")
        XCTAssertEqual(try store.runs(session: s).map(\.id), [run])
        XCTAssertEqual(try store.runs(status: .stopped).map(\.id), [other])
        XCTAssertEqual(try store.runs().count, 2)

        try store.addEval(modelPath: "/m/a.gguf", dataset: "vqa", metric: "accuracy", value: 0.5)
        let e = try store.addEval(modelPath: "/m/a.gguf", checkpoint: c1, dataset: "vqa", metric: "accuracy", value: 0.6,
                                  details: #"{"n": 100}"#)
        XCTAssertEqual(try store.evals().count, 2)
        XCTAssertEqual(try store.evals(checkpoint: c1).map(\.id), [e])
        XCTAssertEqual(try store.evals(modelPath: "/m/a.gguf", dataset: "vqa").map(\.value), [0.5, 0.6])
        XCTAssertEqual(try store.evals(dataset: "other"), [])
        XCTAssertEqual(try store.evals(checkpoint: c1).first?.details, #"{"n":100}"#)
    }

    /// WAL readers see a commit as soon as the writer's call returns, across connections.
    func testTurnVisibleThroughASecondStoreImmediately() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let writer = try Store(path: path)
        let reader = try Store(path: path)
        let s = try writer.createSession(name: "live")
        XCTAssertEqual(try reader.turns(session: s), [])
        for i in 0..<20 {
            let image = try writer.addImage(sha256: fakeSHA(i), path: "/img/\(i).png", width: i, height: i, bytes: 1)
            let id = try writer.appendTurn(session: s, role: .user, text: "turn \(i)", images: [image])
            let seen = try reader.turns(session: s)
            XCTAssertEqual(seen.count, i + 1)
            XCTAssertEqual(seen.last?.id, id)
            XCTAssertEqual(seen.last?.images.first?.path, "/img/\(i).png")
        }
        XCTAssertEqual(try reader.sessions().first?.turnCount, 20)
    }

    /// Two pools on one file writing at once: the busy timeout queues them, nothing fails.
    func testConcurrentWritersOnTwoStores() throws {
        let path = try temporaryDatabasePath()
        defer { removeDatabaseFolder(path) }
        let stores = [try Store(path: path), try Store(path: path)]
        let shared = try stores[0].createSession(name: "shared")
        let errors = ErrorBox()
        let perThread = 150
        DispatchQueue.concurrentPerform(iterations: 4) { worker in
            let store = stores[worker % 2]
            do {
                let own = try store.createSession(name: "worker-\(worker)")
                let run = try store.startRun(session: own)
                for i in 0..<perThread {
                    let image = try store.addImage(sha256: fakeSHA(i % 10), path: "/img/\(i % 10).png", width: 1, height: 1, bytes: 1)
                    try store.appendTurn(session: shared, role: .user, text: "w\(worker) #\(i)", images: [image])
                    try store.appendTurn(session: own, role: .assistant, text: "#\(i)")
                    try store.addMetric(run: run, step: i, loss: 1)
                    if i % 25 == 0 { _ = try store.turns(session: shared) }
                }
                try store.updateRunStatus(run, .completed)
            } catch {
                errors.add(error)
            }
        }
        XCTAssertEqual(errors.all, [])

        let check = try Store(path: path)
        let turns = try check.turns(session: shared)
        XCTAssertEqual(turns.count, 4 * perThread)
        XCTAssertEqual(turns.map(\.index), Array(0..<(4 * perThread)), "indexes are dense and unique")
        XCTAssertTrue(turns.allSatisfy { $0.images.count == 1 })
        for worker in 0..<4 {
            let own = try XCTUnwrap(check.session(named: "worker-\(worker)"))
            XCTAssertEqual(try check.turns(session: own.id).count, perThread)
            XCTAssertEqual(try check.metrics(run: check.runs(session: own.id)[0].id).count, perThread)
        }
        XCTAssertEqual(try check.runs(status: .completed).count, 4)
        XCTAssertEqual(try check.integrityCheck(), "ok")
    }
}

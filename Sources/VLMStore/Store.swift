import Foundation
import GRDB
import VLMHome

/// The vlmsh session store: one SQLite file in WAL mode shared by every vlmsh process.
///
/// Every method is synchronous and thread-safe. Writes run in IMMEDIATE transactions (GRDB's
/// default for a pool), so concurrent writers queue on the busy timeout instead of failing.
public final class Store: Sendable {
    /// The database file.
    public let path: String
    /// Migrations applied by this open (empty when the file was already current).
    public let appliedMigrations: [String]
    let pool: any DatabaseWriter

    /// How a command uses the store: listings and exports only read.
    public enum Access: Sendable { case readWrite, readOnly }

    /// `$VLMSH_HOME/vlmsh.sqlite`, `~/.vlmsh/vlmsh.sqlite` when VLMSH_HOME is unset.
    public static func defaultPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        (VLMHome.path(environment: environment) as NSString).appendingPathComponent("vlmsh.sqlite")
    }

    /// Opens (creating folders and file as needed) and migrates the database at `path`.
    /// - Parameter busyTimeout: how long a write waits for another process's transaction.
    /// - Parameter access: `.readOnly` still opens a current file when the usual open fails, e.g.
    ///   on a full disk, where SQLite cannot create the `-shm` and `-wal` files WAL readers share.
    public init(path: String, busyTimeout: TimeInterval = 5, access: Access = .readWrite) throws {
        let path = (path as NSString).expandingTildeInPath
        self.path = path
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            do {
                try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            } catch {
                throw StoreError(.open, path: path, "cannot create folder \(folder): \(error.localizedDescription)")
            }
        }
        let opened: (writer: any DatabaseWriter, migrations: [String])
        do {
            let pool = try Store.openPool(path: path, busyTimeout: busyTimeout)
            opened = (pool, try Store.migrate(pool, path: path))
        } catch let error as StoreError {
            guard access == .readOnly, let reader = Store.readerWithoutSharedFiles(path: path, busyTimeout: busyTimeout) else { throw error }
            opened = (reader, [])
        }
        pool = opened.writer
        appliedMigrations = opened.migrations
    }

    /// The shared WAL pool every vlmsh process uses.
    private static func openPool(path: String, busyTimeout: TimeInterval) throws -> DatabasePool {
        var config = Configuration()
        config.busyMode = .timeout(busyTimeout)
        config.label = "vlmsh.store"
        // Switching a new file to WAL takes a lock the busy handler does not wait for, so
        // processes opening the same fresh file at once retry here within the busy timeout.
        let deadline = Date().addingTimeInterval(busyTimeout)
        while true {
            do {
                return try DatabasePool(path: path, configuration: config)
            } catch let error as DatabaseError where error.resultCode == .SQLITE_BUSY && Date() < deadline {
                usleep(20_000)
            } catch {
                throw StoreError(.open, path: path, "cannot open database: \(Store.message(error))")
            }
        }
    }

    /// One connection in exclusive locking mode, which keeps the WAL index in memory and so needs
    /// no `-shm` file: a reader for an existing, current file when the disk has no room for one.
    /// Other processes wait (busy timeout) while it reads. Nil when that does not work either.
    private static func readerWithoutSharedFiles(path: String, busyTimeout: TimeInterval) -> DatabaseQueue? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        var config = Configuration()
        config.busyMode = .timeout(busyTimeout)
        config.label = "vlmsh.store.reader"
        config.prepareDatabase { db in try db.execute(sql: "PRAGMA locking_mode = EXCLUSIVE") }
        guard let queue = try? DatabaseQueue(path: path, configuration: config),
              let current = try? queue.read({ db in
                  try Schema.migrator.hasCompletedMigrations(db) && !Schema.migrator.hasBeenSuperseded(db)
              }), current else { return nil }
        return queue
    }

    /// Runs pending migrations. Two processes opening a fresh file at once can both see v1 as
    /// pending; the loser's CREATE TABLE fails, and it then finds the schema complete.
    private static func migrate(_ pool: DatabasePool, path: String) throws -> [String] {
        let migrator = Schema.migrator
        var lastError: (any Error)?
        for _ in 0..<5 {
            do {
                let before = try pool.read { db in
                    if try migrator.hasBeenSuperseded(db) {
                        throw StoreError(.migration, path: path, "database was written by a newer vlmsh (schema version \(try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0), this build knows \(Schema.version))")
                    }
                    return try migrator.appliedIdentifiers(db)
                }
                // A current file is not touched: the barrier write would wait for every reader.
                if Set(migrator.migrations).isSubset(of: before) { return [] }
                try migrator.migrate(pool)
                let after = try pool.read { try migrator.appliedMigrations($0) }
                return after.filter { !before.contains($0) }
            } catch let error as StoreError {
                throw error
            } catch {
                if (try? pool.read({ try migrator.hasCompletedMigrations($0) })) == true { return [] }
                lastError = error
            }
        }
        throw StoreError(.migration, path: path, "migration failed: \(message(lastError!))")
    }

    // MARK: - Helpers

    static func message(_ error: any Error) -> String {
        if let error = error as? DatabaseError { return error.message ?? "\(error.resultCode)" }
        return "\(error)"
    }

    /// Maps any failure to a StoreError naming the file and what was being done.
    func failure(_ error: any Error, _ what: String) -> StoreError {
        if let error = error as? StoreError { return error }
        if let error = error as? DatabaseError {
            let corrupt = error.resultCode == .SQLITE_CORRUPT || error.resultCode == .SQLITE_NOTADB
            return StoreError(corrupt ? .corrupt : .sqlite, path: path, "\(what): \(Store.message(error))")
        }
        return StoreError(.sqlite, path: path, "\(what): \(error)")
    }

    func read<T>(_ what: @autoclosure () -> String, _ body: (Database) throws -> T) throws -> T {
        do { return try pool.read(body) } catch { throw failure(error, what()) }
    }

    /// One IMMEDIATE transaction: all of `body` commits, or none of it.
    func write<T>(_ what: @autoclosure () -> String, _ body: (Database) throws -> T) throws -> T {
        do { return try pool.write(body) } catch { throw failure(error, what()) }
    }

    func require(_ db: Database, _ table: String, _ id: Int64, _ label: String) throws {
        // `table` is always a literal from this file, never user input.
        if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM \(table) WHERE id = ?)", arguments: [id]) != true {
            throw StoreError(.notFound, path: path, "no \(label) \(id)")
        }
    }

    /// Validates and minifies JSON text, so stored JSON is always one line (safe for JSONL).
    func minified(_ db: Database, _ json: String?, _ field: String) throws -> String? {
        guard let json else { return nil }
        guard let out = try String.fetchOne(db, sql: "SELECT CASE WHEN json_valid(?1) THEN json(?1) END", arguments: [json]) else {
            throw StoreError(.invalidArgument, path: path, "\(field) is not valid JSON")
        }
        return out
    }

    // MARK: - Maintenance

    /// `PRAGMA integrity_check`: "ok" for a healthy file, otherwise SQLite's findings, one per line.
    public func integrityCheck() throws -> String {
        try read("integrity check") { db in
            try String.fetchAll(db, sql: "PRAGMA integrity_check").joined(separator: "\n")
        }
    }

    /// The schema version recorded in the file (`PRAGMA user_version`).
    public func schemaVersion() throws -> Int {
        try read("read schema version") { try Int.fetchOne($0, sql: "PRAGMA user_version") ?? 0 }
    }

    /// Identifiers of every migration recorded in the file, oldest first.
    public func migrations() throws -> [String] {
        try read("read migrations") { try Schema.migrator.appliedMigrations($0) }
    }

    // MARK: - models

    /// Records a model by content fingerprint; a known fingerprint gets its path and
    /// architecture refreshed (the file moved) and keeps its id.
    @discardableResult
    public func upsertModel(path modelPath: String, fingerprint: String, architecture: String) throws -> Int64 {
        try write("record model \(modelPath)") { db in
            let now = Date()
            try db.execute(sql: """
                INSERT INTO models (path, fingerprint, architecture, created, last_seen) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (fingerprint) DO UPDATE SET
                    path = excluded.path, architecture = excluded.architecture, last_seen = excluded.last_seen
                """, arguments: [modelPath, fingerprint, architecture, now, now])
            return try Int64.fetchOne(db, sql: "SELECT id FROM models WHERE fingerprint = ?", arguments: [fingerprint])!
        }
    }

    public func model(id: Int64) throws -> ModelRecord? {
        try read("read model \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM models WHERE id = ?", arguments: [id]).map { ModelRecord(row: $0) }
        }
    }

    public func model(fingerprint: String) throws -> ModelRecord? {
        try read("read model") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM models WHERE fingerprint = ?", arguments: [fingerprint]).map { ModelRecord(row: $0) }
        }
    }

    public func models() throws -> [ModelRecord] {
        try read("list models") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM models ORDER BY id").map { ModelRecord(row: $0) }
        }
    }

    // MARK: - sessions

    /// - Parameters:
    ///   - name: unique when set; nil sessions are addressed by id.
    ///   - model: a model id from `upsertModel`.
    ///   - params: session parameters as JSON text.
    ///   - parent: the session this one replays.
    @discardableResult
    public func createSession(name: String? = nil, model: Int64? = nil, params: String = "{}",
                              template: String? = nil, parent: Int64? = nil) throws -> Int64 {
        try write("create session") { db in
            if let model { try require(db, "models", model, "model") }
            if let parent { try require(db, "sessions", parent, "session") }
            let params = try minified(db, params, "session params")
            do {
                try db.execute(sql: """
                    INSERT INTO sessions (name, created, model_id, params, template, parent_id) VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [name, Date(), model, params, template, parent])
            } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
                throw StoreError(.nameTaken, path: path, "a session named '\(name ?? "")' already exists")
            }
            return db.lastInsertedRowID
        }
    }

    /// Renames a session; nil removes its name. With `replacing`, a session holding the name
    /// gives it up in the same transaction (it keeps its turns and its id).
    public func renameSession(_ id: Int64, to name: String?, replacing: Bool = false) throws {
        try write("rename session \(id)") { db in
            try require(db, "sessions", id, "session")
            if replacing, let name {
                try db.execute(sql: "UPDATE sessions SET name = NULL WHERE name = ? AND id != ?", arguments: [name, id])
            }
            do {
                try db.execute(sql: "UPDATE sessions SET name = ? WHERE id = ?", arguments: [name, id])
            } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE {
                throw StoreError(.nameTaken, path: path, "a session named '\(name ?? "")' already exists")
            }
        }
    }

    /// All sessions, oldest first, with their turn counts.
    public func sessions() throws -> [SessionSummary] {
        try read("list sessions") { db in
            try Row.fetchAll(db, sql: """
                SELECT s.id, s.name, s.created, m.path AS model_path,
                       (SELECT COUNT(*) FROM turns t WHERE t.session_id = s.id) AS turn_count
                FROM sessions s LEFT JOIN models m ON m.id = s.model_id
                ORDER BY s.id
                """).map { row in
                SessionSummary(id: row["id"], name: row["name"], created: row["created"],
                               modelPath: row["model_path"], turnCount: row["turn_count"])
            }
        }
    }

    public func session(id: Int64) throws -> SessionRecord? {
        try read("read session \(id)") { try fetchSession($0, "s.id = ?", [id]) }
    }

    public func session(named name: String) throws -> SessionRecord? {
        try read("read session '\(name)'") { try fetchSession($0, "s.name = ?", [name]) }
    }

    func fetchSession(_ db: Database, _ condition: String, _ arguments: StatementArguments) throws -> SessionRecord? {
        let sql = """
            SELECT s.*, m.id AS m_id, m.path AS m_path, m.fingerprint AS m_fingerprint,
                   m.architecture AS m_architecture, m.created AS m_created, m.last_seen AS m_last_seen
            FROM sessions s LEFT JOIN models m ON m.id = s.model_id
            WHERE \(condition)
            """
        return try Row.fetchOne(db, sql: sql, arguments: arguments).map { row in
            let modelID: Int64? = row["m_id"]
            return SessionRecord(
                id: row["id"], name: row["name"], created: row["created"],
                model: modelID.map { _ in ModelRecord(row: row, prefix: "m_") },
                params: row["params"], template: row["template"], parent: row["parent_id"])
        }
    }

    // MARK: - images

    /// Records an image by content hash; an already-known hash returns the existing id and
    /// keeps the first path seen.
    @discardableResult
    public func addImage(sha256: String, path imagePath: String, width: Int, height: Int, bytes: Int64) throws -> Int64 {
        let sha = sha256.lowercased()
        guard sha.utf8.count == 64, sha.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw StoreError(.invalidArgument, path: path, "image hash '\(sha256)' is not a SHA-256 hex digest")
        }
        return try write("record image \(imagePath)") { db in
            try db.execute(sql: """
                INSERT INTO images (sha256, path, width, height, bytes, created) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (sha256) DO NOTHING
                """, arguments: [sha, imagePath, width, height, bytes, Date()])
            return try Int64.fetchOne(db, sql: "SELECT id FROM images WHERE sha256 = ?", arguments: [sha])!
        }
    }

    public func image(sha256: String) throws -> ImageRecord? {
        try read("read image") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM images WHERE sha256 = ?", arguments: [sha256.lowercased()])
                .map { ImageRecord(row: $0) }
        }
    }

    // MARK: - turns

    /// Appends a turn at the end of a session, with its image links, in one transaction.
    /// - Parameters:
    ///   - images: image ids from `addImage`, in attachment order.
    ///   - params: generation parameters as JSON text.
    @discardableResult
    public func appendTurn(session: Int64, role: Role, text: String, images: [Int64] = [],
                           promptTokens: Int? = nil, completionTokens: Int? = nil,
                           timings: TurnTimings = TurnTimings(), params: String? = nil,
                           seed: UInt64? = nil) throws -> Int64 {
        try write("append turn to session \(session)") { db in
            try require(db, "sessions", session, "session")
            let params = try minified(db, params, "turn params")
            // Safe without a race: the IMMEDIATE transaction holds the write lock.
            let index = try Int.fetchOne(db, sql: "SELECT COALESCE(MAX(idx) + 1, 0) FROM turns WHERE session_id = ?",
                                         arguments: [session]) ?? 0
            try db.execute(sql: """
                INSERT INTO turns (session_id, idx, role, text, prompt_tokens, completion_tokens,
                                   ttft, prefill_tps, decode_tps, params, seed, created)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [session, index, role.rawValue, text, promptTokens, completionTokens,
                                 timings.ttft, timings.prefillTokensPerSecond, timings.decodeTokensPerSecond,
                                 params, seed.map { Int64(bitPattern: $0) }, Date()])
            let turn = db.lastInsertedRowID
            for (position, image) in images.enumerated() {
                try require(db, "images", image, "image")
                try db.execute(sql: "INSERT INTO turn_images (turn_id, image_id, position) VALUES (?, ?, ?)",
                               arguments: [turn, image, position])
            }
            return turn
        }
    }

    /// A session's turns in order, each with its images.
    public func turns(session: Int64) throws -> [TurnRecord] {
        try read("read turns of session \(session)") { try fetchTurns($0, session: session) }
    }

    func fetchTurns(_ db: Database, session: Int64) throws -> [TurnRecord] {
        var images: [Int64: [ImageRecord]] = [:]
        for row in try Row.fetchAll(db, sql: """
            SELECT ti.turn_id, i.* FROM turn_images ti
            JOIN turns t ON t.id = ti.turn_id JOIN images i ON i.id = ti.image_id
            WHERE t.session_id = ? ORDER BY ti.turn_id, ti.position
            """, arguments: [session]) {
            images[row["turn_id"], default: []].append(ImageRecord(row: row))
        }
        return try Row.fetchAll(db, sql: "SELECT * FROM turns WHERE session_id = ? ORDER BY idx", arguments: [session])
            .map { row in
                let id: Int64 = row["id"]
                let roleText: String = row["role"]
                guard let role = Role(rawValue: roleText) else {
                    throw StoreError(.corrupt, path: path, "turn \(id) has unknown role '\(roleText)'")
                }
                let seed: Int64? = row["seed"]
                return TurnRecord(
                    id: id, session: row["session_id"], index: row["idx"], role: role, text: row["text"],
                    promptTokens: row["prompt_tokens"], completionTokens: row["completion_tokens"],
                    timings: TurnTimings(ttft: row["ttft"], prefillTokensPerSecond: row["prefill_tps"],
                                         decodeTokensPerSecond: row["decode_tps"]),
                    params: row["params"], seed: seed.map { UInt64(bitPattern: $0) }, created: row["created"],
                    images: images[id] ?? [])
            }
    }

    // MARK: - runs

    /// Records a run as `running`, started now.
    @discardableResult
    public func startRun(session: Int64? = nil, kind: RunKind = .finetune, args: String = "{}", outDir: String? = nil) throws -> Int64 {
        try write("start run") { db in
            if let session { try require(db, "sessions", session, "session") }
            let args = try minified(db, args, "run args")
            try db.execute(sql: """
                INSERT INTO runs (session_id, kind, args, status, started, out_dir) VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [session, kind.rawValue, args, RunStatus.running.rawValue, Date(), outDir])
            return db.lastInsertedRowID
        }
    }

    /// Sets a run's status; any status but `running` stamps the finish time.
    public func updateRunStatus(_ run: Int64, _ status: RunStatus) throws {
        try write("update run \(run)") { db in
            try db.execute(sql: "UPDATE runs SET status = ?, finished = ? WHERE id = ?",
                           arguments: [status.rawValue, status == .running ? nil : Date(), run])
            if db.changesCount == 0 { throw StoreError(.notFound, path: path, "no run \(run)") }
        }
    }

    public func run(id: Int64) throws -> RunRecord? {
        try read("read run \(id)") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM runs WHERE id = ?", arguments: [id]).map { try runRecord($0) }
        }
    }

    /// Runs, oldest first, optionally only those of a session and/or with a status.
    public func runs(session: Int64? = nil, status: RunStatus? = nil) throws -> [RunRecord] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let session { conditions.append("session_id = ?"); arguments += [session] }
        if let status { conditions.append("status = ?"); arguments += [status.rawValue] }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        return try read("list runs") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM runs \(filter) ORDER BY id", arguments: arguments).map { try runRecord($0) }
        }
    }

    private func runRecord(_ row: Row) throws -> RunRecord {
        let id: Int64 = row["id"]
        guard let kind = RunKind(rawValue: row["kind"]), let status = RunStatus(rawValue: row["status"]) else {
            throw StoreError(.corrupt, path: path, "run \(id) has an unknown kind or status")
        }
        return RunRecord(id: id, session: row["session_id"], kind: kind, args: row["args"], status: status,
                         started: row["started"], finished: row["finished"], outDir: row["out_dir"])
    }

    // MARK: - run_metrics

    public func addMetric(run: Int64, step: Int, loss: Double? = nil, lr: Double? = nil, gradNorm: Double? = nil,
                          tokensPerSecond: Double? = nil, evalLoss: Double? = nil) throws {
        try addMetrics([MetricRecord(run: run, step: step, loss: loss, lr: lr, gradNorm: gradNorm,
                                     tokensPerSecond: tokensPerSecond, evalLoss: evalLoss)])
    }

    /// Several metric rows in one transaction (a training loop may flush them in batches).
    public func addMetrics(_ metrics: [MetricRecord]) throws {
        guard !metrics.isEmpty else { return }
        try write("record metrics") { db in
            var checked = Set<Int64>()
            for metric in metrics {
                if checked.insert(metric.run).inserted { try require(db, "runs", metric.run, "run") }
                try db.execute(sql: """
                    INSERT INTO run_metrics (run_id, step, loss, lr, grad_norm, tokens_per_second, eval_loss)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [metric.run, metric.step, metric.loss, metric.lr, metric.gradNorm,
                                     metric.tokensPerSecond, metric.evalLoss])
            }
        }
    }

    /// A run's metrics by step.
    public func metrics(run: Int64) throws -> [MetricRecord] {
        try read("read metrics of run \(run)") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM run_metrics WHERE run_id = ? ORDER BY step, id", arguments: [run]).map { row in
                MetricRecord(run: row["run_id"], step: row["step"], loss: row["loss"], lr: row["lr"],
                             gradNorm: row["grad_norm"], tokensPerSecond: row["tokens_per_second"],
                             evalLoss: row["eval_loss"])
            }
        }
    }

    // MARK: - checkpoints

    @discardableResult
    public func addCheckpoint(run: Int64, step: Int, path checkpointPath: String, kind: CheckpointKind,
                              sha256: String? = nil) throws -> Int64 {
        try write("record checkpoint \(checkpointPath)") { db in
            try require(db, "runs", run, "run")
            try db.execute(sql: """
                INSERT INTO checkpoints (run_id, step, path, kind, sha256, created) VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [run, step, checkpointPath, kind.rawValue, sha256?.lowercased(), Date()])
            return db.lastInsertedRowID
        }
    }

    /// Checkpoints of one run, or of all runs when `run` is nil, by run then step.
    public func checkpoints(run: Int64? = nil) throws -> [CheckpointRecord] {
        try read("list checkpoints") { db in
            let rows = if let run {
                try Row.fetchAll(db, sql: "SELECT * FROM checkpoints WHERE run_id = ? ORDER BY step, id", arguments: [run])
            } else {
                try Row.fetchAll(db, sql: "SELECT * FROM checkpoints ORDER BY run_id, step, id")
            }
            return try rows.map { row in
                let id: Int64 = row["id"]
                guard let kind = CheckpointKind(rawValue: row["kind"]) else {
                    throw StoreError(.corrupt, path: path, "checkpoint \(id) has an unknown kind")
                }
                return CheckpointRecord(id: id, run: row["run_id"], step: row["step"], path: row["path"],
                                        kind: kind, sha256: row["sha256"], created: row["created"])
            }
        }
    }

    // MARK: - evals

    /// - Parameter details: per-eval details as JSON text.
    @discardableResult
    public func addEval(modelPath: String, checkpoint: Int64? = nil, dataset: String, metric: String,
                        value: Double, details: String? = nil) throws -> Int64 {
        try write("record eval") { db in
            if let checkpoint { try require(db, "checkpoints", checkpoint, "checkpoint") }
            let details = try minified(db, details, "eval details")
            try db.execute(sql: """
                INSERT INTO evals (model_path, checkpoint_id, dataset, metric, value, created, details)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [modelPath, checkpoint, dataset, metric, value, Date(), details])
            return db.lastInsertedRowID
        }
    }

    /// Eval results, oldest first, filtered by any of model path, checkpoint and dataset.
    public func evals(modelPath: String? = nil, checkpoint: Int64? = nil, dataset: String? = nil) throws -> [EvalRecord] {
        var conditions: [String] = []
        var arguments = StatementArguments()
        if let modelPath { conditions.append("model_path = ?"); arguments += [modelPath] }
        if let checkpoint { conditions.append("checkpoint_id = ?"); arguments += [checkpoint] }
        if let dataset { conditions.append("dataset = ?"); arguments += [dataset] }
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        return try read("list evals") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM evals \(filter) ORDER BY id", arguments: arguments).map { row in
                EvalRecord(id: row["id"], modelPath: row["model_path"], checkpoint: row["checkpoint_id"],
                           dataset: row["dataset"], metric: row["metric"], value: row["value"],
                           created: row["created"], details: row["details"])
            }
        }
    }
}

// Row decoders live next to the SQL that names the columns.

extension ModelRecord {
    init(row: Row, prefix: String = "") {
        self.init(id: row[prefix + "id"], path: row[prefix + "path"], fingerprint: row[prefix + "fingerprint"],
                  architecture: row[prefix + "architecture"], created: row[prefix + "created"],
                  lastSeen: row[prefix + "last_seen"])
    }
}

extension ImageRecord {
    init(row: Row) {
        self.init(id: row["id"], sha256: row["sha256"], path: row["path"], width: row["width"],
                  height: row["height"], bytes: row["bytes"], created: row["created"])
    }
}

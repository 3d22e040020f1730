import GRDB

/// Versioned schema. Each version is an append-only migration: later versions add tables or
/// columns in a new `registerMigration("vN")` and bump `user_version`, never edit an old one.
enum Schema {
    /// The highest schema version this build writes (mirrored in `PRAGMA user_version`).
    static let version = 1

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            for statement in v1 { try db.execute(sql: statement) }
            try db.execute(sql: "PRAGMA user_version = 1")
        }
        return migrator
    }

    // Enum-like text columns (role, kind, status) carry no CHECK constraint on purpose: adding a
    // value later would need a table rebuild. Swift enums validate them on the way in and out.
    // JSON columns are CHECKed so a bad export can never come from a bad row.
    static let v1: [String] = [
        """
        CREATE TABLE models (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL,
            fingerprint TEXT NOT NULL UNIQUE,
            architecture TEXT NOT NULL,
            created TEXT NOT NULL,
            last_seen TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            name TEXT UNIQUE,
            created TEXT NOT NULL,
            model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
            params TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
            template TEXT,
            parent_id INTEGER REFERENCES sessions(id) ON DELETE SET NULL
        )
        """,
        "CREATE INDEX sessions_model ON sessions(model_id)",
        "CREATE INDEX sessions_parent ON sessions(parent_id)",
        """
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            role TEXT NOT NULL,
            text TEXT NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            ttft REAL,
            prefill_tps REAL,
            decode_tps REAL,
            params TEXT CHECK (params IS NULL OR json_valid(params)),
            seed INTEGER,
            created TEXT NOT NULL,
            UNIQUE (session_id, idx)
        )
        """,
        """
        CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            created TEXT NOT NULL
        )
        """,
        // A rowid table on purpose: SQLite 3.40's integrity_check reports false "NULL value"
        // errors for WITHOUT ROWID tables whose non-key column precedes a key column.
        """
        CREATE TABLE turn_images (
            turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
            image_id INTEGER NOT NULL REFERENCES images(id),
            position INTEGER NOT NULL,
            PRIMARY KEY (turn_id, position)
        )
        """,
        "CREATE INDEX turn_images_image ON turn_images(image_id)",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            session_id INTEGER REFERENCES sessions(id) ON DELETE SET NULL,
            kind TEXT NOT NULL,
            args TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(args)),
            status TEXT NOT NULL,
            started TEXT NOT NULL,
            finished TEXT,
            out_dir TEXT
        )
        """,
        "CREATE INDEX runs_session ON runs(session_id)",
        """
        CREATE TABLE run_metrics (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            loss REAL,
            lr REAL,
            grad_norm REAL,
            tokens_per_second REAL,
            eval_loss REAL
        )
        """,
        "CREATE INDEX run_metrics_run_step ON run_metrics(run_id, step)",
        """
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            path TEXT NOT NULL,
            kind TEXT NOT NULL,
            sha256 TEXT,
            created TEXT NOT NULL
        )
        """,
        "CREATE INDEX checkpoints_run ON checkpoints(run_id, step)",
        """
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY,
            model_path TEXT NOT NULL,
            checkpoint_id INTEGER REFERENCES checkpoints(id) ON DELETE SET NULL,
            dataset TEXT NOT NULL,
            metric TEXT NOT NULL,
            value REAL NOT NULL,
            created TEXT NOT NULL,
            details TEXT CHECK (details IS NULL OR json_valid(details))
        )
        """,
        "CREATE INDEX evals_model ON evals(model_path)",
        "CREATE INDEX evals_checkpoint ON evals(checkpoint_id)",
    ]
}

import GRDB

/// The SQLite session store (schema arrives with the REPL work).
public enum Store {
    public static let sqliteVersion: String = "GRDB"
}

import Foundation

/// One row of a training-data file before it is understood: the parsed JSON value (or why it did
/// not parse) and where it sits, as "file:line" (or "file: element N" when the line is unknown).
struct DataRow {
    let location: String
    let value: Result<Any, RowProblem>
}

/// Why one row cannot be used.
struct RowProblem: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

enum DataRows {
    /// Reads a LLaVA JSON file (an array of row objects) or JSON Lines (one object per line;
    /// blank lines are skipped). Errors here concern the whole file.
    static func read(path: String) throws -> [DataRow] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainingDataError(path + ": no such file")
        }
        let bytes = [UInt8](data)
        var start = 0
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { start = 3 }  // UTF-8 byte order mark
        while start < bytes.count, isWhitespace(bytes[start]) { start += 1 }
        guard start < bytes.count else { throw TrainingDataError(path + ": the file is empty") }
        if bytes[start] == UInt8(ascii: "[") { return try readArray(bytes, from: start, path: path) }
        return readLines(bytes, from: start, path: path)
    }

    private static func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    private static func readArray(_ bytes: [UInt8], from start: Int, path: String) throws -> [DataRow] {
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Data(bytes[start...]), options: [.fragmentsAllowed])
        } catch {
            throw TrainingDataError("\(path): invalid JSON (\(describe(error)))")
        }
        guard let array = parsed as? [Any] else { throw TrainingDataError("\(path): expected a JSON array of rows") }
        let lines = elementLines(bytes, from: start)
        // Rows sharing a line (a one-line array) are told apart by index instead.
        let unique = Set(lines).count == lines.count
        return array.enumerated().map { index, element in
            let location = lines.count == array.count && unique ? "\(path):\(lines[index])" : "\(path): element \(index)"
            return DataRow(location: location, value: .success(element))
        }
    }

    /// The line each top-level array element starts on (1-based), found by scanning the text.
    static func elementLines(_ bytes: [UInt8], from start: Int) -> [Int] {
        var lines: [Int] = []
        var line = 1
        for b in bytes[..<start] where b == 0x0A { line += 1 }
        var depth = 0, inString = false, escaped = false, expecting = false
        for i in start..<bytes.count {
            let b = bytes[i]
            if b == 0x0A { line += 1 }
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            if isWhitespace(b) { continue }
            if depth == 1 && expecting && b != UInt8(ascii: "]") && b != UInt8(ascii: ",") {
                lines.append(line)
                expecting = false
            }
            switch b {
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth == 1 { expecting = true }
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
            case UInt8(ascii: ","):
                if depth == 1 { expecting = true }
            case UInt8(ascii: "\""):
                inString = true
            default:
                break
            }
        }
        return lines
    }

    private static func readLines(_ bytes: [UInt8], from start: Int, path: String) -> [DataRow] {
        var rows: [DataRow] = []
        var line = 1
        for b in bytes[..<start] where b == 0x0A { line += 1 }
        var lineStart = start
        var i = start
        while lineStart < bytes.count {
            while i < bytes.count && bytes[i] != 0x0A { i += 1 }
            var end = i
            while end > lineStart && isWhitespace(bytes[end - 1]) { end -= 1 }
            var first = lineStart
            while first < end && isWhitespace(bytes[first]) { first += 1 }
            if first < end {
                let location = "\(path):\(line)"
                do {
                    let value = try JSONSerialization.jsonObject(with: Data(bytes[first..<end]), options: [.fragmentsAllowed])
                    rows.append(DataRow(location: location, value: .success(value)))
                } catch {
                    rows.append(DataRow(location: location, value: .failure(RowProblem("invalid JSON line (\(describe(error)))"))))
                }
            }
            line += 1
            i += 1
            lineStart = i
        }
        return rows
    }

    private static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if let detail = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return ns.localizedDescription
    }
}

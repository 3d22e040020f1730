import Foundation
import VLMFormats
#if canImport(Glibc)
import Glibc
#endif

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

/// A LLaVA JSON file (an array of row objects) or JSON Lines (one object per line; blank lines
/// are skipped), mapped into memory with the byte range and line of every row, found by one scan
/// of the text. Nothing is parsed until a row is asked for, so the index (16 bytes a row) is all
/// that stays in memory however large the file is.
final class DataFile: @unchecked Sendable {
    let path: String
    let isArray: Bool
    private let file: MappedFile
    private let bodyStart: Int
    private var starts: [Int] = []
    private var lengths: [UInt32] = []
    private var lines: [UInt32] = []
    /// Where the scan of an array found its text broken (unbalanced brackets, text after the end).
    private(set) var structureProblem: String?

    /// Maps `path` (a regular file: a FIFO or a folder is refused without waiting) and indexes it.
    /// Errors here concern the whole file.
    init(path: String) throws {
        self.path = path
        var st = stat()
        if stat(path, &st) != 0 && errno == ENOENT { throw TrainingDataError(path + ": no such file") }
        do {
            file = try MappedFile(path: path)
        } catch let error as FormatError where error.message == "file is empty" {
            throw TrainingDataError(path + ": the file is empty")
        } catch let error as FormatError {
            throw TrainingDataError(error.description)
        }
        let bytes = UnsafeBufferPointer(start: file.base.assumingMemoryBound(to: UInt8.self), count: file.size)
        var start = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0  // UTF-8 byte order mark
        while start < bytes.count, Self.isWhitespace(bytes[start]) { start += 1 }
        guard start < bytes.count else { throw TrainingDataError(path + ": the file is empty") }
        bodyStart = start
        isArray = bytes[start] == UInt8(ascii: "[")
        if isArray { indexElements(bytes) } else { indexLines(bytes) }
        linesAreUnique = zip(lines, lines.dropFirst()).allSatisfy { $0 < $1 }
        file.releasePages(0..<file.size)
    }

    /// Rows found (array elements, or non-blank lines).
    var count: Int { starts.count }

    /// "file:line", or "file: element N" for an array whose rows do not each start a line.
    func location(_ row: Int) -> String {
        linesAreUnique ? "\(path):\(lines[row])" : "\(path): element \(row)"
    }

    /// Every row on a line of its own (lines only grow, so neighbours suffice).
    private var linesAreUnique = true

    /// The row whose `location` is `location` ("file: element N", or "file:line" found by a
    /// binary search over the lines, which only grow), if any.
    func row(at location: String) -> Int? {
        let elementPrefix = "\(path): element ", linePrefix = "\(path):"
        if location.hasPrefix(elementPrefix) {
            guard let n = Int(location.dropFirst(elementPrefix.count)), starts.indices.contains(n) else { return nil }
            return n
        }
        guard location.hasPrefix(linePrefix), let line = UInt32(location.dropFirst(linePrefix.count)) else { return nil }
        var low = 0, high = lines.count
        while low < high {
            let mid = (low + high) / 2
            if lines[mid] < line { low = mid + 1 } else { high = mid }
        }
        return low < lines.count && lines[low] == line ? low : nil
    }

    /// The row's JSON text.
    func withBytes<T>(_ row: Int, _ body: (UnsafeBufferPointer<UInt8>) throws -> T) rethrows -> T {
        try body(UnsafeBufferPointer(start: file.base.assumingMemoryBound(to: UInt8.self) + starts[row], count: Int(lengths[row])))
    }

    /// The row parsed on its own.
    func parse(_ row: Int) -> Result<Any, RowProblem> {
        let data = withBytes(row) { Data($0) }
        do {
            return .success(try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
        } catch {
            return .failure(RowProblem("invalid JSON \(isArray ? "element" : "line") (\(DataRows.describe(error)))"))
        }
    }

    /// The whole array parsed at once (the eager path: syntax errors anywhere concern the file).
    func parseWholeArray() throws -> [Any] {
        let data = Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: file.base + bodyStart), count: file.size - bodyStart, deallocator: .none)
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw TrainingDataError("\(path): invalid JSON (\(DataRows.describe(error)))")
        }
        guard let array = parsed as? [Any] else { throw TrainingDataError("\(path): expected a JSON array of rows") }
        return array
    }

    /// Drops the file's pages from this process's resident memory (see `MappedFile.releasePages`).
    func releaseAllPages() { file.releasePages(0..<file.size) }

    static func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    /// The scan releases what it has read every `scanChunk` bytes, so a large file never becomes resident.
    private static let scanChunk = 8 << 20

    private func record(_ start: Int, _ end: Int, line: Int) {
        starts.append(start)
        lengths.append(UInt32(clamping: end - start))
        lines.append(UInt32(clamping: line))
    }

    /// Byte range and first line of each top-level element of the array at `bodyStart`.
    private func indexElements(_ bytes: UnsafeBufferPointer<UInt8>) {
        var line = 1
        for b in bytes[..<bodyStart] where b == 0x0A { line += 1 }
        var depth = 0, inString = false, escaped = false
        var elementStart = -1, elementLine = 0, lastSolid = 0, released = 0, closedAt = -1
        for i in bodyStart..<bytes.count {
            if i - released >= Self.scanChunk { file.releasePages(released..<i); released = i }
            let b = bytes[i]
            if b == 0x0A { line += 1 }
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                lastSolid = i
                continue
            }
            if Self.isWhitespace(b) { continue }
            if closedAt >= 0 { structureProblem = "text after the array's closing bracket, line \(line)"; return }
            if depth == 1 && elementStart < 0 && b != UInt8(ascii: "]") && b != UInt8(ascii: ",") { elementStart = i; elementLine = line }
            switch b {
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                depth -= 1
                if depth == 0 {
                    if elementStart >= 0 { record(elementStart, lastSolid + 1, line: elementLine) }
                    closedAt = i
                }
                if depth < 0 { structureProblem = "unbalanced brackets, line \(line)"; return }
            case UInt8(ascii: ","):
                if depth == 1 && elementStart >= 0 { record(elementStart, lastSolid + 1, line: elementLine); elementStart = -1 }
            case UInt8(ascii: "\""):
                inString = true
            default:
                break
            }
            lastSolid = i
        }
        if closedAt < 0 { structureProblem = "the array is not closed" }
    }

    /// Byte range (trimmed) and line number of each non-blank line.
    private func indexLines(_ bytes: UnsafeBufferPointer<UInt8>) {
        var line = 1
        for b in bytes[..<bodyStart] where b == 0x0A { line += 1 }
        var lineStart = bodyStart, released = 0
        while lineStart < bytes.count {
            if lineStart - released >= Self.scanChunk { file.releasePages(released..<lineStart); released = lineStart }
            var end = lineStart
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            let next = end + 1
            while end > lineStart && Self.isWhitespace(bytes[end - 1]) { end -= 1 }
            var first = lineStart
            while first < end && Self.isWhitespace(bytes[first]) { first += 1 }
            if first < end { record(first, end, line: line) }
            line += 1
            lineStart = next
        }
    }
}

enum DataRows {
    /// Every row of `file`, parsed (the eager path). An array is parsed whole, so a syntax error
    /// anywhere is an error of the file.
    static func read(_ file: DataFile) throws -> [DataRow] {
        guard file.isArray else { return (0..<file.count).map { DataRow(location: file.location($0), value: file.parse($0)) } }
        let array = try file.parseWholeArray()
        // Rows sharing a line (a one-line array) are told apart by index instead.
        let useIndex = array.count != file.count
        return array.enumerated().map { index, element in
            DataRow(location: useIndex ? "\(file.path): element \(index)" : file.location(index), value: .success(element))
        }
    }

    static func read(path: String) throws -> [DataRow] { try read(DataFile(path: path)) }

    static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if let detail = ns.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return ns.localizedDescription
    }
}

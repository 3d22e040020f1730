import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The one reader of the JSON and text files beside a model (config.json, tokenizer.json,
/// preprocessor_config.json, chat templates): read whole, but only from a regular file opened
/// without blocking (a FIFO is refused, never waited on) and only up to a size bound.
public enum SmallFile {
    /// The largest tokenizer.json files (256k-token vocabularies) are about 35 MB.
    public static let defaultMaxBytes = 128 << 20

    /// The bytes of `path`; a missing file is an error.
    public static func read(_ path: String, maxBytes: Int = defaultMaxBytes) throws -> Data {
        let (fd, size) = try openRegularFile(path)
        defer { close(fd) }
        guard size <= maxBytes else {
            throw FormatError(path, "file is \(size) bytes, more than the \(maxBytes >> 20) MB such a file may have")
        }
        var data = Data(count: size)
        var filled = 0
        try data.withUnsafeMutableBytes { buffer in
            while filled < size {
                let n = Glibc.read(fd, buffer.baseAddress! + filled, size - filled)
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw FormatError(path, "cannot read file: \(String(cString: strerror(errno)))") }
                if n == 0 { break }   // the file shrank while being read
                filled += n
            }
        }
        return data.prefix(filled)
    }

    /// The bytes of `path`, or nil when there is no such file (an optional file of a folder).
    public static func readIfPresent(_ path: String, maxBytes: Int = defaultMaxBytes) throws -> Data? {
        var st = stat()
        if lstat(path, &st) != 0 && errno == ENOENT { return nil }
        return try read(path, maxBytes: maxBytes)
    }
}

/// A configuration value no model can be built with (a count out of range, sizes that do not
/// divide), found while decoding; whoever reads the file names it: `FormatError(path, error.description)`.
public struct ConfigValueError: Error, CustomStringConvertible, Sendable {
    /// The key as the file spells it (`text_config.num_hidden_layers`, `llama.block_count`).
    public let key: String
    /// What is wrong with its value, e.g. "-1 is out of range (1…1024)".
    public let problem: String

    public init(_ key: String, _ problem: String) { self.key = key; self.problem = problem }

    public var description: String { "\(key) \(problem)" }

    /// The same error with the key under the nested object `path` (`vision_config.image_size`).
    public func nested(under path: [CodingKey]) -> ConfigValueError {
        path.isEmpty ? self : ConfigValueError((path.map(\.stringValue) + [key]).joined(separator: "."), problem)
    }

    /// `value` must lie in `range`.
    public static func check(_ key: String, _ value: Int, in range: ClosedRange<Int>) throws {
        guard range.contains(value) else {
            throw ConfigValueError(key, "\(value) is out of range (\(range.lowerBound)…\(range.upperBound))")
        }
    }

    /// `value` must be a finite number above zero (epsilons, bases, factors).
    public static func checkPositive(_ key: String, _ value: Double) throws {
        guard value.isFinite, value > 0 else { throw ConfigValueError(key, "\(value) must be a finite number above 0") }
    }
}

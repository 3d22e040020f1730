import Crypto
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private func systemClose(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    Glibc.close(fd)
    #else
    Darwin.close(fd)
    #endif
}

/// SHA-256 digests (swift-crypto) as lowercase hex, so the store can content-address images,
/// checkpoints and models. Files are hashed in 1 MB chunks: multi-GB weights never sit in memory.
public enum ContentHash {
    /// Hex digest of a memory buffer.
    public static func hex(_ data: UnsafeRawBufferPointer) -> String {
        var hasher = Hasher()
        hasher.update(data)
        return hasher.finalizeHex()
    }

    /// Hex digest of bytes held in a `Data` or an array.
    public static func hex(_ bytes: some ContiguousBytes) -> String {
        bytes.withUnsafeBytes { hex($0) }
    }

    /// Hex digest of a string's UTF-8 bytes.
    public static func hex(_ string: String) -> String {
        var s = string
        return s.withUTF8 { hex(UnsafeRawBufferPointer($0)) }
    }

    /// Hex digest of a file's whole content.
    public static func hex(file path: String) throws -> String {
        let file = try ReadOnlyFile(path: path)
        defer { file.close() }
        var hasher = Hasher()
        try file.withChunks(from: 0, count: try file.size()) { hasher.update($0) }
        return hasher.finalizeHex()
    }

    /// Cheap identity for large model files: SHA-256 of the first MB, the last MB (not
    /// overlapping the first) and the decimal byte size. Reads at most 2 MB whatever the size.
    public static func fingerprint(file path: String) throws -> String {
        let file = try ReadOnlyFile(path: path)
        defer { file.close() }
        let size = try file.size()
        let mb = Int64(ReadOnlyFile.chunkSize)
        var hasher = Hasher()
        let head = min(size, mb)
        try file.withChunks(from: 0, count: head) { hasher.update($0) }
        let tail = min(size - head, mb)
        try file.withChunks(from: size - tail, count: tail) { hasher.update($0) }
        hasher.update(Array(String(size).utf8))
        return hasher.finalizeHex()
    }

    /// Incremental hasher for data that arrives in pieces.
    public struct Hasher {
        private var sha = SHA256()

        public init() {}

        public mutating func update(_ data: UnsafeRawBufferPointer) {
            sha.update(bufferPointer: data)
        }

        public mutating func update(_ bytes: some ContiguousBytes) {
            bytes.withUnsafeBytes { update($0) }
        }

        /// The 32-byte digest.
        public func finalize() -> [UInt8] { Array(sha.finalize()) }

        public func finalizeHex() -> String {
            finalize().map { String(format: "%02x", $0) }.joined()
        }
    }
}

// MARK: - File reading

/// Positional reads on a POSIX descriptor: no Data allocations per chunk, no shared offset.
private struct ReadOnlyFile {
    let fd: Int32
    let path: String

    init(path: String) throws {
        self.path = path
        fd = open(path, O_RDONLY)
        if fd < 0 { throw POSIXFileError(path: path, code: errno) }
    }

    func size() throws -> Int64 {
        var st = stat()
        if fstat(fd, &st) != 0 { throw POSIXFileError(path: path, code: errno) }
        return Int64(st.st_size)
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws -> Int {
        while true {
            let n = pread(fd, buffer.baseAddress, buffer.count, off_t(offset))
            if n >= 0 { return n }
            if errno != EINTR { throw POSIXFileError(path: path, code: errno) }
        }
    }

    static let chunkSize = 1 << 20

    /// Feeds `count` bytes from `start` to `body` in chunks of at most 1 MB; a file shorter than
    /// that is an error (it changed while being read).
    func withChunks(from start: Int64, count: Int64, _ body: (UnsafeRawBufferPointer) -> Void) throws {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.chunkSize, alignment: 64)
        defer { buffer.deallocate() }
        var done: Int64 = 0
        while done < count {
            let want = Int(min(count - done, Int64(Self.chunkSize)))
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: start + done)
            if n == 0 { throw POSIXFileError(path: path, code: EIO) }
            body(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            done += Int64(n)
        }
    }

    func close() { _ = systemClose(fd) }
}

/// A file that could not be read, named in one line.
public struct POSIXFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let code: Int32
    public var description: String { "\(path): \(String(cString: strerror(code)))" }
}

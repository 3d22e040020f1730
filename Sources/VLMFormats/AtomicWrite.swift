import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes `data` to `path` through Foundation's `.atomic` option (a temporary file renamed into
/// place), so `path` holds the old content or the new, never a partial file. Any failure is one
/// FormatError naming `path`.
public func writeAtomically(_ data: Data, to path: String) throws {
    do {
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        throw FormatError(path, "cannot write: \(reason(error))")
    }
}

/// The POSIX reason under a Foundation file error ("No such file or directory"), which names the
/// problem better than the generic Cocoa wording.
private func reason(_ error: any Error) -> String {
    if let underlying = (error as NSError).userInfo[NSUnderlyingErrorKey] as? any Error {
        let posix = underlying as NSError
        if posix.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(posix.code))) }
    }
    return error.localizedDescription
}

/// Refuses an output folder `path` that exists as something other than a folder (a file, a
/// FIFO); a folder, or nothing yet, passes. `message` says what went wrong, after the path.
public func requireFolderOrAbsent(_ path: String, message: String = "exists and is not a folder") throws {
    var isDirectory: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
        throw FormatError(path, message)
    }
}

/// A file streamed to a temporary name beside `path` and renamed into place by `commit()`, so
/// `path` never holds a partial file; without `commit()` (an error on the way) the temporary file
/// is removed. For outputs too large to build in memory first (weights files).
public final class AtomicFileWriter {
    public let path: String
    private let temp: String
    private var file: UnsafeMutablePointer<FILE>?
    public private(set) var bytesWritten = 0

    public init(path: String) throws {
        self.path = path
        let folder = (path as NSString).deletingLastPathComponent
        temp = (folder.isEmpty ? "." : folder) + "/.\((path as NSString).lastPathComponent).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
        guard let file = fopen(temp, "wb") else {
            throw FormatError(path, "cannot create \(temp): \(String(cString: strerror(errno)))")
        }
        self.file = file
    }

    public func write(_ p: UnsafeRawPointer, count n: Int) throws {
        guard let file else { throw FormatError(path, "write after the file was closed") }
        guard n == 0 || fwrite(p, 1, n, file) == n else {
            throw FormatError(path, "write failed: \(String(cString: strerror(errno)))")
        }
        bytesWritten += n
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { if let base = $0.baseAddress { try write(base, count: $0.count) } }
    }

    public func write(_ data: Data) throws {
        try data.withUnsafeBytes { if let base = $0.baseAddress { try write(base, count: $0.count) } }
    }

    /// Flushes to disk and renames the file into place.
    public func commit() throws {
        guard let file else { throw FormatError(path, "the file was already closed") }
        self.file = nil
        let flushed = fflush(file) == 0 && fsync(fileno(file)) == 0
        let closed = fclose(file) == 0
        guard flushed, closed else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw FormatError(path, "write failed: \(reason)")
        }
        guard rename(temp, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temp)
            throw FormatError(path, "cannot move the written file into place: \(reason)")
        }
    }

    deinit {
        if let file {
            fclose(file)
            unlink(temp)
        }
    }
}

import Foundation
import VLMTensor
#if canImport(Glibc)
import Glibc
#endif

/// A read-only memory map of a whole file. Weights point into it; nothing is copied.
public final class MappedFile: PageReleasing, @unchecked Sendable {
    public let path: String
    public let base: UnsafeRawPointer
    public let size: Int

    public init(path: String) throws {
        self.path = path
        let (fd, size) = try openRegularFile(path)
        defer { close(fd) }
        self.size = size
        guard size > 0 else { throw FormatError(path, "file is empty") }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw FormatError(path, "cannot map file: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }

    /// Lets the kernel drop the pages of `range` from this process (they are read back from the
    /// page cache when touched again): a scan through a large file then leaves no trace in its
    /// resident size.
    public func releasePages(_ range: Range<Int>) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        let end = min(size, range.upperBound)
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
    }

    /// The interleaved copies of this file's rows kept across runs (`InterleavedRowsCache`),
    /// made when the first copy is asked for.
    private var interleavedCache: InterleavedRowsCache?
    private var interleavedCacheOpened = false
    private let interleavedCacheLock = NSLock()

    private func cache(creating: Bool) -> InterleavedRowsCache? {
        interleavedCacheLock.lock(); defer { interleavedCacheLock.unlock() }
        if creating, !interleavedCacheOpened {
            interleavedCacheOpened = true
            interleavedCache = InterleavedRowsCache(file: self)
        }
        return interleavedCache
    }

    /// Starts keeping the interleaved copies made while loading this file for later loads to map
    /// (see `InterleavedRowsCache.commit`); call it once the model reading them is built.
    public func commitInterleavedRows() { cache(creating: false)?.commit() }

    /// releasePages for `bytes` bytes at `pointer`, when they lie in this file's mapping.
    public func releasePages(of pointer: UnsafeRawPointer, bytes: Int) {
        let offset = pointer - base
        guard offset >= 0, bytes >= 0, offset <= size - bytes else { return }
        releasePages(offset..<(offset + bytes))
    }
}

/// Opens `path` read-only and returns the descriptor (the caller closes it) and the size.
/// O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; fstat then refuses
/// anything that is not a regular file. Every input file is opened here.
func openRegularFile(_ path: String) throws -> (descriptor: Int32, size: Int) {
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else { throw FormatError(path, String(cString: strerror(errno))) }
    var st = stat()
    guard fstat(fd, &st) == 0 else {
        let message = String(cString: strerror(errno))
        close(fd)
        throw FormatError(path, message)
    }
    guard (st.st_mode & S_IFMT) == S_IFREG else {
        close(fd)
        throw FormatError(path, "not a regular file")
    }
    return (fd, Int(st.st_size))
}

/// A problem with an input file: one line naming the file and what is wrong with it.
public struct FormatError: Error, CustomStringConvertible, Sendable {
    public let file: String
    public let message: String
    public init(_ file: String, _ message: String) { self.file = file; self.message = message }
    public var description: String { "\(file): \(message)" }
}

extension MappedFile: InterleavedRowsCaching {
    public func interleavedRows(of data: UnsafeRawPointer, bytes: Int) -> InterleavedRows? {
        guard data >= base, data - base < size else { return nil }
        return cache(creating: true)?.interleavedRows(of: data, bytes: bytes)
    }

    public func didInterleave(_ data: UnsafeRawPointer, into rows: InterleavedRows, bytes: Int) {
        guard data >= base, data - base < size else { return }
        cache(creating: true)?.didInterleave(data, into: rows, bytes: bytes)
    }
}

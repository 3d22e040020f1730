import Foundation
import VLMHome
import VLMTensor
#if canImport(Glibc)
import Glibc
#endif

/// The interleaved rows of one large weights file, kept in `$VLMSH_HOME/cache` so that later
/// loads map them instead of repacking (int8 activations interleave Q4_0, Q4_K and Q6_K rows for
/// the integer kernels: for a 7B model that is 4 GB written into fresh memory at every start).
///
/// Two files per weights file, named by a hash of its identity (path, device, inode, size,
/// modification time) and of the kernels' layout: `NAME.rows`, the copies one after another,
/// and `NAME.json`, the index (which stored rows each copy holds, where, how long). A load
/// without them interleaves into memory as always; once its model is built, `commit()` hands the
/// copies to a background thread that writes them to `NAME.rows.partial` under an exclusive lock
/// (the disk, not the first token, waits; a load killed on the way leaves that name for the next
/// one to reuse), renames it, then writes the index with `writeAtomically`. The process waits
/// for that write when it exits; one that dies on the way leaves no index, so nothing
/// half-written is ever read. Every index entry is checked before use.
final class InterleavedRowsCache: @unchecked Sendable {
    /// Files smaller than this are repacked at every load (it takes milliseconds).
    nonisolated(unsafe) static var minimumFileBytes = 512 << 20
    /// Where `$VLMSH_HOME` and `$VLMSH_CACHE` are read.
    nonisolated(unsafe) static var environment = ProcessInfo.processInfo.environment
    /// Changes whenever the interleaved layouts in quant_dot.c do.
    static let layoutVersion = 1

    private struct Index: Codable {
        var identity: String
        var rowsBytes: Int
        /// [offset of the stored rows in the weights file, offset of the copy in NAME.rows, bytes]
        var entries: [[Int]]
    }

    private enum State {
        /// NAME.rows mapped read-only (`size` bytes at `base`, unmapped with the cache), its
        /// copies by stored offset.
        case ready(base: UnsafeMutableRawPointer, size: Int, entries: [Int: (offset: Int, bytes: Int)])
        /// No cache yet: the copies made in memory, by stored offset, to write at `commit()`.
        case building(copies: [(offset: Int, rows: InterleavedRows, bytes: Int)])
        case off
    }

    /// The weights file's mapping (not the MappedFile, which holds this cache).
    private let fileBase: UnsafeRawPointer
    private let fileSize: Int
    private let folder: String
    private let name: String
    private let pathPrefix: String
    private let identity: String
    private var state: State = .off
    private let lock = NSLock()

    /// Background writes of new caches; the process waits for them when it exits.
    private static let writes = DispatchGroup()
    private static let waitAtExit: Void = { atexit { InterleavedRowsCache.waitForWrites() } }()

    /// Blocks until every cache being written is on disk (or given up).
    static func waitForWrites() { writes.wait() }

    /// The cache of `file`, or nil when the file is small, caching is off (`VLMSH_CACHE=off`) or
    /// the cache folder cannot be used.
    init?(file: MappedFile, environment: [String: String] = environment) {
        guard file.size >= Self.minimumFileBytes, environment["VLMSH_CACHE"] != "off" else { return nil }
        var st = stat()
        guard let real = realpath(file.path, nil) else { return nil }
        let path = String(cString: real)
        free(real)
        guard stat(path, &st) == 0, Int(st.st_size) == file.size else { return nil }
        fileBase = file.base
        fileSize = file.size
        folder = (VLMHome.path(environment: environment) as NSString).appendingPathComponent("cache")
        identity = "\(path) dev \(st.st_dev) inode \(st.st_ino) size \(st.st_size) mtime \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec) layout \(Self.layoutVersion)"
        // NAME: the file's name, a hash of its path (an earlier cache of the same path is
        // replaced when this one is built) and one of its identity. FNV-1a: names, not checks
        // (the index holds `identity`).
        func hash(_ text: String) -> String {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in text.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
            return String(h, radix: 16)
        }
        pathPrefix = ((path as NSString).lastPathComponent as NSString).deletingPathExtension + "-" + hash(path) + "-"
        name = pathPrefix + hash(identity)
        guard (try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)) != nil else { return nil }
        state = openReady() ?? .building(copies: [])
    }

    deinit {
        if case .ready(let base, let size, _) = state { munmap(base, size) }
    }

    private func path(_ suffix: String) -> String { Self.path(folder, name, suffix) }
    private static func path(_ folder: String, _ name: String, _ suffix: String) -> String {
        (folder as NSString).appendingPathComponent(name + "." + suffix)
    }
    /// Copies start on page boundaries in the rows file, so each maps page-aligned.
    private static func pageAligned(_ offset: Int) -> Int { (offset + 4095) / 4096 * 4096 }

    /// The copy of the rows stored at `data` (`bytes` long) from the rows file, when it holds them.
    func interleavedRows(of data: UnsafeRawPointer, bytes: Int) -> InterleavedRows? {
        lock.lock(); defer { lock.unlock() }
        guard case .ready(let base, _, let entries) = state, let e = entries[data - fileBase], e.bytes == bytes else { return nil }
        return InterleavedRows(pointer: base + e.offset, keeper: self)
    }

    /// A copy of the rows stored at `data` made in memory: written to the cache at `commit()`.
    func didInterleave(_ data: UnsafeRawPointer, into rows: InterleavedRows, bytes: Int) {
        lock.lock(); defer { lock.unlock() }
        guard case .building(var copies) = state else { return }
        copies.append((data - fileBase, rows, bytes))
        state = .building(copies: copies)
    }

    /// Starts writing the copies made so far as the cache later loads read (see the type's
    /// description). Called once the model holding them is built; does nothing otherwise.
    func commit() {
        lock.lock()
        guard case .building(let copies) = state, !copies.isEmpty else { lock.unlock(); return }
        state = .off
        lock.unlock()
        _ = Self.waitAtExit
        let write = CacheWrite(folder: folder, name: name, pathPrefix: pathPrefix, identity: identity, copies: copies)
        Self.writes.enter()
        Thread.detachNewThread {
            defer { Self.writes.leave() }
            // The copy competes with nothing a person waits for.
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)
            write.run()
        }
    }

    /// One background write of a new cache.
    private struct CacheWrite: @unchecked Sendable {
        let folder: String, name: String, pathPrefix: String, identity: String
        let copies: [(offset: Int, rows: InterleavedRows, bytes: Int)]

        func path(_ suffix: String) -> String { InterleavedRowsCache.path(folder, name, suffix) }

        func run() {
            let partial = path("rows.partial")
            let fd = open(partial, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { return }
            defer { close(fd) }
            // Locked (another load may be writing it), still the partial file (not one another
            // load has just renamed into place), and room on the disk for it besides a gigabyte.
            var opened = stat(), named = stat(), fs = statvfs()
            let total = copies.reduce(0) { InterleavedRowsCache.pageAligned($0) + $1.bytes }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &opened) == 0, stat(partial, &named) == 0,
                  opened.st_ino == named.st_ino, opened.st_dev == named.st_dev,
                  statvfs(folder, &fs) == 0, Int(fs.f_bavail) * Int(fs.f_frsize) > total + (1 << 30),
                  ftruncate(fd, 0) == 0 else { return }
            var entries: [[Int]] = []
            var end = 0
            for copy in copies {
                let start = InterleavedRowsCache.pageAligned(end)
                var done = 0
                while done < copy.bytes {
                    let n = pwrite(fd, copy.rows.pointer + done, min(copy.bytes - done, 1 << 24), off_t(start + done))
                    if n < 0, errno == EINTR { continue }
                    guard n > 0 else { unlink(partial); return }
                    done += n
                }
                entries.append([copy.offset, start, copy.bytes])
                end = start + copy.bytes
            }
            // Earlier caches of this path (the file has changed since) go.
            for other in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
            where other.hasPrefix(pathPrefix) && !other.hasPrefix(name + ".") {
                unlink((folder as NSString).appendingPathComponent(other))
            }
            unlink(path("json"))
            guard ftruncate(fd, off_t(end)) == 0, rename(partial, path("rows")) == 0,
                  let json = try? JSONEncoder().encode(Index(identity: identity, rowsBytes: end, entries: entries)),
                  (try? writeAtomically(json, to: path("json"))) != nil else {
                unlink(partial); unlink(path("rows"))
                return
            }
        }
    }

    /// The finished cache when its index names this file and every entry lies inside the rows file.
    private func openReady() -> State? {
        guard let json = FileManager.default.contents(atPath: path("json")),
              let index = try? JSONDecoder().decode(Index.self, from: json), index.identity == identity else { return nil }
        guard let rows = try? openRegularFile(path("rows")) else { return nil }
        defer { close(rows.descriptor) }
        guard rows.size == index.rowsBytes, index.rowsBytes > 0 else { return nil }
        var entries: [Int: (offset: Int, bytes: Int)] = [:]
        for e in index.entries {
            guard e.count == 3, e[0] >= 0, e[0] < fileSize, e[1] >= 0, e[2] > 0, e[1] <= index.rowsBytes - e[2] else { return nil }
            entries[e[0]] = (e[1], e[2])
        }
        guard let p = mmap(nil, index.rowsBytes, PROT_READ, MAP_SHARED, rows.descriptor, 0), p != MAP_FAILED else { return nil }
        return .ready(base: p, size: index.rowsBytes, entries: entries)
    }
}

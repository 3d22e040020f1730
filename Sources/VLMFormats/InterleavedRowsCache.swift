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
/// and `NAME.json`, the index (which stored rows each copy holds, where, how long). The first
/// load writes the copies straight into `NAME.rows.partial` (mapped shared, so they cost no
/// memory of their own) under an exclusive lock, and `commit()` renames it and then writes the
/// index through a temporary file: a load that dies on the way leaves no index, so nothing
/// half-written is ever read. Every index entry is checked against the rows file before use.
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
        /// NAME.rows mapped read-only, its copies by stored offset.
        case ready(base: UnsafeMutableRawPointer, size: Int, entries: [Int: (offset: Int, bytes: Int)])
        /// NAME.rows.partial mapped shared for writing; `used` bytes handed out so far.
        case building(descriptor: Int32, base: UnsafeMutableRawPointer, capacity: Int, used: Int)
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
    private var entries: [[Int]] = []
    private var filled: Set<Int> = []
    private var mapping: (base: UnsafeMutableRawPointer, size: Int)?
    private let lock = NSLock()

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
        state = openReady() ?? startBuilding() ?? .off
        if case .off = state { return nil }
    }

    deinit {
        if case .building(let fd, let base, let capacity, _) = state {
            close(fd)
            unlink(path("rows.partial"))
            munmap(base, capacity)
        }
        if let m = mapping { munmap(m.base, m.size) }
    }

    private func path(_ suffix: String) -> String { (folder as NSString).appendingPathComponent(name + "." + suffix) }

    /// The copy of the rows stored at `data` (`bytes` long): from the rows file when it holds
    /// them, else fresh space in the file being built; nil when this cache has none.
    func interleavedRows(of data: UnsafeRawPointer, bytes: Int) -> (rows: InterleavedRows, filled: Bool)? {
        let offset = data - fileBase
        lock.lock(); defer { lock.unlock() }
        switch state {
        case .ready(let base, _, let entries):
            guard let e = entries[offset], e.bytes == bytes else { return nil }
            return (InterleavedRows(pointer: base + e.offset, keeper: self), true)
        case .building(let fd, let base, let capacity, let used):
            if let e = entries.first(where: { $0[0] == offset }) {
                return e[2] == bytes ? (InterleavedRows(pointer: base + e[1], keeper: self), filled.contains(offset)) : nil
            }
            let start = (used + 4095) / 4096 * 4096
            // Disk blocks are reserved before the pages are written: a full disk must refuse
            // here, not raise SIGBUS in the middle of the copy.
            guard start + bytes <= capacity, posix_fallocate(fd, off_t(start), off_t(bytes)) == 0 else {
                abandon()
                return nil
            }
            // Present up front, as anonymous copies are (InterleavedRows(bytes:)).
            _ = madvise(base + start, bytes, MADV_POPULATE_WRITE)
            state = .building(descriptor: fd, base: base, capacity: capacity, used: start + bytes)
            entries.append([offset, start, bytes])
            return (InterleavedRows(pointer: base + start, keeper: self), false)
        case .off:
            return nil
        }
    }

    func didFill(offset: Int) {
        lock.lock(); defer { lock.unlock() }
        filled.insert(offset)
    }

    /// Makes what was built the cache later loads read: the rows file renamed into place, then
    /// its index. Called once the model holding the copies is built; does nothing otherwise.
    func commit() {
        lock.lock(); defer { lock.unlock() }
        guard case .building(let fd, let base, let capacity, let used) = state else { return }
        let complete = entries.filter { filled.contains($0[0]) }
        guard !complete.isEmpty, ftruncate(fd, off_t(used)) == 0, rename(path("rows.partial"), path("rows")) == 0 else {
            abandon()
            return
        }
        let index = Index(identity: identity, rowsBytes: used, entries: complete)
        let temporary = path("json.partial")
        if let json = try? JSONEncoder().encode(index), FileManager.default.createFile(atPath: temporary, contents: json),
           rename(temporary, path("json")) == 0 {
            close(fd)
            // The copies stay mapped as they are; only the space past `used` goes.
            mapping = (base, capacity)
            state = .ready(base: base, size: used, entries: Dictionary(uniqueKeysWithValues: complete.map { ($0[0], ($0[1], $0[2])) }))
        } else {
            unlink(temporary)
            unlink(path("rows"))
            close(fd)
            mapping = (base, capacity)
            state = .off
        }
    }

    /// Stops building: what was handed out stays mapped (its rows are still written and used);
    /// the partial file is removed.
    private func abandon() {
        guard case .building(let fd, let base, let capacity, _) = state else { return }
        close(fd)
        unlink(path("rows.partial"))
        mapping = (base, capacity)
        state = .off
    }

    /// The finished cache when its index names this file and every entry lies inside the rows file.
    private func openReady() -> State? {
        guard let json = FileManager.default.contents(atPath: path("json")),
              let index = try? JSONDecoder().decode(Index.self, from: json), index.identity == identity else { return nil }
        let fd = open(path("rows"), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) == index.rowsBytes, index.rowsBytes > 0 else { return nil }
        var entries: [Int: (offset: Int, bytes: Int)] = [:]
        for e in index.entries {
            guard e.count == 3, e[0] >= 0, e[0] < fileSize, e[1] >= 0, e[2] > 0, e[1] <= index.rowsBytes - e[2] else { return nil }
            entries[e[0]] = (e[1], e[2])
        }
        guard let p = mmap(nil, index.rowsBytes, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { return nil }
        mapping = (p, index.rowsBytes)
        return .ready(base: p, size: index.rowsBytes, entries: entries)
    }

    /// A new rows file, when the lock is free (another load may be building it) and the disk has
    /// room for a copy of the whole file besides a gigabyte.
    private func startBuilding() -> State? {
        var fs = statvfs()
        guard statvfs(folder, &fs) == 0, Int(fs.f_bavail) * Int(fs.f_frsize) > 2 * fileSize + (1 << 30) else { return nil }
        let fd = open(path("rows.partial"), O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return nil }
        // The copies are never larger than twice the stored rows; the file stays sparse.
        let capacity = 2 * fileSize
        // Locked, and still the partial file (not one another load has just renamed into place).
        var opened = stat(), named = stat()
        guard flock(fd, LOCK_EX | LOCK_NB) == 0, fstat(fd, &opened) == 0, stat(path("rows.partial"), &named) == 0,
              opened.st_ino == named.st_ino, opened.st_dev == named.st_dev,
              ftruncate(fd, 0) == 0, ftruncate(fd, off_t(capacity)) == 0,
              let p = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            close(fd)
            return nil
        }
        // Earlier caches of this path (the file has changed since) go.
        for other in (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        where other.hasPrefix(pathPrefix) && !other.hasPrefix(name + ".") {
            unlink((folder as NSString).appendingPathComponent(other))
        }
        unlink(path("json"))
        return .building(descriptor: fd, base: p, capacity: capacity, used: 0)
    }
}

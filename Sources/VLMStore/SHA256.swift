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

/// Pure-Swift SHA-256 (FIPS 180-4), so the store can content-address images, checkpoints and
/// models without a crypto dependency that Linux builds may lack.
public enum SHA256 {
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

    /// Hex digest of a file, read in 1 MB chunks so multi-GB weights never sit in memory.
    public static func hex(file path: String) throws -> String {
        let file = try ReadOnlyFile(path: path)
        defer { file.close() }
        var hasher = Hasher()
        let chunk = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buffer.deallocate() }
        var offset: Int64 = 0
        while true {
            let n = try file.read(into: buffer, at: offset)
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            offset += Int64(n)
        }
        return hasher.finalizeHex()
    }

    /// Cheap identity for large model files: SHA-256 of the first MB, the last MB (not
    /// overlapping the first) and the decimal byte size. Reads at most 2 MB whatever the size.
    public static func fingerprint(file path: String) throws -> String {
        let file = try ReadOnlyFile(path: path)
        defer { file.close() }
        let size = try file.size()
        let mb = Int64(1 << 20)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(mb), alignment: 64)
        defer { buffer.deallocate() }
        var hasher = Hasher()
        func hashRange(_ start: Int64, _ count: Int64) throws {
            var done: Int64 = 0
            while done < count {
                let want = Int(count - done)
                let n = try file.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), at: start + done)
                if n == 0 { throw CocoaError(.fileReadUnknown, userInfo: [NSFilePathErrorKey: path]) }
                hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                done += Int64(n)
            }
        }
        let head = min(size, mb)
        try hashRange(0, head)
        let tail = min(size - head, mb)
        try hashRange(size - tail, tail)
        var sizeText = String(size)
        sizeText.withUTF8 { hasher.update(UnsafeRawBufferPointer($0)) }
        return hasher.finalizeHex()
    }

    /// Incremental hasher for data that arrives in pieces.
    public struct Hasher: Sendable {
        private var state: State = State()
        private var pending: Block = Block()
        private var pendingCount = 0
        private var totalBytes: UInt64 = 0

        public init() {}

        public mutating func update(_ data: UnsafeRawBufferPointer) {
            guard var p = data.baseAddress, data.count > 0 else { return }
            var remaining = data.count
            totalBytes &+= UInt64(remaining)
            if pendingCount > 0 {
                let take = min(64 - pendingCount, remaining)
                pending.fill(at: pendingCount, from: p, count: take)
                pendingCount += take; p += take; remaining -= take
                if pendingCount < 64 { return }
                pending.withBytes { state.compress($0, blocks: 1) }
                pendingCount = 0
            }
            let whole = remaining / 64
            if whole > 0 {
                state.compress(p, blocks: whole)
                p += whole * 64; remaining -= whole * 64
            }
            if remaining > 0 {
                pending.fill(at: 0, from: p, count: remaining)
                pendingCount = remaining
            }
        }

        public mutating func update(_ bytes: some ContiguousBytes) {
            bytes.withUnsafeBytes { update($0) }
        }

        /// The 32-byte digest. The hasher is spent afterwards.
        public mutating func finalize() -> [UInt8] {
            let bitLength = totalBytes &* 8
            var tail = [UInt8](repeating: 0, count: pendingCount < 56 ? 64 : 128)
            pending.withBytes { src in
                tail.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: src, byteCount: pendingCount) }
            }
            tail[pendingCount] = 0x80
            for i in 0..<8 { tail[tail.count - 1 - i] = UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(i))) }
            tail.withUnsafeBytes { state.compress($0.baseAddress!, blocks: tail.count / 64) }
            pendingCount = 0
            return state.digest()
        }

        public mutating func finalizeHex() -> String {
            let digest = finalize()
            let digits = Array("0123456789abcdef".utf8)
            var out = [UInt8](); out.reserveCapacity(64)
            for b in digest { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
            return String(decoding: out, as: UTF8.self)
        }
    }
}

// MARK: - Compression

/// 64 bytes held inline so the hasher is a value type with no heap traffic.
private struct Block: Sendable {
    var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)

    mutating func fill(at offset: Int, from src: UnsafeRawPointer, count: Int) {
        withUnsafeMutableBytes(of: &words) { $0.baseAddress!.advanced(by: offset).copyMemory(from: src, byteCount: count) }
    }

    func withBytes<R>(_ body: (UnsafeRawPointer) -> R) -> R {
        withUnsafeBytes(of: words) { body($0.baseAddress!) }
    }
}

private let roundConstants: [UInt32] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]

// Masking shifts (&>>, &<<) so the optimizer sees a rotate; smart shifts hide it.
@inline(__always) private func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x &>> n) | (x &<< (32 &- n)) }

/// One SHA-256 round: `d` and `h` are the two words it changes.
@inline(__always)
private func sha256Round(_ a: UInt32, _ b: UInt32, _ c: UInt32, _ d: inout UInt32,
                         _ e: UInt32, _ f: UInt32, _ g: UInt32, _ h: inout UInt32, _ kw: UInt32) {
    let t1 = h &+ (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) &+ (g ^ (e & (f ^ g))) &+ kw
    d &+= t1
    h = t1 &+ (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) &+ ((a & b) | (c & (a | b)))
}

private struct State: Sendable {
    var h0: UInt32 = 0x6a09e667, h1: UInt32 = 0xbb67ae85, h2: UInt32 = 0x3c6ef372, h3: UInt32 = 0xa54ff53a
    var h4: UInt32 = 0x510e527f, h5: UInt32 = 0x9b05688c, h6: UInt32 = 0x1f83d9ab, h7: UInt32 = 0x5be0cd19

    mutating func compress(_ data: UnsafeRawPointer, blocks: Int) {
        roundConstants.withUnsafeBufferPointer { kBuf in
            let k = kBuf.baseAddress!
            withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { wBuf in
                let w = wBuf.baseAddress!
                for block in 0..<blocks {
                    let p = data + block * 64
                    for i in 0..<16 { w[i] = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)) }
                    for i in 16..<64 {
                        let x = w[i - 15], y = w[i - 2]
                        let s0 = rotr(x, 7) ^ rotr(x, 18) ^ (x &>> 3)
                        let s1 = rotr(y, 17) ^ rotr(y, 19) ^ (y &>> 10)
                        w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
                    }
                    var a = h0, b = h1, c = h2, d = h3, e = h4, f = h5, g = h6, h = h7
                    // Eight rounds per pass with the variables' roles rotated instead of
                    // shuffling eight values every round.
                    var i = 0
                    while i < 64 {
                        sha256Round(a, b, c, &d, e, f, g, &h, k[i] &+ w[i])
                        sha256Round(h, a, b, &c, d, e, f, &g, k[i + 1] &+ w[i + 1])
                        sha256Round(g, h, a, &b, c, d, e, &f, k[i + 2] &+ w[i + 2])
                        sha256Round(f, g, h, &a, b, c, d, &e, k[i + 3] &+ w[i + 3])
                        sha256Round(e, f, g, &h, a, b, c, &d, k[i + 4] &+ w[i + 4])
                        sha256Round(d, e, f, &g, h, a, b, &c, k[i + 5] &+ w[i + 5])
                        sha256Round(c, d, e, &f, g, h, a, &b, k[i + 6] &+ w[i + 6])
                        sha256Round(b, c, d, &e, f, g, h, &a, k[i + 7] &+ w[i + 7])
                        i += 8
                    }
                    h0 &+= a; h1 &+= b; h2 &+= c; h3 &+= d; h4 &+= e; h5 &+= f; h6 &+= g; h7 &+= h
                }
            }
        }
    }

    func digest() -> [UInt8] {
        var out = [UInt8](); out.reserveCapacity(32)
        for word in [h0, h1, h2, h3, h4, h5, h6, h7] {
            out.append(UInt8(word >> 24)); out.append(UInt8((word >> 16) & 0xff))
            out.append(UInt8((word >> 8) & 0xff)); out.append(UInt8(word & 0xff))
        }
        return out
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

    func close() { _ = systemClose(fd) }
}

/// A file that could not be read, named in one line.
public struct POSIXFileError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let code: Int32
    public var description: String { "\(path): \(String(cString: strerror(code)))" }
}

import Foundation

/// The memory this process lets itself use (`--max-memory`, `VLMSH_MAX_MEMORY`; by default the
/// machine's RAM, or its cgroup's limit when that is lower). What a model, an image or a sequence
/// will need is computed from sizes known before anything is allocated and checked here against
/// what is already resident, so an input too big for the machine ends in one line instead of an
/// abort in the allocator or a visit from the OOM killer.
public enum MemoryBudget {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var configured: Int = {
        if let text = ProcessInfo.processInfo.environment["VLMSH_MAX_MEMORY"], let bytes = parse(text) { return bytes }
        return machineBytes
    }()

    /// The limit in bytes.
    public static var limit: Int {
        get { lock.withLock { configured } }
        set { lock.withLock { configured = max(newValue, 1) } }
    }

    /// Physical memory, lowered to the cgroup v2 (`memory.max`) or v1 limit when one is set.
    public static let machineBytes: Int = {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        var bytes = pages > 0 && pageSize > 0 ? pages * pageSize : Int.max
        for file in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let text = try? String(contentsOfFile: file, encoding: .utf8),
               let cgroup = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), cgroup > 0 {
                bytes = min(bytes, cgroup)
            }
        }
        return bytes
    }()

    /// A size as people write it: `8G`, `8GB`, `8GiB`, `512M`, `1.5g`, or plain bytes. Units are
    /// binary (as `free -g` and Docker's `--memory` read them). Nil for anything else or ≤ 0.
    public static func parse(_ text: String) -> Int? {
        var digits = text.trimmingCharacters(in: .whitespaces).lowercased()
        for suffix in ["ib", "b"] where digits.hasSuffix(suffix) && digits.count > suffix.count {
            digits.removeLast(suffix.count); break
        }
        let units: [Character: Double] = ["k": 0x1p10, "m": 0x1p20, "g": 0x1p30, "t": 0x1p40]
        var scale = 1.0
        if let last = digits.last, let unit = units[last] { scale = unit; digits.removeLast() }
        guard let value = Double(digits), value.isFinite, value > 0 else { return nil }
        let bytes = value * scale
        guard bytes >= 1, bytes < 0x1p62 else { return nil }
        return Int(bytes)
    }

    /// Bytes this process has resident now (`/proc/self/statm`), 0 where that cannot be read.
    public static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * max(sysconf(Int32(_SC_PAGESIZE)), 1)
    }

    /// Throws when `bytes` more (a Double: estimates of absurd inputs overflow Int) would take
    /// this process past the limit. `what` names the thing being sized, as the user knows it.
    public static func require(_ bytes: Double, for what: @autoclosure () -> String) throws {
        let limit = Double(self.limit), resident = Double(residentBytes())
        guard bytes.isFinite, resident + bytes <= limit else {
            throw MemoryLimitError(what: what(), bytes: bytes, resident: resident, limit: limit)
        }
    }

    /// Sizes as `31.4 GB` (decimal, one digit) or `650 MB`.
    public static func describe(_ bytes: Double) -> String {
        guard bytes.isFinite else { return "an unbounded amount" }
        return bytes >= 1e9 ? String(format: "%.1f GB", bytes / 1e9) : String(format: "%.0f MB", (bytes / 1e6).rounded(.up))
    }
}

/// Something would need more memory than `MemoryBudget` allows.
public struct MemoryLimitError: Error, CustomStringConvertible {
    public let what: String
    public let bytes: Double
    public let resident: Double
    public let limit: Double

    public var description: String {
        let used = resident > 0 ? " with \(MemoryBudget.describe(resident)) already in use" : ""
        return "\(what) would need about \(MemoryBudget.describe(bytes)), more than the \(MemoryBudget.describe(limit)) limit\(used) (--max-memory)"
    }
}

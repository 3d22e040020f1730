import Foundation

/// Work splitting over the machine's cores. Kernels call `parallelFor` with a total item count and
/// a minimum chunk so tiny problems stay on one thread (dispatch costs more than the work).
public enum Parallel {
    /// Number of worker threads; `VLMSH_THREADS` overrides the core count.
    nonisolated(unsafe) public static var threads: Int = {
        if let s = ProcessInfo.processInfo.environment["VLMSH_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Calls `body` on disjoint sub-ranges covering `0..<count`, on up to `threads` threads.
    @inlinable
    public static func forEach(_ count: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let chunks = min(threads, max(1, count / max(minChunk, 1)))
        if chunks <= 1 { body(0..<count); return }
        let per = (count + chunks - 1) / chunks
        withoutActuallyEscaping(body) { body in
            // Each thread gets a disjoint range; callers own the data race story.
            nonisolated(unsafe) let body = body
            DispatchQueue.concurrentPerform(iterations: chunks) { c in
                let lo = c * per, hi = min(count, lo + per)
                if lo < hi { body(lo..<hi) }
            }
        }
    }
}

import CVLMKernels
import Foundation

/// Work splitting over the machine's cores. Kernels call `forEach` with a total item count and a
/// minimum chunk so tiny problems stay on one thread (dispatch costs more than the work). The
/// threads are a persistent pool that spins briefly between loops (Sources/CVLMKernels/thread_pool.c):
/// a decode step runs hundreds of loops of a few microseconds each.
public enum Parallel {
    /// Number of worker threads; `VLMSH_THREADS` overrides the core count. Raising it later grows
    /// the pool for good, and every loop then waits for each of its workers to leave (spinning
    /// threads beyond the cores make that a scheduler's time slice per loop).
    nonisolated(unsafe) public static var threads: Int = {
        if let s = ProcessInfo.processInfo.environment["VLMSH_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Calls `body` on disjoint sub-ranges covering `0..<count`, on up to `threads` threads.
    public static func forEach(_ count: Int, minChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        let chunks = min(threads, max(1, count / max(minChunk, 1)))
        if chunks <= 1 { body(0..<count); return }
        let per = (count + chunks - 1) / chunks
        run(chunks) { c in
            let lo = c * per, hi = min(count, lo + per)
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Calls `body(c)` once for every c in `0..<chunks`, spread over up to `threads` threads; the
    /// chunks must touch disjoint data (callers own the data race story). Returns when all ran.
    public static func run(_ chunks: Int, _ body: (Int) -> Void) {
        if chunks <= 1 || threads <= 1 { for c in 0..<chunks { body(c) }; return }
        withoutActuallyEscaping(body) { body in
            var job = body
            withUnsafeMutablePointer(to: &job) { job in
                vlm_parallel_run(Int32(chunks), Int32(threads), { context, chunk in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(chunk))
                }, job)
            }
        }
    }
}

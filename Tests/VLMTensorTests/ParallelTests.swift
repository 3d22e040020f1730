import Foundation
import VLMTensor
import XCTest

/// The persistent thread pool behind Parallel: every chunk runs exactly once, and loops started
/// from inside a chunk or from several threads at once still complete (on the caller).
final class ParallelTests: XCTestCase {
    func testEveryChunkRunsOnce() {
        for chunks in [0, 1, 2, 3, 64, 1000] {
            let counts = UnsafeMutablePointer<Int>.allocate(capacity: max(chunks, 1))
            defer { counts.deallocate() }
            counts.initialize(repeating: 0, count: max(chunks, 1))
            for _ in 0..<50 { Parallel.run(chunks) { counts[$0] += 1 } }
            XCTAssertEqual((0..<chunks).filter { counts[$0] != 50 }, [], "\(chunks) chunks")
        }
    }

    /// Back-to-back loops of different sizes, as a training step runs them: a worker that has
    /// not yet left one loop must not take a chunk of the next (that ran chunks twice, or a
    /// returned loop's closure, and trapped a long fine-tune).
    func testBackToBackLoopsOfDifferentSizes() {
        let sizes = [2, 3, 7, 64], rounds = 200_000
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: 64 * sizes.count)
        defer { counts.deallocate() }
        counts.initialize(repeating: 0, count: 64 * sizes.count)
        for r in 0..<rounds {
            let k = r % sizes.count
            Parallel.run(sizes[k]) { counts[k * 64 + $0] += 1 }
        }
        for (k, n) in sizes.enumerated() {
            XCTAssertEqual((0..<64).filter { counts[k * 64 + $0] != ($0 < n ? rounds / sizes.count : 0) }, [], "\(n) chunks")
        }
    }

    func testForEachCoversTheRange() {
        for count in [0, 1, 7, 1000] {
            let seen = UnsafeMutablePointer<Int>.allocate(capacity: max(count, 1))
            defer { seen.deallocate() }
            seen.initialize(repeating: 0, count: max(count, 1))
            Parallel.forEach(count, minChunk: 3) { range in for i in range { seen[i] += 1 } }
            XCTAssertEqual((0..<count).filter { seen[$0] != 1 }, [], "count \(count)")
        }
    }

    func testNestedLoopsRunOnTheCaller() {
        let n = 16, m = 100
        let cells = UnsafeMutablePointer<Int>.allocate(capacity: n * m)
        defer { cells.deallocate() }
        cells.initialize(repeating: 0, count: n * m)
        Parallel.run(n) { i in Parallel.forEach(m) { range in for j in range { cells[i * m + j] += i + j } } }
        XCTAssertEqual((0..<(n * m)).filter { cells[$0] != $0 / m + $0 % m }, [])
    }

    func testLoopsFromSeveralThreadsAtOnce() {
        let callers = 4, rounds = 200, chunks = 32
        let sums = UnsafeMutablePointer<Int>.allocate(capacity: callers * chunks)
        defer { sums.deallocate() }
        sums.initialize(repeating: 0, count: callers * chunks)
        nonisolated(unsafe) let shared = sums   // each caller writes its own slice
        DispatchQueue.concurrentPerform(iterations: callers) { caller in
            for _ in 0..<rounds { Parallel.run(chunks) { shared[caller * chunks + $0] += 1 } }
        }
        XCTAssertEqual((0..<(callers * chunks)).filter { sums[$0] != rounds }, [])
    }
}

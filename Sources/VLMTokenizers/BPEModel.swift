import Foundation

/// Rank-ordered BPE (HF `model.type = BPE`): byte-level (GPT-2) or character-level with byte fallback.
final class BPEModel: @unchecked Sendable {
    let vocab: [String: Int]
    /// (left id << 32 | right id) -> (rank << 32 | merged id).
    private let merges: [UInt64: UInt64]
    /// Byte-level input: words are UTF-8 bytes, each starting as its alphabet character's token.
    let byteLevel: Bool
    /// Token of each byte: the alphabet character (byte level) or `<0xNN>` (byte fallback); -1 if none.
    private let byteTokens: [Int32]
    let byteFallback: Bool
    let unknownID: Int?
    let fuseUnknown: Bool
    /// Llama 3 style: a word that is itself in the vocabulary is not merged piecewise.
    let ignoreMerges: Bool

    private var cache: [String: [Int32]] = [:]
    private let cacheLock = NSLock()
    private static let cacheLimit = 200_000

    init(vocab: [String: Int], merges: [(String, String)], byteLevel: Bool, byteFallback: Bool,
         unknownID: Int?, fuseUnknown: Bool, ignoreMerges: Bool) {
        self.vocab = vocab
        self.byteLevel = byteLevel
        self.byteFallback = byteFallback
        self.unknownID = unknownID
        self.fuseUnknown = fuseUnknown
        self.ignoreMerges = ignoreMerges
        var table: [UInt64: UInt64] = [:]
        table.reserveCapacity(merges.count)
        for (rank, (left, right)) in merges.enumerated() {
            guard let l = vocab[left], let r = vocab[right], let m = vocab[left + right] else { continue }
            let key = UInt64(l) << 32 | UInt64(r)
            if table[key] == nil { table[key] = UInt64(rank) << 32 | UInt64(m) }
        }
        self.merges = table
        byteTokens = (0..<256).map { b in
            let spelling = byteLevel
                ? String(Unicode.Scalar(ByteLevelAlphabet.scalarForByte[b])!)
                : String(format: "<0x%02X>", b)
            return vocab[spelling].map(Int32.init) ?? -1
        }
    }

    /// Appends the ids of one pre-tokenized word.
    func tokenize(_ word: String, into output: inout [Int]) {
        cacheLock.lock()
        let cached = cache[word]
        cacheLock.unlock()
        if let cached {
            for id in cached { output.append(Int(id)) }
            return
        }
        let ids = tokenizeUncached(word)
        // Long words (unsplit SentencePiece text) rarely repeat; keep the cache for real words.
        guard word.utf8.count <= 256 else {
            for id in ids { output.append(Int(id)) }
            return
        }
        cacheLock.lock()
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[word] = ids
        cacheLock.unlock()
        for id in ids { output.append(Int(id)) }
    }

    private func tokenizeUncached(_ word: String) -> [Int32] {
        if ignoreMerges {
            let spelling = byteLevel ? ByteLevelAlphabet.encode(word.utf8) : word
            if let id = vocab[spelling] { return [Int32(id)] }
        }
        var symbols = initialSymbols(word)
        if symbols.count > 1 {
            if symbols.count <= 48 { mergeByScanning(&symbols) } else { mergeWithHeap(&symbols) }
        }
        return symbols
    }

    private func initialSymbols(_ word: String) -> [Int32] {
        var symbols: [Int32] = []
        if byteLevel {
            symbols.reserveCapacity(word.utf8.count)
            for b in word.utf8 {
                let id = byteTokens[Int(b)]
                if id >= 0 { symbols.append(id) } else if let unknownID { symbols.append(Int32(unknownID)) }
            }
            return symbols
        }
        symbols.reserveCapacity(word.unicodeScalars.count)
        var previousWasUnknown = false
        for scalar in word.unicodeScalars {
            if let id = vocab[String(scalar)] {
                symbols.append(Int32(id))
                previousWasUnknown = false
                continue
            }
            if byteFallback {
                let bytes = Array(String(scalar).utf8)
                if bytes.allSatisfy({ byteTokens[Int($0)] >= 0 }) {
                    for b in bytes { symbols.append(byteTokens[Int(b)]) }
                    previousWasUnknown = false
                    continue
                }
            }
            if let unknownID {
                if !(fuseUnknown && previousWasUnknown) { symbols.append(Int32(unknownID)) }
                previousWasUnknown = true
            }
        }
        return symbols
    }

    @inline(__always)
    private func merge(_ left: Int32, _ right: Int32) -> UInt64? {
        merges[UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))]
    }

    /// Short words: repeatedly merge the lowest-ranked pair (leftmost on ties).
    private func mergeByScanning(_ symbols: inout [Int32]) {
        while symbols.count > 1 {
            var bestRank = UInt64.max, bestIndex = -1, bestID: Int32 = 0
            for i in 0..<(symbols.count - 1) {
                if let m = merge(symbols[i], symbols[i + 1]), m >> 32 < bestRank {
                    bestRank = m >> 32
                    bestIndex = i
                    bestID = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
                }
            }
            if bestIndex < 0 { return }
            symbols[bestIndex] = bestID
            symbols.remove(at: bestIndex + 1)
        }
    }

    /// Long words (e.g. CJK runs): same order with a priority queue over a linked list of symbols.
    private func mergeWithHeap(_ symbols: inout [Int32]) {
        let n = symbols.count
        var ids = symbols
        var next = Array(1...n)  // n = none
        var prev = Array(-1..<(n - 1))
        var alive = [Bool](repeating: true, count: n)
        var heap = PriorityQueue<MergeCandidate>()
        for i in 0..<(n - 1) {
            if let m = merge(ids[i], ids[i + 1]) { heap.push(MergeCandidate(rank: m >> 32, position: i, left: ids[i], right: ids[i + 1])) }
        }
        while let top = heap.pop() {
            let p = top.position
            guard alive[p], ids[p] == top.left else { continue }
            let q = next[p]
            guard q < n, ids[q] == top.right, let m = merge(top.left, top.right) else { continue }
            ids[p] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            alive[q] = false
            next[p] = next[q]
            if next[q] < n { prev[next[q]] = p }
            if prev[p] >= 0, let lm = merge(ids[prev[p]], ids[p]) {
                heap.push(MergeCandidate(rank: lm >> 32, position: prev[p], left: ids[prev[p]], right: ids[p]))
            }
            if next[p] < n, let rm = merge(ids[p], ids[next[p]]) {
                heap.push(MergeCandidate(rank: rm >> 32, position: p, left: ids[p], right: ids[next[p]]))
            }
        }
        symbols.removeAll(keepingCapacity: true)
        var i = 0
        while i < n { symbols.append(ids[i]); i = next[i] }
    }
}

/// Min-heap of candidate merges ordered by (rank, position).
/// A candidate merge: lowest rank first, then leftmost.
struct MergeCandidate: QueueOrdered {
    var rank: UInt64, position: Int, left: Int32, right: Int32

    static func precedes(_ a: MergeCandidate, _ b: MergeCandidate) -> Bool {
        a.rank != b.rank ? a.rank < b.rank : a.position < b.position
    }
}

/// SentencePiece BPE driven by piece scores (GGUF `tokenizer.ggml.model = llama`), as llama.cpp's
/// SPM tokenizer does: repeatedly join the adjacent pair whose concatenation is the vocabulary
/// piece with the highest score (leftmost on ties); characters left outside the vocabulary become
/// `<0xNN>` byte tokens.
final class SentencePieceScoreModel: Sendable {
    let vocab: [String: Int]
    let scores: [Float]
    let unknownID: Int?
    private let byteTokens: [Int]

    init(vocab: [String: Int], scores: [Float], unknownID: Int?) {
        self.vocab = vocab
        self.scores = scores
        self.unknownID = unknownID
        byteTokens = (0..<256).map { vocab[String(format: "<0x%02X>", $0)] ?? -1 }
    }

    private struct Symbol { var start: Int; var end: Int; var prev: Int; var next: Int }

    /// Appends the ids of `text` (spaces already replaced by "▁").
    func tokenize(_ text: String, into output: inout [Int]) {
        let scalars = Array(text.unicodeScalars)
        guard !scalars.isEmpty else { return }
        var symbols = scalars.indices.map { Symbol(start: $0, end: $0 + 1, prev: $0 - 1, next: $0 + 1) }
        var queue = PriorityQueue<Bigram>()

        func piece(_ start: Int, _ end: Int) -> String {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[start..<end])
            return String(view)
        }
        func addBigram(_ left: Int, _ right: Int) {
            guard left >= 0, right < symbols.count else { return }
            let start = symbols[left].start, end = symbols[right].end
            guard let id = vocab[piece(start, end)], id < scores.count else { return }
            queue.push(Bigram(score: scores[id], left: left, length: end - start))
        }

        for i in 1..<symbols.count { addBigram(i - 1, i) }
        while let bigram = queue.pop() {
            let left = bigram.left
            let right = symbols[left].next
            // Stale entries: one side already merged into something else.
            guard right < symbols.count, symbols[left].end > symbols[left].start,
                  symbols[right].end > symbols[right].start,
                  symbols[right].end - symbols[left].start == bigram.length else { continue }
            symbols[left].end = symbols[right].end
            symbols[right].end = symbols[right].start  // empty = merged away
            symbols[left].next = symbols[right].next
            if symbols[right].next < symbols.count { symbols[symbols[right].next].prev = left }
            addBigram(symbols[left].prev, left)
            addBigram(left, symbols[left].next)
        }

        var i = 0
        while i < symbols.count {
            let text = piece(symbols[i].start, symbols[i].end)
            if let id = vocab[text] {
                output.append(id)
            } else {
                for byte in text.utf8 {
                    let id = byteTokens[Int(byte)]
                    if id >= 0 { output.append(id) } else if let unknownID { output.append(unknownID) }
                }
            }
            i = symbols[i].next
        }
    }
}

/// A candidate merge of two adjacent symbols: highest score first, then leftmost.
private struct Bigram: QueueOrdered {
    var score: Float, left: Int, length: Int

    static func precedes(_ a: Bigram, _ b: Bigram) -> Bool {
        a.score != b.score ? a.score > b.score : a.left < b.left
    }
}

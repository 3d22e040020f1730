/// An element of a `PriorityQueue`: `precedes` says which of two comes out first.
protocol QueueOrdered {
    static func precedes(_ a: Self, _ b: Self) -> Bool
}

/// A binary heap; `pop` returns the element that precedes all others. Both merge models use it:
/// byte-level BPE (lowest rank first) and SentencePiece scores (highest score first).
struct PriorityQueue<Element: QueueOrdered> {
    private var items: [Element] = []

    mutating func push(_ item: Element) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard Element.precedes(items[child], items[parent]) else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> Element? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let l = 2 * parent + 1, r = l + 1
                var first = parent
                if l < items.count && Element.precedes(items[l], items[first]) { first = l }
                if r < items.count && Element.precedes(items[r], items[first]) { first = r }
                if first == parent { break }
                items.swapAt(parent, first)
                parent = first
            }
        }
        return top
    }
}

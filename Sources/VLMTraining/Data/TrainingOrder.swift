import VLMTensor
import Foundation
import VLMGeneration

/// The order examples are visited in during one epoch. All randomness comes from a `SeededRandom`,
/// so an order is reproducible from the seed, and successive epochs (drawing on from the same
/// stream, or from `random(seed:epoch:)`) differ.
public enum TrainingOrder: Sendable, Equatable {
    /// File order (evaluation).
    case sequential
    /// A uniform random permutation (the Hugging Face Trainer's default `RandomSampler`).
    case shuffled
    /// LLaVA's `get_length_grouped_indices`: shuffle, cut into megabatches of
    /// `batchSize · gradientAccumulation` (LLaVA passes `world_size · gradient_accumulation_steps`
    /// as the sampler's world size; one process here), sort each by length, longest first, and
    /// deal it into `gradientAccumulation` micro-batches of similar total length.
    case lengthGrouped(batchSize: Int, gradientAccumulation: Int)
    /// LLaVA's `--group_by_modality_length` (`get_modality_length_grouped_indices`): multimodal and
    /// text-only rows are length-grouped separately and cut into megabatches; the megabatches are
    /// shuffled together, so every batch is all-image or all-text except those of the megabatch
    /// built from the two leftovers (placed first) and a final partial one.
    case modalityLengthGrouped(batchSize: Int, gradientAccumulation: Int)

    /// The epoch's order over examples with LLaVA `modality_lengths` (positive: has an image,
    /// negative: text only; the magnitude is the length).
    public func indices(modalityLengths lengths: [Int], random: inout SeededRandom) -> [Int] {
        switch self {
        case .sequential:
            return Array(lengths.indices)
        case .shuffled:
            return random.permutation(lengths.count)
        case .lengthGrouped(let batchSize, let accumulation):
            return Self.lengthGrouped(lengths.map(abs), batchSize: batchSize, worldSize: accumulation, random: &random)
        case .modalityLengthGrouped(let batchSize, let accumulation):
            return Self.modalityGrouped(lengths, batchSize: batchSize, worldSize: accumulation, random: &random)
        }
    }

    /// The epoch's order over `dataset`; its lengths are asked for only by the grouping orders
    /// (for a lazily read file they take a scan of the whole text).
    public func indices(for dataset: TrainingDataset, random: inout SeededRandom) -> [Int] {
        switch self {
        case .sequential: return Array(0..<dataset.count)
        case .shuffled: return random.permutation(dataset.count)
        case .lengthGrouped, .modalityLengthGrouped: return indices(modalityLengths: dataset.modalityLengths, random: &random)
        }
    }

    /// The order of epoch `epoch` for a run seeded with `seed` (each epoch has its own stream, so
    /// a resumed run reproduces the order without replaying earlier epochs).
    public func indices(for dataset: TrainingDataset, seed: UInt64, epoch: Int) -> [Int] {
        var random = Self.random(seed: seed, epoch: epoch)
        return indices(for: dataset, random: &random)
    }

    /// An independent stream for one epoch of a seeded run.
    public static func random(seed: UInt64, epoch: Int) -> SeededRandom {
        var base = SeededRandom(seed: seed ^ 0x5DEE_CE66_D1CE_4E5B)
        var mixed = SeededRandom(seed: base.next() ^ (UInt64(truncatingIfNeeded: epoch) &* 0xD1B5_4A32_D192_ED03))
        return SeededRandom(seed: mixed.next())
    }

    /// Consecutive batches of `order` (the last one may be shorter, as the Trainer's DataLoader).
    public static func batches(_ order: [Int], batchSize: Int) -> [[Int]] {
        precondition(batchSize > 0, "batch size must be positive")
        return stride(from: 0, to: order.count, by: batchSize).map { Array(order[$0..<min($0 + batchSize, order.count)]) }
    }

    // MARK: LLaVA's llava_trainer.py

    /// `get_length_grouped_indices` (lengths positive).
    static func lengthGrouped(_ lengths: [Int], batchSize: Int, worldSize: Int, random: inout SeededRandom) -> [Int] {
        let indices = random.permutation(lengths.count)
        let megabatchSize = max(1, worldSize * batchSize)
        var out: [Int] = []
        out.reserveCapacity(lengths.count)
        for start in stride(from: 0, to: indices.count, by: megabatchSize) {
            // Python's sorted(reverse=True) is stable: equal lengths keep their shuffled order.
            let megabatch = indices[start..<min(start + megabatchSize, indices.count)].enumerated()
                .sorted { lengths[$0.element] != lengths[$1.element] ? lengths[$0.element] > lengths[$1.element] : $0.offset < $1.offset }
                .map(\.element)
            for chunk in splitToEvenChunks(megabatch, lengths: lengths, count: max(1, worldSize)) { out += chunk }
        }
        return out
    }

    /// `split_to_even_chunks`: strided when the megabatch does not divide evenly, else each index
    /// (longest first) goes to the chunk with the least total length that is not yet full.
    static func splitToEvenChunks(_ indices: [Int], lengths: [Int], count: Int) -> [[Int]] {
        if indices.count % count != 0 {
            return (0..<count).map { c in stride(from: c, to: indices.count, by: count).map { indices[$0] } }
        }
        let perChunk = indices.count / count
        var chunks = [[Int]](repeating: [], count: count)
        var totals = [Double](repeating: 0, count: count)
        for index in indices {
            var shortest = 0
            for c in 1..<count where totals[c] < totals[shortest] { shortest = c }
            chunks[shortest].append(index)
            totals[shortest] += Double(lengths[index])
            if chunks[shortest].count == perChunk { totals[shortest] = .infinity }
        }
        return chunks
    }

    /// `get_modality_length_grouped_indices`.
    static func modalityGrouped(_ lengths: [Int], batchSize: Int, worldSize: Int, random: inout SeededRandom) -> [Int] {
        let multimodal = lengths.indices.filter { lengths[$0] > 0 }
        let language = lengths.indices.filter { lengths[$0] <= 0 }
        if multimodal.isEmpty || language.isEmpty {
            return lengthGrouped(lengths.map(abs), batchSize: batchSize, worldSize: worldSize, random: &random)
        }
        let mmShuffle = lengthGrouped(multimodal.map { lengths[$0] }, batchSize: batchSize, worldSize: worldSize, random: &random)
            .map { multimodal[$0] }
        let langShuffle = lengthGrouped(language.map { -lengths[$0] }, batchSize: batchSize, worldSize: worldSize, random: &random)
            .map { language[$0] }
        let megabatchSize = max(1, worldSize * batchSize)
        let mmMegabatches = batches(mmShuffle, batchSize: megabatchSize)
        let langMegabatches = batches(langShuffle, batchSize: megabatchSize)
        var additional = mmMegabatches.last! + langMegabatches.last!
        let full = Array(mmMegabatches.dropLast()) + Array(langMegabatches.dropLast())
        var megabatches = random.permutation(full.count).map { full[$0] }
        if additional.count >= megabatchSize {
            megabatches.insert(Array(additional.prefix(megabatchSize)), at: 0)
            additional = Array(additional.dropFirst(megabatchSize))
        }
        if !additional.isEmpty { megabatches.append(additional) }
        return megabatches.flatMap { $0 }
    }
}

import Foundation
import VLMTokenizers

/// Examples collated for one forward pass (LLaVA's `DataCollatorForSupervisedDataset`): rows
/// right-padded to the longest one, flattened row-major as `[batch·length]`.
public struct TrainingBatch: Sendable {
    /// `batch` rows of `length` positions (the longest example in the batch).
    public let layout: SequenceLayout
    /// `[batch·length]`, padded with `padID`. Image rows hold the image token id.
    public let inputIDs: [Int]
    /// `[batch·length]`, unshifted labels padded with -100.
    public let labels: [Int]
    /// `[batch·length]`, what each position predicts: `targets[r·L + i] = labels[r][i + 1]`; the
    /// last position of every row (and all padding) is -100 (Hugging Face's causal-LM shift).
    public let targets: [Int]
    /// Real (unpadded) length of each row.
    public let lengths: [Int]
    /// Each row's images (absolute paths) in placeholder order, empty for text-only rows.
    public let imagePaths: [[String]]
    /// For each row, the flattened positions (`r·L + i`) its images' feature rows go to, image
    /// after image (feature row k of the row's stacked images replaces position
    /// `imagePositions[r][k]`); empty for text-only rows.
    public let imagePositions: [[Int]]
    /// Positions with a target (`targets` ≠ -100): the loss normalizer's share of this batch.
    public let labelTokenCount: Int
    /// Where each row came from ("file:line").
    public let sources: [String]
    /// Each row's tokenized `image_token_texts` (nil for a row without them).
    public let imageTokenTexts: [[[Int]]?]
    public let padID: Int

    public init(examples: [TrainingExample], padID: Int) {
        let length = examples.map(\.length).max() ?? 0
        let batch = examples.count
        layout = SequenceLayout(batch: batch, length: length)
        self.padID = padID
        var ids = [Int](repeating: padID, count: batch * length)
        var labels = [Int](repeating: ignoreIndex, count: batch * length)
        var targets = [Int](repeating: ignoreIndex, count: batch * length)
        var positions: [[Int]] = []
        var count = 0
        for (r, example) in examples.enumerated() {
            let base = r * length
            for (i, id) in example.inputIDs.enumerated() { ids[base + i] = id }
            for (i, label) in example.labels.enumerated() {
                labels[base + i] = label
                if i > 0 && label != ignoreIndex {
                    targets[base + i - 1] = label
                    count += 1
                }
            }
            positions.append(example.imageRanges.flatMap { $0.map { base + $0 } })
        }
        inputIDs = ids
        self.labels = labels
        self.targets = targets
        lengths = examples.map(\.length)
        imagePaths = examples.map(\.imagePaths)
        imagePositions = positions
        labelTokenCount = count
        sources = examples.map(\.source)
        imageTokenTexts = examples.map(\.imageTokenTexts)
    }

    /// All image positions of the batch, rows in order: where the stacked features of the batch's
    /// images (one `[featureCount, hidden]` block per image, rows and their images in order) are scattered.
    public var imageRows: [Int] { imagePositions.flatMap { $0 } }

    /// The padding id for `tokenizer`: its pad token, else its EOS, else 0.
    public static func padID(for tokenizer: Tokenizer) -> Int {
        tokenizer.paddingTokenID ?? tokenizer.eosTokenID ?? 0
    }
}

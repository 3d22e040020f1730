import Foundation

/// One supervised training sequence, ready for the model: the ids as the language model sees them
/// (each image already expanded to its feature rows) and the label of every position.
public struct TrainingExample: Sendable, Equatable {
    /// Token ids; an image occupies `featureCount` consecutive copies of the image token id (which
    /// may be a sentinel outside the vocabulary, e.g. LLaVA's -200: never embed those positions).
    public var inputIDs: [Int]
    /// Same length as `inputIDs`: the token to predict at each position (unshifted, as Hugging Face
    /// labels), `ignoreIndex` (-100) for everything but the assistant's replies and image rows.
    public var labels: [Int]
    /// Absolute paths of the row's images, in the order their placeholders come.
    public var imagePaths: [String]
    /// Positions of each image's feature rows within `inputIDs`, one range per image, in order.
    public var imageRanges: [Range<Int>]
    /// Where the row came from, "file:line" (or "file: element N").
    public var source: String
    /// The row's `image_token_texts`, tokenized: for each image feature row, the token ids of the
    /// text it should stand for (what the `image-token-embeddings` objective trains toward).
    public var imageTokenTexts: [[Int]]?

    public init(inputIDs: [Int], labels: [Int], imagePaths: [String] = [], imageRanges: [Range<Int>] = [], source: String,
                imageTokenTexts: [[Int]]? = nil) {
        self.inputIDs = inputIDs
        self.labels = labels
        self.imagePaths = imagePaths
        self.imageRanges = imageRanges
        self.source = source
        self.imageTokenTexts = imageTokenTexts
    }

    /// A row with at most one image.
    public init(inputIDs: [Int], labels: [Int], imagePath: String?, imageRange: Range<Int>?, source: String,
                imageTokenTexts: [[Int]]? = nil) {
        self.init(inputIDs: inputIDs, labels: labels, imagePaths: imagePath.map { [$0] } ?? [],
                  imageRanges: imageRange.map { [$0] } ?? [], source: source, imageTokenTexts: imageTokenTexts)
    }

    public var hasImage: Bool { !imagePaths.isEmpty }
    /// The first image's path and feature rows (the only ones of a single-image row).
    public var imagePath: String? { imagePaths.first }
    public var imageRange: Range<Int>? { imageRanges.first }
    /// Positions, image rows included.
    public var length: Int { inputIDs.count }
    /// LLaVA's `modality_lengths`: the length, negative for a text-only row (what
    /// `--group-by-modality-length` groups on).
    public var modalityLength: Int { hasImage ? length : -length }
    /// Predicted tokens once labels are shifted for the causal loss (`labels[1...]` ≠ -100).
    public var targetCount: Int { labels.dropFirst().reduce(0) { $0 + ($1 == ignoreIndex ? 0 : 1) } }
}

/// A problem with training data. Thrown by `TrainingDataset.load` for a file it cannot read, for
/// bad rows when they are not skipped (the first one, "file:line: message", and their count), and
/// for a dataset left with no rows.
public struct TrainingDataError: Error, CustomStringConvertible, Sendable {
    public let message: String
    /// Every bad row ("file:line: message"), when the error is about rows.
    public let problems: [String]
    public init(_ message: String, problems: [String] = []) { self.message = message; self.problems = problems }
    public var description: String { message }
}

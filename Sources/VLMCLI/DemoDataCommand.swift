import ArgumentParser
import Foundation
import VLMImage
import VLMDemo
import VLMTensor

/// `vlmsh make-demo-data`: the synthetic shapes dataset (PNG images, LLaVA-format records) for
/// training and evaluating a small demo vision-language model from scratch.
struct DemoDataCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "make-demo-data",
        abstract: "Write a synthetic shapes image dataset with LLaVA-format questions and answers.",
        discussion: """
            Writes DIR/images/<split>-NNNNNN.png, DIR/train.json, DIR/validation.json, DIR/test.json \
            (LLaVA-format records, each tagged with its question kind: caption, colour, shape, count, \
            where, exists) and DIR/dataset.json (counts, seeds, vocabulary, generator version). \
            The same seed and sizes always give byte-identical files.
            """)

    @Option(name: .long, help: "Output folder (created if needed; existing files are overwritten).") var out: String
    @Option(name: .long, help: "Training images.") var train = 5000
    @Option(name: .long, help: "Validation images.") var validation = 500
    @Option(name: .long, help: "Test images.") var test = 500
    @Option(name: .long, help: "Dataset seed; each split derives its own.") var seed: UInt64 = 0
    @Option(name: .long, help: "Image side in pixels.") var imageSize = 64
    @Option(name: .long, help: "scattered: one to four shapes; tiles: one shape in all nine cells; copies: one shape in one to nine cells (the last two are for alignment); free: one to four shapes anywhere, of any size, turned, in varied colours, on any background, at one to three times --image-size.") var layout: SceneLayout = .scattered
    @Option(name: .long, help: "How far shapes move within their cells: 0 centred … 1 anywhere.") var jitter = 1.0
    @Option(name: .long, help: "Only questions of these kinds (a comma list; caption alone is pretraining data).") var kinds: DemoKindList?
    @Flag(name: .long, help: "train.json: one multi-turn conversation per image (every question, caption last) instead of one record per question.") var multiTurn = false
    @Flag(name: .long, help: "Ask half the colour, shape and count questions in other wordings (\"What color is the star?\", \"How many objects are there?\").") var varyWording = false
    @Option(name: .long, help: "With --multi-turn: the share of training conversations that begin with questions about the previous image before this one is attached.") var twoPictures = 0.0
    @Option(name: .long, help: "image_token_texts name the patches of a N×N grid (3, 6, 9 or 12; a tower with --image-size/N pixel patches): each patch holds the shape whose centre lies in it, or nothing.") var tokenGrid = 3
    @Flag(name: .long, help: "image_token_texts: a patch also holds a shape that covers a quarter of it.") var tokenCovered = false
    @Flag(name: .long, help: "image_token_texts start with the number of shapes (\"three\"), for the class token of a tower that keeps it (init-llava --vision-feature-select full).") var countToken = false
    @Flag(name: .long, help: "Print one JSON object instead of the summary line.") var json = false

    var style: SceneStyle { SceneStyle(layout: layout, jitter: jitter) }

    func validate() throws {
        if !(0...1).contains(jitter) { throw ValidationError("--jitter must be in 0...1") }
        if train < 0 || validation < 0 || test < 0 { throw ValidationError("--train, --validation and --test must be ≥ 0") }
        if !(0...1).contains(twoPictures) { throw ValidationError("--two-pictures must be in 0...1") }
        if twoPictures > 0 && !multiTurn { throw ValidationError("--two-pictures needs --multi-turn") }
        if !ImageTokenLabels.grids.contains(tokenGrid) { throw ValidationError("--token-grid must be one of \(ImageTokenLabels.grids)") }
        let sizes = ShapeScene.imageSizes
        if !sizes.contains(imageSize) {
            throw ValidationError("--image-size must be in \(sizes.lowerBound)...\(sizes.upperBound)")
        }
    }

    /// Writes the dataset; returns it with the summary line.
    func execute() throws -> (summary: DemoDataset.Summary, line: String) {
        let summary = try DemoDataset.write(
            to: out, counts: [.train: train, .validation: validation, .test: test], seed: seed, imageSize: imageSize,
            style: style, multiTurnTrain: multiTurn, kinds: kinds?.kinds, varyWording: varyWording, twoPictures: twoPictures, tokenLabels: ImageTokenLabels(grid: tokenGrid, covered: tokenCovered, classToken: countToken))
        let rate = Double(summary.images) / max(summary.seconds, 1e-9)
        let parts = summary.splits.map { "\($0.split.rawValue) \($0.images)/\($0.records)" }.joined(separator: ", ")
        return (summary, "\(summary.images) images, \(summary.records) records (\(parts) images/records), "
            + "\(imageSize)x\(imageSize), seed \(seed), in \(out): " + String(format: "%.2f s, %.0f images/s", summary.seconds, rate))
    }

    func run() async throws {
        let (summary, line) = try execute()
        let rate = Double(summary.images) / max(summary.seconds, 1e-9)
        if json {
            var splits: [String: Any] = [:]
            for s in summary.splits {
                splits[s.split.rawValue] = [
                    "images": s.images, "records": s.records,
                    "kinds": Dictionary(uniqueKeysWithValues: s.kinds.map { ($0.key.rawValue, $0.value) }),
                ] as [String: Any]
            }
            try printJSON([
                "out": out, "seed": seed, "image_size": imageSize, "layout": layout.rawValue, "jitter": jitter, "version": DemoDataset.version,
                "images": summary.images, "records": summary.records, "splits": splits,
                "seconds": summary.seconds, "images_per_second": rate, "threads": Parallel.threads,
            ])
        } else {
            print(line)
        }
    }
}

import Foundation
import VLMFormats
import VLMImage
import VLMTensor

/// The demo dataset written by `vlmsh make-demo-data`: synthetic shapes images (PNG) with
/// LLaVA-format question/answer records, in three splits.
///
///     DIR/images/train-000000.png …      one PNG per image, 8-bit RGB, imageSize × imageSize
///     DIR/train.json, validation.json, test.json
///         [{"id": "train-000000-colour", "image": "images/train-000000.png", "kind": "colour",
///           "image_token_texts": ["small red star", "nothing", …],   (the token grid's patches, reading order)
///           "conversations": [{"from": "human", "value": "<image>\nWhat colour is the star?"},
///                             {"from": "gpt", "value": "Red."}]}, …]
///     DIR/dataset.json                   generator, version, seed, image size, per-split counts
///
/// With `multiTurnTrain`, train.json has one record per image instead (kind "conversation"): the
/// image's questions as consecutive turns in a seeded order with the caption last, LLaVA's
/// instruction-data layout. One pass over the image then trains every answer, and no earlier
/// answer gives away a later one (the caption, which would, comes last).
///
/// Everything is a function of (seed, split, index, image size): each split has its own seed
/// derived from the main one, each image its own seed derived from its split's, so the images can
/// be made in any order, on any number of threads, and come out byte-identical.
public enum DemoDataset {
    public static let generator = "vlmsh make-demo-data"
    /// Bumped whenever the same seed would give different images or records.
    public static let version = 4

    public enum Split: String, CaseIterable, Sendable {
        case train, validation, test
    }

    /// The split's seed, derived from the dataset seed.
    public static func splitSeed(_ seed: UInt64, _ split: Split) -> UInt64 {
        let tag: UInt64
        switch split {
        case .train: tag = 1
        case .validation: tag = 2
        case .test: tag = 3
        }
        return SeededRandom.mix(SeededRandom.mix(seed) ^ (tag &* 0xD6E8_FEB8_6659_FD93))
    }

    /// The seed of image `index` of a split: its scene is `ShapeScene.random(seed:imageSize:)`.
    public static func imageSeed(splitSeed: UInt64, index: Int) -> UInt64 {
        SeededRandom.mix(splitSeed &+ UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15)
    }

    /// The seed choosing an image's questions (a stream separate from its scene's).
    public static func questionSeed(imageSeed: UInt64) -> UInt64 {
        SeededRandom.mix(imageSeed ^ 0x5155_4553_5449_4F4E)
    }

    /// One image of the dataset: its scene and the questions asked about it.
    public struct Item: Sendable {
        public let split: Split
        public let index: Int
        public let scene: ShapeScene
        public let questions: [DemoQuestion]
        /// What `image_token_texts` names (`ShapeScene.tokenTexts`).
        public let tokenLabels: ImageTokenLabels

        /// "images/train-000042.png", relative to the dataset folder.
        public var image: String { "images/\(split.rawValue)-\(DemoDataset.padded(index)).png" }

        /// "train-000042-colour" (an image has at most one question of each kind).
        public func id(_ question: DemoQuestion) -> String {
            "\(split.rawValue)-\(DemoDataset.padded(index))-\(question.kind.rawValue)"
        }

        /// The item as one multi-turn record: the questions in a seeded order, caption last, the
        /// image placeholder opening the first.
        public var conversationJSON: String { conversationJSON(after: nil) }

        /// The item as one multi-turn record, after a chat about `earlier`'s picture when given:
        /// one or two questions about that picture, then this picture attached and every question
        /// about it, so answers follow the newest picture ("image" lists both, in order).
        public func conversationJSON(after earlier: Item?) -> String {
            var rng = SeededRandom(seed: SeededRandom.mix(UInt64(index) ^ 0x434F_4E56))
            func shuffled(_ questions: [DemoQuestion]) -> [DemoQuestion] {
                var asked = questions.filter { $0.kind != .caption }
                for i in stride(from: asked.count - 1, to: 0, by: -1) { asked.swapAt(i, rng.below(i + 1)) }
                return asked
            }
            func turns(_ asked: [DemoQuestion]) -> [String] {
                asked.enumerated().map { i, q in
                    "{\"from\": \"human\", \"value\": \(jsonString((i == 0 ? "<image>\n" : "") + q.question))}, "
                        + "{\"from\": \"gpt\", \"value\": \(jsonString(q.answer))}"
                }
            }
            var all: [String] = []
            if let earlier { all = turns(Array(shuffled(earlier.questions).prefix(1 + rng.below(2)))) }
            all += turns(shuffled(questions) + questions.filter { $0.kind == .caption })
            let id = "\(split.rawValue)-\(DemoDataset.padded(index))"
            let images = earlier.map { "[\(jsonString($0.image)), \(jsonString(image))]" }
            return "{\"id\": \(jsonString(id)), \"image\": \(images ?? jsonString(image)), \"kind\": \"conversation\", "
                + (earlier == nil ? "\"image_token_texts\": \(tokenTextsJSON), " : "")
                + "\"conversations\": [\(all.joined(separator: ", "))]}"
        }

        private var tokenTextsJSON: String { "[" + scene.tokenTexts(tokenLabels).map(jsonString).joined(separator: ", ") + "]" }

        /// The item's records, one JSON object per line.
        public var recordsJSON: [String] {
            let tokenTexts = tokenTextsJSON
            return questions.map { q in
                "{\"id\": \(jsonString(id(q))), \"image\": \(jsonString(image)), \"kind\": \(jsonString(q.kind.rawValue)), "
                    + "\"image_token_texts\": \(tokenTexts), \"conversations\": [{\"from\": \"human\", \"value\": \(jsonString("<image>\n" + q.question))}, "
                    + "{\"from\": \"gpt\", \"value\": \(jsonString(q.answer))}]}"
            }
        }
    }

    /// Image `index` of a split with its questions: the standard kinds, or only `kinds` (which
    /// may include `.size`, asked only on request).
    /// With `varyWording`, half the colour, shape and count questions are asked in another
    /// wording (`DemoWordings`).
    public static func item(split: Split, index: Int, seed: UInt64, imageSize: Int, style: SceneStyle = SceneStyle(),
                            kinds: Set<DemoQuestionKind>? = nil, varyWording: Bool = false, tokenLabels: ImageTokenLabels = ImageTokenLabels()) -> Item {
        let imageSeed = imageSeed(splitSeed: splitSeed(seed, split), index: index)
        let scene = ShapeScene.random(seed: imageSeed, imageSize: imageSize, style: style)
        var questions = scene.questions(seed: questionSeed(imageSeed: imageSeed))
        if varyWording {
            var rng = SeededRandom(seed: SeededRandom.mix(imageSeed ^ 0x574F_5244))
            questions = questions.map { DemoWordings.reworded($0, rng: &rng) }
        }
        if let kinds {
            questions = questions.filter { kinds.contains($0.kind) }
            if kinds.contains(.size), let q = scene.sizeQuestion(seed: SeededRandom.mix(imageSeed ^ 0x53495A45)) { questions.append(q) }
        }
        return Item(split: split, index: index, scene: scene, questions: questions, tokenLabels: tokenLabels)
    }

    static func padded(_ index: Int) -> String {
        let digits = String(index)
        return digits.count >= 6 ? digits : String(repeating: "0", count: 6 - digits.count) + digits
    }

    public struct SplitSummary: Sendable {
        public let split: Split
        public let images: Int
        public let records: Int
        public let kinds: [DemoQuestionKind: Int]
    }

    public struct Summary: Sendable {
        public let splits: [SplitSummary]
        public let seconds: Double
        public var images: Int { splits.reduce(0) { $0 + $1.images } }
        public var records: Int { splits.reduce(0) { $0 + $1.records } }
    }

    /// Writes the dataset into `dir` (created if needed; files already there are overwritten).
    /// Images are made on all `Parallel.threads`; every file is written to a temporary name and
    /// renamed into place. Any failure is one FormatError naming the file.
    /// `kinds` keeps only questions of those kinds (all when nil): `[.caption]` is the image–caption
    /// data of LLaVA's pretraining stage.
    /// `twoPictures` is the share of multi-turn training conversations that start with a
    /// question or two about the previous image (`Item.conversationJSON(after:)`).
    public static func write(to dir: String, counts: [Split: Int], seed: UInt64, imageSize: Int, style: SceneStyle = SceneStyle(),
                             multiTurnTrain: Bool = false, kinds: Set<DemoQuestionKind>? = nil, varyWording: Bool = false,
                             twoPictures: Double = 0, tokenLabels: ImageTokenLabels = ImageTokenLabels()) throws -> Summary {
        guard ShapeScene.imageSizes.contains(imageSize) else {
            throw FormatError(dir, "image size \(imageSize) is outside \(ShapeScene.imageSizes.lowerBound)...\(ShapeScene.imageSizes.upperBound)")
        }
        guard (0...1).contains(style.jitter) else { throw FormatError(dir, "jitter \(style.jitter) is outside 0...1") }
        guard ImageTokenLabels.grids.contains(tokenLabels.grid) else {
            throw FormatError(dir, "token grid \(tokenLabels.grid) is not one of \(ImageTokenLabels.grids)")
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let images = (dir as NSString).appendingPathComponent("images")
        try requireFolderOrAbsent(dir)
        do {
            try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        } catch {
            throw FormatError(images, "cannot create the folder: \((error as NSError).localizedDescription)")
        }

        var summaries: [SplitSummary] = []
        let keep = kinds
        for split in Split.allCases {
            let n = counts[split] ?? 0
            precondition(n >= 0, "negative image count")
            var records = [[String]](repeating: [], count: n)
            var kinds = [[DemoQuestionKind]](repeating: [], count: n)
            var failures = [Error?](repeating: nil, count: n)
            records.withUnsafeMutableBufferPointer { records in
                kinds.withUnsafeMutableBufferPointer { kinds in
                    failures.withUnsafeMutableBufferPointer { failures in
                        Parallel.forEach(n, minChunk: 16) { range in
                            for i in range {
                                func make(_ index: Int) -> Item {
                                    DemoDataset.item(split: split, index: index, seed: seed, imageSize: imageSize, style: style, kinds: keep,
                                         varyWording: varyWording, tokenLabels: tokenLabels)
                                }
                                let item = make(i)
                                do {
                                    let path = (dir as NSString).appendingPathComponent(item.image)
                                    try PNGEncoder.write(item.scene.render(), to: path)
                                    if multiTurnTrain && split == .train {
                                        var rng = SeededRandom(seed: SeededRandom.mix(UInt64(i) ^ 0x5457_4F50))
                                        let earlier = i > 0 && rng.unit() < twoPictures ? make(i - 1) : nil
                                        records[i] = [item.conversationJSON(after: earlier)]
                                    } else {
                                        records[i] = item.recordsJSON
                                    }
                                    kinds[i] = item.questions.map(\.kind)
                                } catch {
                                    failures[i] = error
                                }
                            }
                        }
                    }
                }
            }
            if let failure = failures.lazy.compactMap({ $0 }).first { throw failure }
            let lines = records.joined()
            let text = lines.isEmpty ? "[]\n" : "[\n" + lines.joined(separator: ",\n") + "\n]\n"
            try writeAtomically(Data(text.utf8), to: (dir as NSString).appendingPathComponent(split.rawValue + ".json"))
            var tally: [DemoQuestionKind: Int] = [:]
            for k in kinds.joined() { tally[k, default: 0] += 1 }
            summaries.append(SplitSummary(split: split, images: n, records: lines.count, kinds: tally))
        }

        try writeAtomically(Data(manifest(summaries, seed: seed, imageSize: imageSize, style: style, multiTurnTrain: multiTurnTrain,
                                                  varyWording: varyWording, twoPictures: twoPictures, tokenLabels: tokenLabels).utf8),
                            to: (dir as NSString).appendingPathComponent("dataset.json"))
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Summary(splits: summaries, seconds: seconds)
    }

    /// dataset.json: what was generated, how, and what the vocabulary is.
    static func manifest(_ splits: [SplitSummary], seed: UInt64, imageSize: Int, style: SceneStyle, multiTurnTrain: Bool,
                         varyWording: Bool, twoPictures: Double, tokenLabels: ImageTokenLabels) -> String {
        func list(_ names: [String]) -> String { "[" + names.map(jsonString).joined(separator: ", ") + "]" }
        var s = "{\n"
        s += "  \"generator\": \(jsonString(generator)),\n"
        s += "  \"version\": \(version),\n"
        s += "  \"seed\": \(seed),\n"
        s += "  \"image_size\": \(imageSize),\n"
        s += "  \"layout\": \(jsonString(style.layout.rawValue)),\n"
        s += "  \"jitter\": \(style.jitter),\n"
        s += "  \"format\": \"llava\",\n"
        if multiTurnTrain { s += "  \"train_records\": \"one multi-turn conversation per image\",\n" }
        if varyWording { s += "  \"wordings\": \"half the colour, shape and count questions in another wording\",\n" }
        if twoPictures > 0 { s += "  \"two_pictures\": \(twoPictures),\n" }
        if tokenLabels != ImageTokenLabels() {
            s += "  \"image_token_texts\": {\"grid\": \(tokenLabels.grid), \"covered\": \(tokenLabels.covered), \"class_token\": \(tokenLabels.classToken)},\n"
        }
        s += "  \"splits\": {\n"
        s += splits.map { sp in
            let kinds = DemoQuestionKind.allCases.map { "\(jsonString($0.rawValue)): \(sp.kinds[$0] ?? 0)" }.joined(separator: ", ")
            return "    \(jsonString(sp.split.rawValue)): {\"file\": \(jsonString(sp.split.rawValue + ".json")), "
                + "\"images\": \(sp.images), \"records\": \(sp.records), \"seed\": \(splitSeed(seed, sp.split)), "
                + "\"kinds\": {\(kinds)}}"
        }.joined(separator: ",\n") + "\n"
        s += "  },\n"
        s += "  \"questions\": {"
            + DemoQuestionKind.allCases.map { "\(jsonString($0.rawValue)): \(jsonString($0.template))" }.joined(separator: ", ")
            + "},\n"
        s += "  \"shapes\": \(list(ShapeKind.allCases.map(\.rawValue))),\n"
        s += "  \"colours\": \(list(ShapeColour.shapeColours.map(\.rawValue))),\n"
        s += "  \"backgrounds\": \(list(ShapeColour.backgrounds.map(\.rawValue))),\n"
        s += "  \"background_styles\": \(list((style.layout == .free ? BackgroundStyle.allCases : BackgroundStyle.grid).map(\.rawValue))),\n"
        s += "  \"sizes\": \(list(ShapeSize.allCases.map(\.rawValue))),\n"
        s += "  \"positions\": \(list(GridCell.all.map { DemoAnswers.sentence($0.name) }))\n"
        s += "}\n"
        return s
    }
}

/// `text` as a JSON string literal.
func jsonString(_ text: String) -> String {
    if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
        return "\"" + text + "\""
    }
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

import VLMTensor

/// The kinds of demo questions; the raw values are the records' "kind" tags.
public enum DemoQuestionKind: String, CaseIterable, Sendable, Codable {
    /// "Describe the image." → "A large red star and a small blue circle on a white background."
    case caption
    /// "What colour is the star?" → "Red." (only when exactly one star is present)
    case colour
    /// "What shape is the green object?" → "Star." (only when exactly one object is green)
    case shape
    /// "How many shapes are there?" → "Three."
    case count
    /// "Where is the square?" → "Top left." (only when exactly one square is present)
    case `where`
    /// "Is there a triangle?" → "Yes." / "No." (asked about a present kind half the time)
    case exists
    /// "What size is the star?" → "Large." (only when exactly one star is present). Asked only
    /// when requested: the demo model never trains on it, so it is the new skill
    /// sessions/finetune-demo.vlm teaches.
    case size

    /// The kinds a dataset asks by default.
    public static let standard: [DemoQuestionKind] = [.caption, .colour, .shape, .count, .where, .exists]

    /// The question's wording, `<shape>` / `<colour>` standing for the asked-about name.
    public var template: String {
        switch self {
        case .caption: return "Describe the image."
        case .colour: return "What colour is the <shape>?"
        case .shape: return "What shape is the <colour> object?"
        case .count: return "How many shapes are there?"
        case .where: return "Where is the <shape>?"
        case .exists: return "Is there a <shape>?"
        case .size: return "What size is the <shape>?"
        }
    }
}

/// What the `image_token_texts` of demo records name (`ShapeScene.tokenTexts`): for a tower
/// whose picture is `grid` × `grid` patches, what each patch holds, after the number of shapes
/// for its class token when `classToken` (a tower that keeps it, vision_feature_select_strategy
/// "full").
public struct ImageTokenLabels: Sendable, Equatable {
    /// Grids the labels can name: multiples of the scene's 3×3 cells.
    public static let grids = [3, 6, 9, 12]

    public var grid: Int
    public var covered: Bool
    public var classToken: Bool

    public init(grid: Int = 3, covered: Bool = false, classToken: Bool = false) {
        self.grid = grid; self.covered = covered; self.classToken = classToken
    }
}

/// One question about a scene with its canonical answer: capitalized, ending with ".", one word or
/// a short fixed phrase, so evaluation can compare answers exactly.
public struct DemoQuestion: Sendable, Equatable, Codable {
    public let kind: DemoQuestionKind
    public let question: String
    public let answer: String

    public init(kind: DemoQuestionKind, question: String, answer: String) {
        self.kind = kind; self.question = question; self.answer = answer
    }
}

extension PlacedShape {
    /// "small red star": size, colour and kind, as captions and cell texts name the shape.
    public var words: String { "\(size.rawValue) \(colour.rawValue) \(kind.rawValue)" }
}

extension ShapeScene {
    /// What each image token of a tower that sees this picture as `labels.grid` × `labels.grid`
    /// patches should hold, in the order of its features: the number of shapes ("three") for
    /// the class token when `labels.classToken`, then each patch in reading order. A patch holds
    /// the words of the shape whose centre lies in it ("small red star"), or, when
    /// `labels.covered`, of a shape that covers at least a quarter of it, else "nothing". The
    /// `image_token_texts` of the demo's records; with the default labels the patches are the
    /// scene's 3×3 cells. Every shape has a cell of its own, so with multiples of 3 no patch
    /// holds two centres.
    public func tokenTexts(_ labels: ImageTokenLabels = ImageTokenLabels()) -> [String] {
        let grid = labels.grid, patch = Double(imageSize) / Double(grid)
        var texts = [String](repeating: "nothing", count: grid * grid)
        if labels.covered {
            // A 4×4 sample of each patch's pixels, each counted when half of it is covered.
            for row in 0..<grid {
                for column in 0..<grid {
                    var best = 3, owner: PlacedShape?
                    for shape in shapes {
                        var hits = 0
                        for j in 0..<4 {
                            for i in 0..<4 {
                                let x = Int(patch * (Double(column) + (Double(i) + 0.5) / 4))
                                let y = Int(patch * (Double(row) + (Double(j) + 0.5) / 4))
                                if shape.coverage(pixelX: x, pixelY: y) * 2 >= PlacedShape.subsamples * PlacedShape.subsamples { hits += 1 }
                            }
                        }
                        if hits > best { best = hits; owner = shape }
                    }
                    if let owner { texts[row * grid + column] = owner.words }
                }
            }
        }
        func index(_ coordinate: Double) -> Int { min(max(Int(coordinate / patch), 0), grid - 1) }
        for shape in shapes { texts[index(shape.centerY) * grid + index(shape.centerX)] = shape.words }
        return labels.classToken ? [DemoAnswers.numberWord(shapes.count).lowercased()] + texts : texts
    }

    /// "A large red star, a small blue circle and a small white square on a grey background." —
    /// shapes in reading order; copies of one shape are counted: "Nine small red stars on a white
    /// background.".
    public var caption: String {
        if shapes.count > 1, let s = shapes.first,
           shapes.allSatisfy({ ($0.kind, $0.colour, $0.size) == (s.kind, s.colour, s.size) }) {
            return "\(DemoAnswers.numberWord(shapes.count)) \(s.size.rawValue) \(s.colour.rawValue) \(s.kind.plural)\(onBackground)."
        }
        let items = shapes.map { "a " + $0.words }
        let list = items.count == 1 ? items[0] : items.dropLast().joined(separator: ", ") + " and " + items.last!
        return DemoAnswers.sentence(list + onBackground)
    }

    /// " on a grey background", or nothing when the background has no name.
    private var onBackground: String {
        backgroundFill == nil ? " on a \(background.rawValue) background" : ""
    }

    /// The questions asked about this scene, in the order caption, colour, shape, count, where,
    /// exists. Caption, count and exists are always asked; colour, shape and where about one
    /// random shape among those the question identifies uniquely, when there is one. `seed`
    /// chooses which shape and which kind the existence question is about.
    public func questions(seed: UInt64) -> [DemoQuestion] {
        var rng = SeededRandom(seed: seed)
        var out: [DemoQuestion] = []
        func kindCount(_ k: ShapeKind) -> Int { shapes.filter { $0.kind == k }.count }
        func colourCount(_ c: ShapeColour) -> Int { shapes.filter { $0.colour == c }.count }
        let uniqueKind = shapes.filter { kindCount($0.kind) == 1 }
        let uniqueColour = shapes.filter { colourCount($0.colour) == 1 }

        out.append(DemoQuestion(kind: .caption, question: DemoQuestionKind.caption.template, answer: caption))
        if !uniqueKind.isEmpty {
            let s = rng.pick(uniqueKind)
            out.append(DemoQuestion(kind: .colour, question: "What colour is the \(s.kind.rawValue)?",
                                    answer: DemoAnswers.sentence(s.colour.rawValue)))
        }
        if !uniqueColour.isEmpty {
            let s = rng.pick(uniqueColour)
            out.append(DemoQuestion(kind: .shape, question: "What shape is the \(s.colour.rawValue) object?",
                                    answer: DemoAnswers.sentence(s.kind.rawValue)))
        }
        out.append(DemoQuestion(kind: .count, question: DemoQuestionKind.count.template,
                                answer: DemoAnswers.number(shapes.count)))
        if !uniqueKind.isEmpty {
            let s = rng.pick(uniqueKind)
            out.append(DemoQuestion(kind: .where, question: "Where is the \(s.kind.rawValue)?",
                                    answer: DemoAnswers.sentence(s.cell.name)))
        }
        let present = ShapeKind.allCases.filter { kindCount($0) > 0 }
        let absent = ShapeKind.allCases.filter { kindCount($0) == 0 }
        let yes = absent.isEmpty || rng.coin()
        let asked = rng.pick(yes ? present : absent)
        out.append(DemoQuestion(kind: .exists, question: "Is there a \(asked.rawValue)?", answer: yes ? "Yes." : "No."))
        return out
    }
}

extension ShapeScene {
    /// "What size is the star?" about a random shape the question identifies uniquely (nil when
    /// there is none), from its own seed so the standard questions stay as they are.
    public func sizeQuestion(seed: UInt64) -> DemoQuestion? {
        var rng = SeededRandom(seed: seed)
        let unique = shapes.filter { s in shapes.filter { $0.kind == s.kind }.count == 1 }
        guard !unique.isEmpty else { return nil }
        let s = rng.pick(unique)
        return DemoQuestion(kind: .size, question: "What size is the \(s.kind.rawValue)?", answer: DemoAnswers.sentence(s.size.rawValue))
    }
}

/// Other ways to ask the demo's questions (US and UK spelling, "object", "shape" or "thing", "in
/// the picture"), for training data that does not tie an answer to one wording. The answers stay
/// the demo's.
public enum DemoWordings {
    static let variants: [DemoQuestionKind: [String]] = [
        .colour: ["What color is the <shape>?", "Which colour is the <shape>?", "What is the colour of the <shape>?",
                  "What colour is the <shape> in the image?", "What color does the <shape> have?", "The <shape> is what colour?",
                  "What is the color of the <shape> in the picture?", "Which color is the <shape> shape?"],
        .shape: ["What shape is the <colour> thing?", "Which shape is <colour>?", "What is the <colour> shape?",
                 "What kind of shape is the <colour> one?", "What is the <colour> object in the picture?",
                 "Which shape is drawn in <colour>?", "Name the <colour> shape."],
        .count: ["How many objects are there?", "How many shapes do you see?", "How many things are in the picture?",
                 "Count the objects in the image.", "How many shapes are in the image?", "What is the number of shapes?"],
    ]

    /// `question` in a random other wording about the same shape or colour (half the time
    /// unchanged); kinds without variants are returned as they are.
    public static func reworded(_ question: DemoQuestion, rng: inout SeededRandom) -> DemoQuestion {
        guard let variants = variants[question.kind], rng.coin() else { return question }
        var text = rng.pick(variants)
        // The asked-about name is what the demo's template has in place of its placeholder.
        let template = question.kind.template
        for placeholder in ["<shape>", "<colour>"] {
            guard let r = template.range(of: placeholder) else { continue }
            let prefix = template[..<r.lowerBound].count, suffix = template[r.upperBound...].count
            let subject = String(question.question.dropFirst(prefix).dropLast(suffix))
            text = text.replacingOccurrences(of: placeholder, with: subject)
        }
        return DemoQuestion(kind: question.kind, question: text, answer: question.answer)
    }
}

/// The answer spellings.
public enum DemoAnswers {
    /// Capitalized first letter and a final full stop: "top left" → "Top left.".
    public static func sentence(_ text: String) -> String {
        text.prefix(1).uppercased() + text.dropFirst() + "."
    }

    /// "One." … "Four." (digits beyond the words the generator needs).
    public static func number(_ n: Int) -> String { numberWord(n) + "." }

    /// "One" … "Nine", capitalized (digits beyond): the count answer's word, and a counted
    /// caption's first.
    public static func numberWord(_ n: Int) -> String {
        let words = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
        return words.indices.contains(n) ? words[n] : String(n)
    }
}

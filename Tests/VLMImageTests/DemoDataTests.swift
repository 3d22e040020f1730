import Foundation
import VLMFormats
import VLMImage
import VLMDemo
import VLMTensor
import XCTest

/// The synthetic shapes dataset of `vlmsh make-demo-data`: determinism, PNG round trips, scene
/// constraints, answers re-derived from the scenes, split seeds, and the command end to end.
final class DemoDataTests: XCTestCase {
    // MARK: helpers

    static func scratchDir(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory
            .appendingPathComponent("vlmsh-demo-tests-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max))")
        try? FileManager.default.removeItem(at: dir)
        return dir.path
    }

    /// Every file under `dir`, by relative path.
    static func contents(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let enumerator = FileManager.default.enumerator(atPath: dir)!
        while let relative = enumerator.nextObject() as? String {
            let path = (dir as NSString).appendingPathComponent(relative)
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            if !isDirectory.boolValue { out[relative] = try Data(contentsOf: URL(fileURLWithPath: path)) }
        }
        return out
    }

    /// Scenes over many seeds and a few image sizes.
    static func scenes(count: Int = 1500, sizes: [Int] = [64, 48, 100]) -> [ShapeScene] {
        sizes.flatMap { size in (0..<count).map { ShapeScene.random(seed: UInt64($0) &* 7919 &+ UInt64(size), imageSize: size) } }
    }

    static func rgb(_ c: ShapeColour) -> [UInt8] { let t = c.rgb; return [t.0, t.1, t.2] }

    // MARK: determinism

    func testSameSeedGivesIdenticalFiles() throws {
        let a = Self.scratchDir("a"), b = Self.scratchDir("b"), c = Self.scratchDir("c")
        defer { for d in [a, b, c] { try? FileManager.default.removeItem(atPath: d) } }
        let counts: [DemoDataset.Split: Int] = [.train: 40, .validation: 9, .test: 7]
        let saved = Parallel.threads
        defer { Parallel.threads = saved }
        // One thread and several: the files must not depend on how the work is shared out. Not
        // more threads than the process has: the pool would keep the extra workers, and every
        // later loop in this process wait for them.
        Parallel.threads = 1
        _ = try DemoDataset.write(to: a, counts: counts, seed: 123, imageSize: 64)
        Parallel.threads = max(saved, 2)
        _ = try DemoDataset.write(to: b, counts: counts, seed: 123, imageSize: 64)
        _ = try DemoDataset.write(to: c, counts: counts, seed: 124, imageSize: 64)
        let fa = try Self.contents(a), fb = try Self.contents(b), fc = try Self.contents(c)
        XCTAssertEqual(fa.count, 40 + 9 + 7 + 4)
        XCTAssertEqual(Set(fa.keys), Set(fb.keys))
        for (name, data) in fa { XCTAssertEqual(data, fb[name], "\(name) differs between two runs with the same seed") }
        // Another seed changes the images and the records.
        XCTAssertNotEqual(fa["images/train-000000.png"], fc["images/train-000000.png"])
        XCTAssertNotEqual(fa["train.json"], fc["train.json"])
        // No temporary files are left behind.
        XCTAssertFalse(fa.keys.contains { ($0 as NSString).lastPathComponent.hasPrefix(".") })

        // The in-memory encoding is deterministic too.
        let scene = ShapeScene.random(seed: 99, imageSize: 64)
        XCTAssertEqual(try PNGEncoder.encode(scene.render()), try PNGEncoder.encode(ShapeScene.random(seed: 99, imageSize: 64).render()))
    }

    // MARK: PNG

    func testPNGRoundTripThroughImageLoaderIsExact() throws {
        let dir = Self.scratchDir("png")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SeededRandom(seed: 5)
        var images = (0..<20).map { ShapeScene.random(seed: UInt64($0), imageSize: [48, 64, 97][$0 % 3]).render() }
        // Incompressible and odd-sized images too (zlib cannot shrink noise: the buffer-growing path).
        for (w, h) in [(1, 1), (7, 5), (64, 64), (301, 17)] {
            images.append(RGBImage(width: w, height: h, pixels: (0..<(w * h * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
        }
        images.append(RGBImage(width: 33, height: 20, filledWith: (0, 255, 7)))
        for (i, image) in images.enumerated() {
            let path = dir + "/image-\(i).png"
            try PNGEncoder.write(image, to: path)
            let back = try ImageLoader.load(path: path)
            XCTAssertEqual(back, image, "image \(i) \(image.width)x\(image.height) does not round-trip")
            let bytes = try PNGEncoder.encode(image)
            XCTAssertEqual(bytes, [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))))
            XCTAssertEqual(try bytes.withUnsafeBytes { try ImageLoader.decode($0, path: "memory") }, image)
        }
        // Overwriting keeps the file whole and leaves no temporary files.
        try PNGEncoder.write(images[1], to: dir + "/image-0.png")
        XCTAssertEqual(try ImageLoader.load(path: dir + "/image-0.png"), images[1])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }, [])
    }

    func testPNGWriteErrorIsOneLineNamingTheFile() {
        let path = "/nonexistent-vlmsh-folder/x.png"
        XCTAssertThrowsError(try PNGEncoder.write(RGBImage(width: 2, height: 2, filledWith: (1, 2, 3)), to: path)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix(path + ": "), text)
            XCTAssertFalse(text.contains("\n"), text)
        }
    }

    // MARK: scenes

    func testSceneConstraints() {
        var shapeCounts = [Int](repeating: 0, count: 5)
        var kinds = Set<ShapeKind>(), colours = Set<ShapeColour>(), backgrounds = Set<ShapeColour>()
        var styles = Set<BackgroundStyle>(), sizes = Set<ShapeSize>()
        for scene in Self.scenes() {
            let n = scene.shapes.count
            XCTAssertTrue((1...4).contains(n), "\(n) shapes")
            shapeCounts[n] += 1
            XCTAssertTrue(ShapeColour.backgrounds.contains(scene.background))
            backgrounds.insert(scene.background); styles.insert(scene.backgroundStyle)
            XCTAssertEqual(Set(scene.shapes.map(\.cell)).count, n, "two shapes share a cell")
            XCTAssertEqual(scene.shapes.map(\.cell), scene.shapes.map(\.cell).sorted(), "shapes not listed in reading order")
            let cellSide = Double(scene.imageSize) / 3
            for s in scene.shapes {
                kinds.insert(s.kind); colours.insert(s.colour); sizes.insert(s.size)
                XCTAssertNotEqual(s.colour, scene.background, "a shape has the background's colour")
                XCTAssertTrue(ShapeColour.shapeColours.contains(s.colour))
                // The extent lies inside the shape's cell with a pixel to spare.
                XCTAssertGreaterThanOrEqual(s.centerX - s.radius, Double(s.cell.column) * cellSide + 1 - 1e-9)
                XCTAssertLessThanOrEqual(s.centerX + s.radius, Double(s.cell.column + 1) * cellSide - 1 + 1e-9)
                XCTAssertGreaterThanOrEqual(s.centerY - s.radius, Double(s.cell.row) * cellSide + 1 - 1e-9)
                XCTAssertLessThanOrEqual(s.centerY + s.radius, Double(s.cell.row + 1) * cellSide - 1 + 1e-9)
            }
            // No overlap: extents are disjoint, and no pixel is touched by two shapes.
            var owner = [Int](repeating: -1, count: scene.imageSize * scene.imageSize)
            for (k, s) in scene.shapes.enumerated() {
                for t in scene.shapes[(k + 1)...] {
                    let apart = abs(s.centerX - t.centerX) >= s.radius + t.radius || abs(s.centerY - t.centerY) >= s.radius + t.radius
                    XCTAssertTrue(apart, "extents of \(s.kind) and \(t.kind) overlap")
                }
                for y in 0..<scene.imageSize {
                    for x in 0..<scene.imageSize where s.coverage(pixelX: x, pixelY: y) > 0 {
                        XCTAssertEqual(owner[y * scene.imageSize + x], -1, "pixel (\(x), \(y)) is in two shapes")
                        owner[y * scene.imageSize + x] = k
                    }
                }
            }
        }
        // Every option occurs.
        XCTAssertTrue(shapeCounts[1...4].allSatisfy { $0 > 500 }, "\(shapeCounts)")
        XCTAssertEqual(kinds, Set(ShapeKind.allCases))
        XCTAssertGreaterThanOrEqual(kinds.count, 5)
        XCTAssertEqual(colours, Set(ShapeColour.shapeColours))
        XCTAssertEqual(backgrounds, Set(ShapeColour.backgrounds))
        XCTAssertEqual(styles, Set(BackgroundStyle.grid))
        XCTAssertEqual(sizes, Set(ShapeSize.allCases))
    }

    func testTilesAndJitter() throws {
        let cellSide = 96.0 / 3
        var kinds = Set<ShapeKind>()
        for seed: UInt64 in 0..<300 {
            // Tiles: one shape in all nine cells, captioned as such; the questions asked stay
            // unambiguous.
            let scene = ShapeScene.random(seed: seed, imageSize: 96, style: SceneStyle(layout: .tiles, jitter: 0))
            let s = scene.shapes[0]
            XCTAssertEqual(scene.shapes.map(\.cell), GridCell.all)
            XCTAssertTrue(scene.shapes.allSatisfy { ($0.kind, $0.colour, $0.size) == (s.kind, s.colour, s.size) })
            XCTAssertNotEqual(s.colour, scene.background)
            kinds.insert(s.kind)
            let plural = s.kind == .cross ? "crosses" : s.kind.rawValue + "s"
            XCTAssertEqual(scene.caption, "Nine \(s.size.rawValue) \(s.colour.rawValue) \(plural) on a \(scene.background.rawValue) background.")
            let asked = scene.questions(seed: seed)
            XCTAssertEqual(asked.map(\.kind), [.caption, .count, .exists])
            XCTAssertEqual(asked[1].answer, "Nine.")
            // Jitter 0 centres every shape in its cell (to the quarter pixel).
            for t in scene.shapes {
                XCTAssertEqual(t.centerX, (Double(t.cell.column) + 0.5) * cellSide, accuracy: 0.25)
                XCTAssertEqual(t.centerY, (Double(t.cell.row) + 0.5) * cellSide, accuracy: 0.25)
            }
            // The scattered layout with jitter 0: the same background and cells, shapes centred.
            let free = ShapeScene.random(seed: seed, imageSize: 96), centred = ShapeScene.random(seed: seed, imageSize: 96, style: SceneStyle(jitter: 0))
            XCTAssertEqual(free.shapes.map(\.cell), centred.shapes.map(\.cell))
            XCTAssertEqual(free.background, centred.background)
            for t in centred.shapes { XCTAssertEqual(t.centerX, (Double(t.cell.column) + 0.5) * cellSide, accuracy: 0.25) }
        }
        XCTAssertEqual(kinds, Set(ShapeKind.allCases))
        // Full jitter moves centres off the middle.
        let offCentre = Self.scenes(count: 200, sizes: [96]).flatMap(\.shapes).filter { abs($0.centerX - (Double($0.cell.column) + 0.5) * cellSide) > 1 }
        XCTAssertGreaterThan(offCentre.count, 100)

        // The options reach the files: dataset.json records them, and bad values are refused.
        let dir = Self.scratchDir("tiles")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try DemoDataset.write(to: dir, counts: [.train: 3], seed: 1, imageSize: 96, style: SceneStyle(layout: .tiles, jitter: 0), kinds: [.caption])
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/dataset.json"))) as! [String: Any]
        XCTAssertEqual(manifest["layout"] as? String, "tiles")
        XCTAssertEqual(manifest["jitter"] as? Double, 0)
        let train = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/train.json"))) as! [[String: Any]]
        XCTAssertEqual(train.count, 3)
        XCTAssertTrue(train.allSatisfy { ($0["conversations"] as! [[String: String]])[1]["value"]!.hasPrefix("Nine ") })
        XCTAssertThrowsError(try DemoDataset.write(to: dir, counts: [.train: 1], seed: 0, imageSize: 96, style: SceneStyle(jitter: 2))) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + ": "), "\(error)")
        }
    }

    func testCopiesCountOneShapeInDistinctCells() {
        var counts = Set<Int>()
        for seed: UInt64 in 0..<300 {
            // Copies: one shape in one to nine distinct cells, captioned with their number.
            let scene = ShapeScene.random(seed: seed, imageSize: 96, style: SceneStyle(layout: .copies, jitter: 0))
            let s = scene.shapes[0], n = scene.shapes.count
            counts.insert(n)
            XCTAssertEqual(Set(scene.shapes.map(\.cell)).count, n)
            XCTAssertEqual(scene.shapes.map(\.cell), scene.shapes.map(\.cell).sorted())
            XCTAssertTrue(scene.shapes.allSatisfy { ($0.kind, $0.colour, $0.size) == (s.kind, s.colour, s.size) })
            XCTAssertNotEqual(s.colour, scene.background)
            let plural = s.kind == .cross ? "crosses" : s.kind.rawValue + "s"
            let words = ["", "", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
            let expected = n == 1 ? "A \(s.size.rawValue) \(s.colour.rawValue) \(s.kind.rawValue) on a \(scene.background.rawValue) background."
                : "\(words[n]) \(s.size.rawValue) \(s.colour.rawValue) \(plural) on a \(scene.background.rawValue) background."
            XCTAssertEqual(scene.caption, expected)
            XCTAssertEqual(scene.questions(seed: seed).first { $0.kind == .count }?.answer, DemoAnswers.number(n))
        }
        XCTAssertEqual(counts, Set(1...9))
    }

    func testPixelAtEachShapeCentreHasTheShapeColour() {
        for scene in Self.scenes(count: 600) {
            let image = scene.render()
            XCTAssertEqual(image.width, scene.imageSize)
            XCTAssertEqual(image.height, scene.imageSize)
            for s in scene.shapes {
                let x = Int(s.centerX), y = Int(s.centerY)
                let i = 3 * (y * image.width + x)
                XCTAssertEqual(Array(image.pixels[i..<(i + 3)]), Self.rgb(s.colour),
                               "\(s.size) \(s.colour) \(s.kind) at (\(x), \(y)) in a \(scene.imageSize)-pixel image")
            }
            // A corner of the image is background (no cell's shape reaches it), near its base colour.
            let base = Self.rgb(scene.background)
            for c in 0..<3 { XCTAssertLessThanOrEqual(abs(Int(image.pixels[c]) - Int(base[c])), 14) }
        }
    }

    func testCoverageShortcutsAreExact() {
        for kind in ShapeKind.allCases {
            for radius in [2.9, 4.32, 5.76, 8.53, 13.5, 40.0] {
                for offset in 0..<16 {
                    let s = PlacedShape(kind: kind, colour: .red, size: .large, cell: GridCell(column: 1, row: 1),
                                        centerX: 60 + Double(offset % 4) / 4, centerY: 60 + Double(offset / 4) / 4, radius: radius)
                    let b = s.pixelBounds
                    for y in (b.y.lowerBound - 1)...(b.y.upperBound) {
                        for x in (b.x.lowerBound - 1)...(b.x.upperBound) {
                            let fast = s.coverage(pixelX: x, pixelY: y), slow = s.sampledCoverage(pixelX: x, pixelY: y)
                            if fast != slow {
                                XCTFail("\(kind) r=\(radius) offset \(offset) pixel (\(x), \(y)): \(fast) vs \(slow)")
                                return
                            }
                            if !b.x.contains(x) || !b.y.contains(y) { XCTAssertEqual(slow, 0, "\(kind) outside its bounds") }
                        }
                    }
                }
            }
        }
    }

    func testCoverageShortcutsAreExactForTurnedAndStretchedShapes() {
        for kind in ShapeKind.allCases {
            for (angle, stretch) in [(0.2, 1.0), (-0.25, 0.87), (0.0, 1.13), (0.11, 1.1)] {
                let s = PlacedShape(kind: kind, colour: .red, size: .large, cell: GridCell(column: 1, row: 1),
                                    centerX: 60.3, centerY: 59.7, radius: 11.5, angle: angle, stretch: stretch)
                let b = s.pixelBounds
                var covered = 0
                for y in (b.y.lowerBound - 1)...(b.y.upperBound) {
                    for x in (b.x.lowerBound - 1)...(b.x.upperBound) {
                        let fast = s.coverage(pixelX: x, pixelY: y), slow = s.sampledCoverage(pixelX: x, pixelY: y)
                        XCTAssertEqual(fast, slow, "\(kind) angle \(angle) stretch \(stretch) pixel (\(x), \(y))")
                        if !b.x.contains(x) || !b.y.contains(y) { XCTAssertEqual(slow, 0, "\(kind) outside its bounds") }
                        covered += slow
                    }
                }
                XCTAssertGreaterThan(covered, 16 * 60, "\(kind) is drawn")
            }
        }
    }

    /// The free layout: shapes anywhere inside the picture, each centred in its own cell, apart
    /// from one another, named small or large by their radius, in colours far from the background.
    func testFreeScenes() {
        var sides = Set<Int>(), counts = Set<Int>(), unnamed = 0, hard = 0, turned = 0, scattered = 0, sizes = Set<ShapeSize>()
        for seed in 0..<600 {
            let scene = ShapeScene.random(seed: UInt64(seed) &* 104_729, imageSize: 96, style: SceneStyle(layout: .free))
            let side = Double(scene.imageSize)
            sides.insert(scene.imageSize)
            counts.insert(scene.shapes.count)
            XCTAssertTrue((1...4).contains(scene.shapes.count))
            XCTAssertEqual(Set(scene.shapes.map(\.cell)).count, scene.shapes.count, "one shape per cell")
            XCTAssertEqual(scene.shapes.map(\.cell), scene.shapes.map(\.cell).sorted(), "reading order")
            let base = scene.backgroundFill ?? Self.rgb(scene.background)
            for (i, s) in scene.shapes.enumerated() {
                let cell = side / 3
                XCTAssertTrue(s.centerX >= Double(s.cell.column) * cell && s.centerX <= Double(s.cell.column + 1) * cell)
                XCTAssertTrue(s.centerY >= Double(s.cell.row) * cell && s.centerY <= Double(s.cell.row + 1) * cell)
                XCTAssertTrue(s.centerX - s.reach >= 0 && s.centerX + s.reach <= side && s.centerY - s.reach >= 0 && s.centerY + s.reach <= side)
                XCTAssertEqual(s.size, s.radius / side < 0.115 ? .small : .large)
                XCTAssertTrue((0.08...0.26).contains(s.radius / side))
                if s.fill != nil {
                    XCTAssertGreaterThan(zip(Self.rgb(s.colour), base).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) }, 160)
                } else {
                    scattered += 1
                }
                XCTAssertNotEqual(s.colour, scene.backgroundFill == nil ? scene.background : nil)
                for t in scene.shapes[(i + 1)...] {
                    XCTAssertGreaterThan((s.centerX - t.centerX) * (s.centerX - t.centerX) + (s.centerY - t.centerY) * (s.centerY - t.centerY),
                                         (s.reach + t.reach) * (s.reach + t.reach), "shapes overlap")
                }
                if s.angle != 0 { turned += 1 }
                sizes.insert(s.size)
            }
            if scene.backgroundFill != nil {
                unnamed += 1
                XCTAssertFalse(scene.caption.contains("background"), scene.caption)
            } else {
                XCTAssertTrue(scene.caption.hasSuffix(" on a \(scene.background.rawValue) background."), scene.caption)
            }
            if scene.hardEdges { hard += 1 }
            // Every shape's centre pixel is the shape's (jittered) colour.
            if seed < 60 {
                let image = scene.render()
                for s in scene.shapes {
                    let i = 3 * (Int(s.centerY) * scene.imageSize + Int(s.centerX))
                    XCTAssertEqual(Array(image.pixels[i..<(i + 3)]), s.fill ?? Self.rgb(s.colour), "seed \(seed) \(s.kind)")
                }
            }
        }
        XCTAssertEqual(sides, [96, 144, 192, 288])
        XCTAssertEqual(counts, [1, 2, 3, 4])
        XCTAssertEqual(sizes, [.small, .large])
        XCTAssertTrue((100...200).contains(unnamed), "\(unnamed) unnamed backgrounds in 600")
        XCTAssertTrue((70...160).contains(hard), "\(hard) hard-edged scenes in 600")
        XCTAssertTrue((250...500).contains(scattered), "\(scattered) shapes of scattered scenes")
        XCTAssertGreaterThan(turned, 400)
    }

    func testShapesAreDistinguishable() {
        // Each kind's mask at a large size differs from every other's in a good number of pixels.
        func mask(_ kind: ShapeKind) -> [Bool] {
            let s = PlacedShape(kind: kind, colour: .red, size: .large, cell: GridCell(column: 1, row: 1),
                                centerX: 32, centerY: 32, radius: 8.5)
            return (0..<(64 * 64)).map { s.coverage(pixelX: $0 % 64, pixelY: $0 / 64) >= 8 }
        }
        let masks = ShapeKind.allCases.map { ($0, mask($0)) }
        for (i, (a, ma)) in masks.enumerated() {
            XCTAssertGreaterThan(ma.filter { $0 }.count, 60, "\(a) is too small")
            for (b, mb) in masks[(i + 1)...] {
                let differing = zip(ma, mb).filter { $0 != $1 }.count
                XCTAssertGreaterThan(differing, 25, "\(a) and \(b) look alike")
            }
        }
    }

    // MARK: questions

    /// The answers worked out from the scene's geometry, independently of the generator's text.
    func testEveryAnswerMatchesItsScene() throws {
        let words = ["One.", "Two.", "Three.", "Four."]
        let rows = ["Top", "Middle", "Bottom"], columns = ["left", "center", "right"]
        var asked: [DemoQuestionKind: Int] = [:]
        var yes = 0, no = 0
        for split in DemoDataset.Split.allCases {
            for index in 0..<1500 {
                let item = DemoDataset.item(split: split, index: index, seed: 77, imageSize: 64, kinds: Set(DemoQuestionKind.allCases))
                XCTAssertEqual(item.questions.filter { $0.kind != .size },
                               DemoDataset.item(split: split, index: index, seed: 77, imageSize: 64).questions, "size is asked on request only")
                let scene = item.scene
                XCTAssertEqual(scene, ShapeScene.random(
                    seed: DemoDataset.imageSeed(splitSeed: DemoDataset.splitSeed(77, split), index: index), imageSize: 64))
                let cellSide = Double(scene.imageSize) / 3
                func column(_ s: PlacedShape) -> Int { Int(s.centerX / cellSide) }
                func row(_ s: PlacedShape) -> Int { Int(s.centerY / cellSide) }
                func ofKind(_ name: Substring) -> [PlacedShape] { scene.shapes.filter { $0.kind.rawValue == name } }
                func capitalized(_ s: String) -> String { s.prefix(1).uppercased() + s.dropFirst() + "." }

                var kindsHere: [DemoQuestionKind] = []
                for q in item.questions {
                    kindsHere.append(q.kind)
                    asked[q.kind, default: 0] += 1
                    XCTAssertTrue(q.answer.hasSuffix("."), q.answer)
                    XCTAssertEqual(q.answer.first.map { $0.isUppercase }, true, q.answer)
                    let text = q.question
                    switch q.kind {
                    case .caption:
                        XCTAssertEqual(text, "Describe the image.")
                        let ordered = scene.shapes.sorted { (row($0), column($0)) < (row($1), column($1)) }
                        let parts = ordered.map { "a \($0.size.rawValue) \($0.colour.rawValue) \($0.kind.rawValue)" }
                        var list = parts[0]
                        if parts.count > 1 { list = parts.dropLast().joined(separator: ", ") + " and " + parts.last! }
                        if parts.count > 1 && Set(parts).count == 1 {
                            // Copies of one shape are counted instead of listed.
                            let s = scene.shapes[0], number = words[parts.count - 1].dropLast()
                            XCTAssertEqual(q.answer, "\(number) \(s.size.rawValue) \(s.colour.rawValue) \(s.kind.plural) on a \(scene.background.rawValue) background.")
                        } else {
                            XCTAssertEqual(q.answer, capitalized("\(list) on a \(scene.background.rawValue) background"))
                        }
                    case .colour:
                        XCTAssertTrue(text.hasPrefix("What colour is the ") && text.hasSuffix("?"), text)
                        let matches = ofKind(text.dropFirst("What colour is the ".count).dropLast())
                        XCTAssertEqual(matches.count, 1, "\(text) is ambiguous")
                        if let s = matches.first { XCTAssertEqual(q.answer, capitalized(s.colour.rawValue)) }
                    case .shape:
                        XCTAssertTrue(text.hasPrefix("What shape is the ") && text.hasSuffix(" object?"), text)
                        let colour = text.dropFirst("What shape is the ".count).dropLast(" object?".count)
                        let matches = scene.shapes.filter { $0.colour.rawValue == colour }
                        XCTAssertEqual(matches.count, 1, "\(text) is ambiguous")
                        if let s = matches.first { XCTAssertEqual(q.answer, capitalized(s.kind.rawValue)) }
                    case .count:
                        XCTAssertEqual(text, "How many shapes are there?")
                        XCTAssertEqual(q.answer, words[scene.shapes.count - 1])
                    case .where:
                        XCTAssertTrue(text.hasPrefix("Where is the ") && text.hasSuffix("?"), text)
                        let matches = ofKind(text.dropFirst("Where is the ".count).dropLast())
                        XCTAssertEqual(matches.count, 1, "\(text) is ambiguous")
                        if let s = matches.first {
                            let place = (column(s), row(s)) == (1, 1) ? "Center." : "\(rows[row(s)]) \(columns[column(s)])."
                            XCTAssertEqual(q.answer, place)
                        }
                    case .exists:
                        XCTAssertTrue(text.hasPrefix("Is there a ") && text.hasSuffix("?"), text)
                        let name = text.dropFirst("Is there a ".count).dropLast()
                        XCTAssertNotNil(ShapeKind(rawValue: String(name)), text)
                        XCTAssertEqual(q.answer, ofKind(name).isEmpty ? "No." : "Yes.")
                        if q.answer == "Yes." { yes += 1 } else { no += 1 }
                    case .size:
                        XCTAssertTrue(text.hasPrefix("What size is the ") && text.hasSuffix("?"), text)
                        let matches = ofKind(text.dropFirst("What size is the ".count).dropLast())
                        XCTAssertEqual(matches.count, 1, "\(text) is ambiguous")
                        if let s = matches.first { XCTAssertEqual(q.answer, capitalized(s.size.rawValue)) }
                    }
                }
                // Which questions are asked: the unambiguous ones, one of each kind.
                let uniqueKind = scene.shapes.contains { s in scene.shapes.filter { $0.kind == s.kind }.count == 1 }
                let uniqueColour = scene.shapes.contains { s in scene.shapes.filter { $0.colour == s.colour }.count == 1 }
                var expected: [DemoQuestionKind] = [.caption]
                if uniqueKind { expected.append(.colour) }
                if uniqueColour { expected.append(.shape) }
                expected.append(.count)
                if uniqueKind { expected.append(.where) }
                expected.append(.exists)
                if uniqueKind { expected.append(.size) }
                XCTAssertEqual(kindsHere, expected)
                XCTAssertEqual(Set(item.questions.map { item.id($0) }).count, item.questions.count)
            }
        }
        XCTAssertEqual(Set(asked.keys), Set(DemoQuestionKind.allCases))
        let share = Double(yes) / Double(yes + no)
        XCTAssertTrue((0.45...0.55).contains(share), "existence answers are \(Int(share * 100))% yes")
    }

    // MARK: splits

    /// tokenTexts() names what each cell holds in reading order, which is the order of a ViT's
    /// patches when the patches are the cells: the shape's centre lies in patch `row·3 + column`.
    func testCellTextsNameEachCellInPatchOrder() {
        for seed in UInt64(0)..<40 {
            let scene = ShapeScene.random(seed: seed, imageSize: 96)
            let texts = scene.tokenTexts()
            XCTAssertEqual(texts.count, 9)
            XCTAssertEqual(texts.filter { $0 != "nothing" }.count, scene.shapes.count)
            for shape in scene.shapes {
                let patch = Int(shape.centerY / 32) * 3 + Int(shape.centerX / 32)
                XCTAssertEqual(texts[patch], "\(shape.size.rawValue) \(shape.colour.rawValue) \(shape.kind.rawValue)")
            }
        }
    }

    /// Finer grids name the patch that holds each centre (free scenes at any side); `covered`
    /// also names every patch a shape covers a quarter of (measured here over all its pixels),
    /// and `classToken` puts the number of shapes first.
    func testTokenTextsOnFinerGridsWithCoverageAndCount() {
        for seed in UInt64(0)..<12 {
            let scene = ShapeScene.random(seed: seed, imageSize: 96, style: SceneStyle(layout: .free))
            let grid = 6, patch = Double(scene.imageSize) / Double(grid)
            let centres = scene.tokenTexts(ImageTokenLabels(grid: grid))
            XCTAssertEqual(centres.filter { $0 != "nothing" }.count, scene.shapes.count, "seed \(seed)")
            let labels = ImageTokenLabels(grid: grid, covered: true, classToken: true)
            let texts = scene.tokenTexts(labels)
            XCTAssertEqual(texts.count, 1 + grid * grid)
            XCTAssertEqual(texts[0], DemoAnswers.numberWord(scene.shapes.count).lowercased())
            for (index, text) in texts.dropFirst().enumerated() {
                let row = index / grid, column = index % grid
                if centres[index] != "nothing" { XCTAssertEqual(text, centres[index]); continue }
                // The share of the patch's pixels each shape covers at least half of.
                let xs = Int(Double(column) * patch)..<Int(Double(column + 1) * patch)
                let ys = Int(Double(row) * patch)..<Int(Double(row + 1) * patch)
                let shares = scene.shapes.map { shape in
                    Double(ys.reduce(0) { n, y in n + xs.filter { shape.coverage(pixelX: $0, pixelY: y) >= 8 }.count }) / Double(xs.count * ys.count)
                }
                let best = shares.indices.max { shares[$0] < shares[$1] }
                if let best, shares[best] > 0.4 { XCTAssertEqual(text, scene.shapes[best].words, "seed \(seed) patch \(index)") }
                if shares.allSatisfy({ $0 < 0.1 }) { XCTAssertEqual(text, "nothing", "seed \(seed) patch \(index)") }
            }
        }
    }

    func testSplitsUseDisjointSeeds() {
        for seed: UInt64 in [0, 1, 42, .max] {
            let splitSeeds = DemoDataset.Split.allCases.map { DemoDataset.splitSeed(seed, $0) }
            XCTAssertEqual(Set(splitSeeds).count, 3)
            var seen = Set<UInt64>()
            for s in splitSeeds {
                for i in 0..<5000 { XCTAssertTrue(seen.insert(DemoDataset.imageSeed(splitSeed: s, index: i)).inserted) }
            }
            XCTAssertNotEqual(DemoDataset.item(split: .train, index: 0, seed: seed, imageSize: 64).scene,
                              DemoDataset.item(split: .test, index: 0, seed: seed, imageSize: 64).scene)
        }
        XCTAssertNotEqual(DemoDataset.splitSeed(0, .train), DemoDataset.splitSeed(1, .train))
        // The seeds of a dataset's splits are not those of a neighbouring dataset seed's splits either.
        let a = Set(DemoDataset.Split.allCases.map { DemoDataset.splitSeed(7, $0) })
        let b = Set(DemoDataset.Split.allCases.map { DemoDataset.splitSeed(8, $0) })
        XCTAssertTrue(a.isDisjoint(with: b))
    }

    // MARK: files

    func testFilesAreLLaVAFormat() throws {
        let dir = Self.scratchDir("files")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let summary = try DemoDataset.write(to: dir, counts: [.train: 30, .validation: 6, .test: 0], seed: 3, imageSize: 64)
        XCTAssertEqual(summary.images, 36)
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/dataset.json"))) as! [String: Any]
        XCTAssertEqual(manifest["version"] as? Int, DemoDataset.version)
        XCTAssertEqual(manifest["image_size"] as? Int, 64)
        XCTAssertEqual(manifest["seed"] as? Int, 3)
        let splits = manifest["splits"] as! [String: [String: Any]]
        var ids = Set<String>()
        for split in DemoDataset.Split.allCases {
            let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/\(split.rawValue).json"))
            let records = try JSONSerialization.jsonObject(with: data) as! [[String: Any]]
            let info = splits[split.rawValue]!
            XCTAssertEqual(info["records"] as? Int, records.count)
            XCTAssertEqual(info["images"] as? Int, summary.splits.first { $0.split == split }!.images)
            var kinds: [String: Int] = [:]
            var images = Set<String>()
            for r in records {
                XCTAssertEqual(Set(r.keys), ["id", "image", "kind", "image_token_texts", "conversations"])
                let id = r["id"] as! String, image = r["image"] as! String, kind = r["kind"] as! String
                let index = Int(image.dropFirst("images/\(split.rawValue)-".count).dropLast(".png".count))!
                let item = DemoDataset.item(split: split, index: index, seed: 3, imageSize: 64)
                XCTAssertEqual(r["image_token_texts"] as? [String], item.scene.tokenTexts(), id)
                XCTAssertTrue(ids.insert(id).inserted, "duplicate id \(id)")
                XCTAssertTrue(id.hasPrefix(split.rawValue + "-") && image.hasPrefix("images/\(split.rawValue)-"), id)
                XCTAssertNotNil(DemoQuestionKind(rawValue: kind))
                kinds[kind, default: 0] += 1
                let turns = r["conversations"] as! [[String: String]]
                XCTAssertEqual(turns.map { $0["from"]! }, ["human", "gpt"])
                XCTAssertTrue(turns[0]["value"]!.hasPrefix("<image>\n"))
                XCTAssertFalse(turns[1]["value"]!.contains("<image>"))
                if images.insert(image).inserted {
                    let loaded = try ImageLoader.load(path: dir + "/" + image)
                    XCTAssertEqual(loaded.width, 64)
                    XCTAssertEqual(loaded.height, 64)
                }
            }
            XCTAssertEqual(images.count, info["images"] as? Int)
            XCTAssertEqual(kinds, (info["kinds"] as! [String: Int]).filter { $0.value > 0 })
        }
        XCTAssertEqual(try String(contentsOfFile: dir + "/test.json", encoding: .utf8), "[]\n")
    }

    /// --multi-turn: one record per training image holding exactly that image's questions, the
    /// placeholder opening the first turn and the caption (which would give answers away) last;
    /// validation and test stay one record per question.
    func testMultiTurnTrainingRecords() throws {
        let dir = Self.scratchDir("multi")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try DemoDataset.write(to: dir, counts: [.train: 20, .validation: 3, .test: 0], seed: 5, imageSize: 64, multiTurnTrain: true)
        let records = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/train.json"))) as! [[String: Any]]
        XCTAssertEqual(records.count, 20)
        var firstKinds = Set<String>()
        for (i, r) in records.enumerated() {
            XCTAssertEqual(r["kind"] as? String, "conversation")
            let item = DemoDataset.item(split: .train, index: i, seed: 5, imageSize: 64)
            XCTAssertEqual(r["image"] as? String, item.image)
            XCTAssertEqual(r["image_token_texts"] as? [String], item.scene.tokenTexts())
            let turns = r["conversations"] as! [[String: String]]
            XCTAssertEqual(turns.count, 2 * item.questions.count)
            XCTAssertEqual(turns.enumerated().map { $0.element["from"]! == ($0.offset % 2 == 0 ? "human" : "gpt") }, [Bool](repeating: true, count: turns.count))
            XCTAssertTrue(turns[0]["value"]!.hasPrefix("<image>\n"))
            XCTAssertEqual(turns.filter { $0["value"]!.contains("<image>") }.count, 1)
            let pairs = stride(from: 0, to: turns.count, by: 2).map { (turns[$0]["value"]!.replacingOccurrences(of: "<image>\n", with: ""), turns[$0 + 1]["value"]!) }
            XCTAssertEqual(Set(pairs.map { "\($0.0)|\($0.1)" }), Set(item.questions.map { "\($0.question)|\($0.answer)" }))
            XCTAssertEqual(pairs.last!.0, DemoQuestionKind.caption.template)
            firstKinds.insert(pairs[0].0)
        }
        XCTAssertGreaterThan(firstKinds.count, 3, "the order of the other questions varies")
        let validation = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/validation.json"))) as! [[String: Any]]
        XCTAssertTrue(validation.allSatisfy { ($0["conversations"] as! [Any]).count == 2 })
    }

    /// Conversations that begin about the previous picture, then attach this one and ask about
    /// it; other wordings keep the demo's answers.
    func testTwoPictureConversationsAndWordings() throws {
        let dir = Self.scratchDir("two")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = try DemoDataset.write(to: dir, counts: [.train: 40], seed: 7, imageSize: 64, style: SceneStyle(layout: .free),
                                  multiTurnTrain: true, varyWording: true, twoPictures: 0.5)
        let records = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/train.json"))) as! [[String: Any]]
        var pairs = 0, reworded = 0
        for (i, r) in records.enumerated() {
            let item = DemoDataset.item(split: .train, index: i, seed: 7, imageSize: 64, style: SceneStyle(layout: .free), varyWording: true)
            let plain = DemoDataset.item(split: .train, index: i, seed: 7, imageSize: 64, style: SceneStyle(layout: .free))
            let turns = (r["conversations"] as! [[String: String]]).map { $0["value"]! }
            let asked = stride(from: 0, to: turns.count, by: 2).map { (turns[$0].replacingOccurrences(of: "<image>\n", with: ""), turns[$0 + 1]) }
            // This picture's questions close the conversation, caption last, with the demo's answers.
            let own = Array(asked.suffix(item.questions.count))
            XCTAssertEqual(Set(own.map { "\($0.0)|\($0.1)" }), Set(item.questions.map { "\($0.question)|\($0.answer)" }))
            XCTAssertEqual(item.questions.map(\.answer), plain.questions.map(\.answer))
            reworded += zip(item.questions, plain.questions).filter { $0.question != $1.question }.count
            if let images = r["image"] as? [String] {
                pairs += 1
                let earlier = DemoDataset.item(split: .train, index: i - 1, seed: 7, imageSize: 64, style: SceneStyle(layout: .free), varyWording: true)
                XCTAssertEqual(images, [earlier.image, item.image])
                XCTAssertNil(r["image_token_texts"])
                let before = asked.count - item.questions.count
                XCTAssertTrue((1...2).contains(before))
                XCTAssertTrue(asked[..<before].allSatisfy { q in earlier.questions.contains { $0.question == q.0 && $0.answer == q.1 } })
                XCTAssertTrue(turns[0].hasPrefix("<image>\n") && turns[2 * before].hasPrefix("<image>\n"))
                XCTAssertEqual(turns.filter { $0.contains("<image>") }.count, 2)
            } else {
                XCTAssertEqual(r["image"] as? String, item.image)
                XCTAssertEqual(r["image_token_texts"] as? [String], item.scene.tokenTexts())
            }
        }
        XCTAssertTrue((10...30).contains(pairs), "\(pairs) two-picture conversations in 40")
        XCTAssertGreaterThan(reworded, 20)
        // A reworded question names the same shape or colour.
        let q = DemoQuestion(kind: .colour, question: "What colour is the star?", answer: "Red.")
        var rng = SeededRandom(seed: 1)
        for _ in 0..<20 {
            let r = DemoWordings.reworded(q, rng: &rng)
            XCTAssertTrue(r.question.contains("star"), r.question)
            XCTAssertEqual(r.answer, "Red.")
        }
    }

    /// The foreign-renderer evaluation set (sessions/data/foreign, drawn by Pillow): every record
    /// names pictures that are there, is tagged by kind and wording group, and asks what its
    /// picture (the newest one in a two-picture chat) shows according to pictures.json.
    func testForeignRendererSetIsConsistent() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("sessions/data/foreign").path
        func load(_ name: String) throws -> [[String: Any]] {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: folder + "/" + name))) as? [[String: Any]])
        }
        let pictures = Dictionary(uniqueKeysWithValues: try load("pictures.json").map { ($0["image"] as! String, $0["shapes"] as! [[String: Any]]) })
        XCTAssertEqual(pictures.count, 200)
        func answers(_ kind: String, _ question: String, _ shapes: [[String: Any]]) -> Set<String> {
            let names = shapes.map { ($0["kind"] as! String, $0["colour"] as! String) }
            switch kind {
            case "count": return [DemoAnswers.number(shapes.count)]
            case "colour": return Set(names.filter { question.contains($0.0) }.map { DemoAnswers.sentence($0.1) })
            default: return Set(names.filter { question.contains($0.1) }.map { DemoAnswers.sentence($0.0) })
            }
        }
        let test = try load("test.json")
        XCTAssertEqual(test.count, 600)
        var groups: [String: Int] = [:]
        for r in test {
            let image = try XCTUnwrap(r["image"] as? String)
            XCTAssertTrue(FileManager.default.fileExists(atPath: folder + "/" + image), image)
            let turns = try XCTUnwrap(r["conversations"] as? [[String: String]])
            let kind = try XCTUnwrap(r["kind"] as? String)
            groups[kind + "/" + (r["group"] as? String ?? "?"), default: 0] += 1
            XCTAssertEqual(answers(kind, turns[0]["value"]!, pictures[image]!), [turns[1]["value"]!], "\(r["id"]!)")
        }
        XCTAssertEqual(Set(groups.keys), ["colour/demo", "colour/other", "shape/demo", "shape/other", "count/demo", "count/other"])
        XCTAssertTrue(groups.values.allSatisfy { $0 > 60 }, "\(groups)")

        let chats = try load("two-pictures.json")
        XCTAssertEqual(chats.count, 120)
        for r in chats {
            let images = try XCTUnwrap(r["image"] as? [String])
            let turns = try XCTUnwrap(r["conversations"] as? [[String: String]])
            XCTAssertEqual(images.count, 2)
            XCTAssertEqual(turns.filter { $0["value"]!.hasPrefix("<image>\n") }.count, 2)
            let kind = try XCTUnwrap(r["kind"] as? String)
            let question = turns[2]["value"]!, reference = turns[3]["value"]!
            XCTAssertEqual(answers(kind, question, pictures[images[1]]!), [reference], "\(r["id"]!)")
            XCTAssertFalse(answers(kind, question, pictures[images[0]]!).contains(reference), "\(r["id"]!): the older picture gives the same answer")
        }
    }

    func testWriteRefusesAFileAsTheFolder() throws {
        let path = Self.scratchDir("file")
        try Data("x".utf8).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try DemoDataset.write(to: path, counts: [.train: 1], seed: 0, imageSize: 64)) { error in
            XCTAssertTrue("\(error)".hasPrefix(path + ": "), "\(error)")
        }
    }

    // MARK: command line

    static let binary: URL? = {
        let dir = Bundle.main.executableURL?.deletingLastPathComponent()
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // The test bundle sits next to the executable in the build folder.
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let url = candidate.appendingPathComponent("vlmsh")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        return nil
    }()

    func vlmsh(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        guard let binary = Self.binary else { throw XCTSkip("the vlmsh executable is not built next to the tests") }
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        final class Box: @unchecked Sendable { var data = Data() }
        let stdout = Box(), stderr = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { stdout.data = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { stderr.data = err.fileHandleForReading.readDataToEndOfFile() }
        process.waitUntilExit()
        group.wait()
        return (process.terminationStatus, String(decoding: stdout.data, as: UTF8.self), String(decoding: stderr.data, as: UTF8.self))
    }

    func testMakeDemoDataCommandEndToEnd() throws {
        let dir = Self.scratchDir("cli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try vlmsh(["make-demo-data", "--out", dir, "--train", "24", "--validation", "5", "--test", "4", "--seed", "9"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, r.stdout)
        XCTAssertTrue(r.stdout.hasPrefix("33 images, "), r.stdout)
        let files = try Self.contents(dir)
        XCTAssertEqual(files.keys.filter { $0.hasPrefix("images/") }.count, 33)

        // The command writes what the library writes for the same arguments.
        let same = Self.scratchDir("lib")
        defer { try? FileManager.default.removeItem(atPath: same) }
        _ = try DemoDataset.write(to: same, counts: [.train: 24, .validation: 5, .test: 4], seed: 9, imageSize: 64)
        XCTAssertEqual(files, try Self.contents(same))

        // --json: one object with the counts.
        let j = try vlmsh(["make-demo-data", "--out", dir, "--train", "3", "--validation", "1", "--test", "1",
                           "--image-size", "48", "--json"])
        XCTAssertEqual(j.status, 0, j.stderr)
        let object = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(object["images"] as? Int, 5)
        XCTAssertEqual(try ImageLoader.load(path: dir + "/images/train-000000.png").width, 48)

        // Bad arguments: non-zero exit, a short message.
        let bad = try vlmsh(["make-demo-data", "--out", dir, "--image-size", "8"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--image-size"), bad.stderr)
        for (option, value) in [("--layout", "spiral"), ("--jitter", "1.5")] {
            let refused = try vlmsh(["make-demo-data", "--out", dir, option, value])
            XCTAssertNotEqual(refused.status, 0)
            XCTAssertTrue(refused.stderr.contains(option), refused.stderr)
        }
        let file = dir + "/train.json"
        let notFolder = try vlmsh(["make-demo-data", "--out", file, "--train", "1"])
        XCTAssertNotEqual(notFolder.status, 0)
        XCTAssertEqual(notFolder.stderr.trimmingCharacters(in: .newlines).split(separator: "\n").count, 1, notFolder.stderr)
        XCTAssertTrue(notFolder.stderr.contains(file), notFolder.stderr)
    }
}

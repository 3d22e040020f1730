import Foundation
import VLMFormats
import VLMImage
import VLMTensor
import XCTest

/// Fixtures from Tests/Fixtures/gen_resize.py: noise images through transformers' PIL-backend
/// processors, and LLaVA-NeXT token counts.
enum ResizeFixtures {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/data/resize")

    struct Samples: Decodable { let index: [Int]; let uint8: [Int]; let normalized: [Float] }
    struct Case: Decodable {
        let name: String, config: String, width: Int, height: Int, seed: UInt64, shape: [Int], checksum: String
        let pixels: String?, samples: Samples, image_size: [Int]?, best_resolution: [Int]?
    }
    struct TokenCount: Decodable { let tile: Int, patch: Int, pinpoints: [[Int]], height: Int, width: Int, grid: [Int], count: Int }
    struct Config: Decodable { let folder: String; let anyres: Bool }
    struct Index: Decodable { let configs: [String: Config]; let cases: [Case]; let tokens: [TokenCount] }

    static let index: Index = {
        let data = try! Data(contentsOf: root.appendingPathComponent("index.json"))
        return try! JSONDecoder().decode(Index.self, from: data)
    }()

    static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    /// The generator's noise: byte i is the top byte of SplitMix64's (i+1)-th draw.
    static func noise(width: Int, height: Int, seed: UInt64) -> RGBImage {
        var random = SeededRandom(seed: seed)
        return RGBImage(width: width, height: height, pixels: (0..<(width * height * 3)).map { _ in UInt8(random.next() >> 56) })
    }

    /// The generator's checksum: sum of byte_i * mix(i + 1), wrapping.
    static func checksum(_ bytes: [UInt8]) -> UInt64 {
        var sum: UInt64 = 0
        for (i, b) in bytes.enumerated() { sum &+= UInt64(b) &* SeededRandom.mix(UInt64(i + 1)) }
        return sum
    }
}

final class ResizeParityTests: XCTestCase {
    /// A pipeline's output as bytes (the processor without rescale and normalize gives whole numbers).
    static func bytes(_ t: Tensor) -> [UInt8] {
        (0..<t.count).map { i in
            let v = t.data[i]
            precondition(v >= 0 && v <= 255 && v == v.rounded(), "not a byte: \(v)")
            return UInt8(v)
        }
    }

    /// Every noise case: the uint8 output before rescale/normalize is compared whole where the
    /// fixture stores it (within one level, exactness counted) and by checksum everywhere (exact);
    /// the normalized tensor at sampled positions.
    func testNoiseMatchesTransformersAtEverySize() throws {
        struct Tally { var cases = 0, exact = 0, whole = 0; var maxLevels = 0; var maxNormalized: Float = 0 }
        var tallies: [String: Tally] = [:]
        for c in ResizeFixtures.index.cases {
            let config = ResizeFixtures.index.configs[c.config]!
            let processor = try ImageProcessor.load(folder: ResizeFixtures.path(config.folder))
            var raw = processor
            raw.doRescale = false; raw.doNormalize = false
            let image = ResizeFixtures.noise(width: c.width, height: c.height, seed: c.seed)

            let values: Tensor, normalized: Tensor
            if config.anyres {
                let rawOut = try raw.preprocessAnyResolution(image)
                let out = try processor.preprocessAnyResolution(image)
                XCTAssertEqual([out.originalSize.height, out.originalSize.width], c.image_size, c.name)
                XCTAssertEqual([out.bestResolution.height, out.bestResolution.width], c.best_resolution, c.name)
                values = rawOut.pixelValues; normalized = out.pixelValues
            } else {
                values = try raw.preprocess(image)
                normalized = try processor.preprocess(image)
            }
            XCTAssertEqual(values.shape, c.shape, c.name)
            XCTAssertEqual(normalized.shape, c.shape, c.name)
            guard values.shape == c.shape, normalized.shape == c.shape else { continue }

            var tally = tallies[c.config] ?? Tally()
            tally.cases += 1
            let got = Self.bytes(values)
            let exact = String(format: "%016llx", ResizeFixtures.checksum(got)) == c.checksum
            if exact { tally.exact += 1 }
            if let file = c.pixels {
                let want = try [UInt8](Data(contentsOf: URL(fileURLWithPath: ResizeFixtures.path(file))))
                XCTAssertEqual(want.count, got.count, c.name)
                var worst = 0, differing = 0
                for (a, b) in zip(got, want) where a != b {
                    worst = max(worst, abs(Int(a) - Int(b))); differing += 1
                }
                XCTAssertLessThanOrEqual(worst, 1, "\(c.name): \(differing) values differ, by up to \(worst) levels")
                XCTAssertEqual(exact, worst == 0, "\(c.name): checksum and pixels disagree")
                tally.whole += 1
                tally.maxLevels = max(tally.maxLevels, worst)
            } else {
                let sampled = zip(c.samples.index, c.samples.uint8).map { abs(Int(got[$0]) - $1) }.max() ?? 0
                XCTAssertTrue(exact, "\(c.name): checksum differs from transformers' (sampled values differ by up to \(sampled) levels)")
            }
            for (i, want) in zip(c.samples.index, c.samples.normalized) {
                let d = abs(normalized.data[i] - want)
                tally.maxNormalized = max(tally.maxNormalized, d)
                XCTAssertLessThanOrEqual(d, 1e-6 * max(1, abs(want)), "\(c.name) normalized value \(i): \(normalized.data[i]) vs \(want)")
            }
            tallies[c.config] = tally
        }
        let lines = tallies.sorted { $0.key < $1.key }.map { name, t in
            "\(name): \(t.exact)/\(t.cases) exact; whole outputs compared \(t.whole), max \(t.maxLevels) levels; normalized samples max |diff| \(t.maxNormalized)"
        }
        print("noise resize parity over \(ResizeFixtures.index.cases.count) cases:\n  " + lines.joined(separator: "\n  "))
        XCTAssertGreaterThanOrEqual(ResizeFixtures.index.cases.count, 200)
    }

    /// Embedding rows per image size against transformers' model (`get_anyres_image_grid_shape`,
    /// `unpad_image`, `image_newline`) and processor (`_get_number_of_features`), which agree.
    func testAnyResolutionTokenCounts() {
        for t in ResizeFixtures.index.tokens {
            let layout = AnyResolutionLayout(gridPinpoints: t.pinpoints, tileSize: t.tile, patchSize: t.patch)
            let grid = layout.gridShape(height: t.height, width: t.width)
            XCTAssertEqual([grid.rows, grid.columns], t.grid, "\(t.height)x\(t.width) tile \(t.tile)")
            XCTAssertEqual(layout.imageFeatureCount(height: t.height, width: t.width), t.count, "\(t.height)x\(t.width) tile \(t.tile)")
        }
        XCTAssertGreaterThanOrEqual(ResizeFixtures.index.tokens.count, 100)
        // LLaVA-1.6 at 336: a 600x800 (h x w) photo fits 672x672 (2x2 tiles, 48x48 features); its
        // 4:3 shape unpads that to 36 rows of 48, each with a newline, after the 24x24 base tile.
        let real = AnyResolutionLayout()
        XCTAssertTrue(real.bestResolution(height: 600, width: 800) == (672, 672))
        XCTAssertTrue(real.unpaddedFeatureSize(height: 600, width: 800) == (36, 48))
        XCTAssertEqual(real.imageFeatureCount(height: 600, width: 800), 576 + 36 * 49)
        XCTAssertEqual(real.imageFeatureCount(height: 600, width: 800, newline: false), 576 + 36 * 48)
        // A square image prefers the smallest candidate that holds it whole: 336x672.
        XCTAssertTrue(real.bestResolution(height: 336, width: 336) == (336, 672))
    }

    func testGridPinpointsAreReadAndChecked() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-anyres-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("preprocessor_config.json")
        func load(_ json: String) throws -> ImageProcessor {
            try json.write(to: file, atomically: true, encoding: .utf8)
            return try ImageProcessor.load(folder: folder.path)
        }
        let base = #""image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}"#
        let loaded = try load("{\(base), \"image_grid_pinpoints\": [[336, 672], [672, 336]]}")
        XCTAssertEqual(loaded.effectiveGridPinpoints, [[336, 672], [672, 336]])
        XCTAssertTrue(loaded.isAnyResolution)
        XCTAssertFalse(ImageProcessor(imageProcessorType: "CLIPImageProcessor").isAnyResolution)
        XCTAssertEqual(try load("{\(base)}").effectiveGridPinpoints, AnyResolutionLayout.llavaNextPinpoints)
        for bad in ["[]", "[[336]]", "[[336, 0]]", "[[336, 99999]]", "[[336, 672, 1]]"] {
            XCTAssertThrowsError(try load("{\(base), \"image_grid_pinpoints\": \(bad)}"), bad) { error in
                XCTAssertTrue(error is FormatError, "\(bad): \(error)")
                XCTAssertTrue("\(error)".contains("image_grid_pinpoints"), "\(bad): \(error)")
            }
        }
        XCTAssertThrowsError(try load("{\(base), \"image_grid_pinpoints\": \"[(336, 672)]\"}")) { XCTAssertTrue($0 is FormatError) }

        // A 1000x200 (w x h) image on the real pinpoints: 336x1008, three tiles after the base.
        let out = try loaded.preprocessAnyResolution(RGBImage(width: 1000, height: 200, filledWith: (200, 100, 50)),
                                                     gridPinpoints: AnyResolutionLayout.llavaNextPinpoints)
        XCTAssertEqual(out.pixelValues.shape, [4, 3, 336, 336])
        XCTAssertTrue(out.originalSize == (200, 1000) && out.bestResolution == (336, 1008))
        XCTAssertEqual(out.tileCount, 3)
        // The padding above the fitted image is black before normalization: (0 - mean) / std.
        let mean = Float(0.48145466), std = Float(0.26862954)
        XCTAssertEqual(out.pixelValues.data[1 * 3 * 336 * 336], (0 - mean) / std, accuracy: 1e-6)
    }

    /// One anyres image stays far below the allocation limit; a corrupt-sized one is refused first.
    func testAnyResolutionAllocationIsChecked() throws {
        let processor = ImageProcessor(size: ImageSize(shortestEdge: 336), cropSize: ImageSize(height: 336, width: 336))
        XCTAssertLessThan(processor.anyResolutionBytes(width: 8000, height: 6000), 300e6)
        XCTAssertThrowsError(try processor.preprocessAnyResolution(RGBImage(width: 1, height: 1, filledWith: (0, 0, 0)),
                                                                  gridPinpoints: [[4096, 4096]] + Array(repeating: [1, 1], count: 300))) {
            XCTAssertTrue($0 is PreprocessingError, "\($0)")
        }
        // 4096x4096 in tiles of 1 pixel would be 16M vision-tower passes: refused before any tile is made.
        let tiny = ImageProcessor(size: ImageSize(shortestEdge: 1), cropSize: ImageSize(height: 1, width: 1))
        XCTAssertThrowsError(try tiny.preprocessAnyResolution(RGBImage(width: 40, height: 40, filledWith: (0, 0, 0)),
                                                              gridPinpoints: [[4096, 4096]])) {
            XCTAssertTrue("\($0)".contains("16777216 tiles"), "\($0)")
        }
    }
}

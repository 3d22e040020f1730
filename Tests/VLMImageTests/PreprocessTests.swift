import VLMFormats
import VLMImage
import VLMTensor
import XCTest

/// pixel_values against transformers' PIL-backend processors (CLIP, SigLIP, LLaVA pad).
final class PreprocessTests: XCTestCase {
    func testPixelValuesMatchTransformers() throws {
        let golden = try SafetensorsFile(path: ImageFixtures.path("pixel_values.safetensors"))
        var cases = 0
        var report: [String] = []
        for (configName, config) in ImageFixtures.index.configs.sorted(by: { $0.key < $1.key }) {
            let processor = try ImageProcessor.load(folder: ImageFixtures.path(config.folder))
            let std = processor.imageStd ?? [1, 1, 1]
            var worst: Float = 0
            for name in config.images {
                let image = try ImageLoader.load(path: ImageFixtures.file(name))
                let got = try processor.preprocess(image, padToSquare: config.pad)
                let want = try golden.floats("\(configName)/\(name)")
                XCTAssertEqual(got.shape, want.shape, "\(configName)/\(name)")
                guard got.shape == want.shape else { continue }
                let plane = got.count / 3
                // F16-stored goldens carry their own rounding on top of the one-level budget.
                let storage: Float = config.dtype == "F16" ? 2e-3 : 1e-6
                var maxDiff: Float = 0
                for c in 0..<3 {
                    let level = Float(1.0 / 255.0 / std[c])
                    for i in 0..<plane {
                        let d = abs(got.data[c * plane + i] - want.data[c * plane + i])
                        maxDiff = max(maxDiff, d)
                        if d > level + storage {
                            XCTFail("\(configName)/\(name) channel \(c) index \(i): \(got.data[c * plane + i]) vs \(want.data[c * plane + i])")
                            break
                        }
                    }
                }
                worst = max(worst, maxDiff)
                cases += 1
            }
            report.append("\(configName): max |diff| \(worst)")
        }
        print("pixel_values parity over \(cases) cases:\n  " + report.joined(separator: "\n  "))
        XCTAssertGreaterThan(cases, 60)
    }

    func testSizeMathAndConfigForms() throws {
        let clip = ImageProcessor(size: ImageSize(shortestEdge: 336))
        XCTAssertTrue(clip.resizedSize(width: 1920, height: 1080) == (336, 597))
        XCTAssertTrue(clip.resizedSize(width: 333, height: 500) == (504, 336))
        // Older CLIP configs give bare integers: size is a shortest edge, crop_size a square.
        let json = #"{"size": 336, "crop_size": 336, "resample": 3, "image_processor_type": "CLIPImageProcessor"}"#
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-pp-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try json.write(to: folder.appendingPathComponent("preprocessor_config.json"), atomically: true, encoding: .utf8)
        let loaded = try ImageProcessor.load(folder: folder.path)
        let out = try loaded.preprocess(RGBImage(width: 500, height: 400, filledWith: (10, 20, 30)))
        XCTAssertEqual(out.shape, [3, 336, 336])
        try #"{"resample": 9}"#.write(to: folder.appendingPathComponent("preprocessor_config.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ImageProcessor.load(folder: folder.path)) { XCTAssertTrue($0 is FormatError) }
    }

    func testLargeResizeIsFast() throws {
        // A 1920x1080 photo-sized image to CLIP-336, the hot path of every LLaVA request.
        var pixels = [UInt8](repeating: 0, count: 1920 * 1080 * 3)
        for i in pixels.indices { pixels[i] = UInt8(truncatingIfNeeded: i &* 2654435761 >> 13) }
        let image = RGBImage(width: 1920, height: 1080, pixels: pixels)
        let processor = ImageProcessor(size: ImageSize(shortestEdge: 336), cropSize: ImageSize(height: 336, width: 336))
        _ = try processor.preprocess(image)
        var best = Double.infinity
        for _ in 0..<5 {
            let start = Date()
            _ = image.resized(width: 597, height: 336, filter: .bicubic)
            best = min(best, Date().timeIntervalSince(start))
        }
        let start = Date()
        let out = try processor.preprocess(image)
        let total = Date().timeIntervalSince(start)
        print(String(format: "1920x1080 -> 597x336 bicubic resize: %.1f ms; full preprocess: %.1f ms", best * 1000, total * 1000))
        XCTAssertEqual(out.shape, [3, 336, 336])
        XCTAssertLessThan(best, 0.25)  // loose: shared CI machines; release builds take a few ms
    }
}

/// What preprocessing allocates is computed from the image size and refused past the limit
/// before any of it is allocated.
final class PreprocessingSizeTests: XCTestCase {
    func testExtremeAspectRatiosAreRefusedAndPhotosPass() throws {
        let demo = ImageProcessor(size: ImageSize(shortestEdge: 96), cropSize: ImageSize(height: 96, width: 96))
        // 96 000 000×96 RGB is 27.6 GB on its own.
        let (bytes, resized) = demo.preprocessingBytes(width: 1_000_000, height: 1, padToSquare: false)
        XCTAssertTrue(resized == (96, 96_000_000))
        XCTAssertGreaterThan(bytes, 27.6e9)
        XCTAssertThrowsError(try demo.preprocess(RGBImage(width: 1_000_000, height: 1, filledWith: (1, 2, 3)))) { error in
            XCTAssertTrue("\(error)".hasPrefix("image 1000000×1: preprocessing it (resized to 96000000×96) would allocate 31.4 GB"), "\(error)")
        }
        // Padding to a square is counted too: 20 000×20 000 RGB is 1.2 GB before any resize.
        XCTAssertThrowsError(try demo.checkPreprocessingSize(width: 20_000, height: 1, padToSquare: true))
        XCTAssertNoThrow(try demo.checkPreprocessingSize(width: 20_000, height: 1, padToSquare: false))
        // A large photo to CLIP-336 stays far below the limit, padded or not.
        let clip = ImageProcessor(size: ImageSize(shortestEdge: 336), cropSize: ImageSize(height: 336, width: 336))
        for pad in [false, true] {
            let photo = clip.preprocessingBytes(width: 8000, height: 6000, padToSquare: pad).bytes
            XCTAssertLessThan(photo, 250e6, "pad \(pad)")
            XCTAssertNoThrow(try clip.checkPreprocessingSize(width: 8000, height: 6000, padToSquare: pad))
        }
        XCTAssertEqual(try clip.preprocess(RGBImage(width: 2000, height: 10, filledWith: (9, 9, 9))).shape, [3, 336, 336])
    }
}

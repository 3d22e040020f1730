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
                let got = processor.preprocess(image, padToSquare: config.pad)
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
        let out = loaded.preprocess(RGBImage(width: 500, height: 400, filledWith: (10, 20, 30)))
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
        _ = processor.preprocess(image)
        var best = Double.infinity
        for _ in 0..<5 {
            let start = Date()
            _ = image.resized(width: 597, height: 336, filter: .bicubic)
            best = min(best, Date().timeIntervalSince(start))
        }
        let start = Date()
        let out = processor.preprocess(image)
        let total = Date().timeIntervalSince(start)
        print(String(format: "1920x1080 -> 597x336 bicubic resize: %.1f ms; full preprocess: %.1f ms", best * 1000, total * 1000))
        XCTAssertEqual(out.shape, [3, 336, 336])
        XCTAssertLessThan(best, 0.25)  // loose: shared CI machines; release builds take a few ms
    }
}

import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import XCTest

/// LLaVA-1.6 as a llama.cpp GGUF pair, made by llama.cpp's converters from the llava_next fixture's
/// CLIP+Llama checkpoint (Tests/Fixtures/gen_gguf_pair_next.py), against transformers on that
/// checkpoint (f16 where the files store f16): any-resolution pixels, image token counts, packed
/// features, logits, top-5 and 16 greedy ids for four aspect ratios.
final class GGUFPairNextTests: XCTestCase {
    static let folder = Fixtures.data.appendingPathComponent("gguf_pair_next")
    static let text = folder.appendingPathComponent("tiny-next-text-f16.gguf").path
    static let mmproj = folder.appendingPathComponent("tiny-next-mmproj-f16.gguf").path

    func testThePairMatchesTransformersOnTheSameCheckpoint() throws {
        let golden = try Fixtures.json("gguf_pair_next/golden.json")
        let data = try Data(contentsOf: Self.folder.appendingPathComponent("golden.f32"))
        let model = try VisionLanguageModel(text: Self.text, mmproj: Self.mmproj)
        let llava = model.llava
        let next = try XCTUnwrap(llava.anyResolution, "a LLaVA-1.6 mmproj loads as any-resolution")
        XCTAssertEqual(next.layout.gridPinpoints, golden["image_grid_pinpoints"] as? [[Int]])
        let imageID = try XCTUnwrap(golden["image_token_id"] as? Int)
        let std = llava.imageProcessor.imageStd ?? [0.5]
        let oneLevel = Float(1.0 / 255.0 / std.min()!) + 1e-5
        let cases = try XCTUnwrap(golden["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let file = try XCTUnwrap(c["image"] as? String)
            let picture = try ImageLoader.load(path: Fixtures.data.appendingPathComponent("llava_next/images/\(file)").path)
            XCTAssertEqual([picture.height, picture.width], c["image_size"] as? [Int], file)

            let pixels = try Fixtures.array(c["pixel_values"], in: data)
            let ours = try llava.modelInput(picture)
            XCTAssertEqual(ours.shape, pixels.shape, file)
            XCTAssertLessThanOrEqual(maxDifference(ours.array, pixels.values), oneLevel, "\(file) pixels")

            let tokens = try XCTUnwrap(c["image_tokens"] as? Int)
            XCTAssertEqual(llava.imageTokenCount(height: picture.height, width: picture.width), tokens, file)

            let goldenPixels = Tensor(shape: pixels.shape, values: pixels.values)
            let packed = try Fixtures.array(c["packed_features"], in: data)
            let features = try llava.imageFeatures(pixels: goldenPixels, size: (picture.height, picture.width))
            XCTAssertEqual(features.shape, packed.shape, file)
            let relative = relativeDifference(features.array, packed.values)
            XCTAssertLessThan(relative, 1e-3, "\(file) packed features")

            let promptIDs = try XCTUnwrap(c["prompt_ids"] as? [Int])
            let input = ImageInput(hash: file, pixels: goldenPixels, size: (picture.height, picture.width))
            let slots = try ChatSession.expand(ids: promptIDs, images: [input], support: model.images)
            let expanded = slots.map { slot -> Int in if case .token(let id) = slot { return id } else { return imageID } }
            XCTAssertEqual(expanded, c["input_ids"] as? [Int], "\(file) input ids")

            let imageFeatures = ImageFeatures(model: model)
            imageFeatures.attach([input])
            let cache = model.decoder.makeCache(capacity: slots.count + 16)
            let logits = try Prompt(slots: slots).run(model: model, features: imageFeatures, cache: cache)
            let goldenLogits = try XCTUnwrap(c["last_logits"] as? [Double]).map(Float.init)
            let ld = maxDifference(Array(logits), goldenLogits)
            XCTAssertLessThan(ld, 1e-3, "\(file) last logits")
            let top5 = Array(logits).enumerated().sorted { $0.element > $1.element }.prefix(5).map(\.offset)
            XCTAssertEqual(top5, c["top5_ids"] as? [Int], "\(file) top-5")
            let ids = try greedyIDs(after: logits, decoder: model.decoder, cache: cache, count: 16)
            XCTAssertEqual(ids, c["greedy_ids"] as? [Int], "\(file) greedy ids")
            print("\(file): \(tokens) image tokens, features max rel diff \(relative), last logits max diff \(ld)")
        }
    }

    func testHostilePinpointsAreOneLine() throws {
        for (file, fragment) in [("huge-side.gguf", "clip.vision.image_grid_pinpoints[0] 2147483647 is out of range"),
                                 ("odd-count.gguf", "clip.vision.image_grid_pinpoints holds 3 values, not [height, width] integer pairs"),
                                 ("not-multiple.gguf", "clip.vision.image_grid_pinpoints[0] [32, 48] is not a multiple of clip.vision.image_size 32")] {
            let path = Self.folder.appendingPathComponent("hostile/" + file).path
            XCTAssertThrowsError(try LlavaModel.load(text: Self.text, mmproj: path), file) { error in
                XCTAssertTrue("\(error)".contains(fragment), "\(file): \(error)")
                XCTAssertFalse("\(error)".contains("\n"), "\(file): one line")
            }
        }
    }

    /// Newer converters name the row separator `v.image_newline`: the same model.
    func testTheNewlineUnderItsNewerNameLoadsTheSame() throws {
        let renamed = try VisionLanguageModel(text: Self.text, mmproj: Self.folder.appendingPathComponent("tiny-next-mmproj-v-newline.gguf").path)
        let original = try VisionLanguageModel(text: Self.text, mmproj: Self.mmproj)
        XCTAssertEqual(try XCTUnwrap(renamed.llava.anyResolution).imageNewline.value.array,
                       try XCTUnwrap(original.llava.anyResolution).imageNewline.value.array)
    }

    /// The same images through the llava_next folder the pair was converted from and through the
    /// pair: the same token counts, features close (the pair's f16 weights), the same greedy ids.
    func testThePairAndItsSourceFolderAgree() throws {
        let pair = try VisionLanguageModel(text: Self.text, mmproj: Self.mmproj)
        let folder = try VisionLanguageModel(path: Fixtures.data.appendingPathComponent("llava_next/clip-llama").path)
        for file in ["landscape.png", "portrait.png", "square.png", "four-three.png"] {
            let picture = try ImageLoader.load(path: Fixtures.data.appendingPathComponent("llava_next/images/\(file)").path)
            XCTAssertEqual(pair.llava.imageTokenCount(height: picture.height, width: picture.width),
                           folder.llava.imageTokenCount(height: picture.height, width: picture.width), file)
            let a = try pair.llava.imageFeatures(pixels: try pair.llava.modelInput(picture), size: (picture.height, picture.width))
            let b = try folder.llava.imageFeatures(pixels: try folder.llava.modelInput(picture), size: (picture.height, picture.width))
            XCTAssertEqual(a.shape, b.shape, file)
            XCTAssertLessThan(maxDifference(a.array, b.array), 0.05, "\(file): f16 rounding only")
        }
    }
}

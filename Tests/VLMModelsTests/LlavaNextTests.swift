import Foundation
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import XCTest

/// Tiny random LLaVA-NeXT checkpoints against transformers (Tests/Fixtures/gen_llava_next.py):
/// any-resolution pixels, image token counts, packed image features, logits and greedy ids for
/// four aspect ratios that pick four different tile grids, on a CLIP+Llama ("default") and a
/// SigLIP+Mistral ("full", two feature layers) model.
final class LlavaNextTests: XCTestCase {
    static let folder = Fixtures.data.appendingPathComponent("llava_next")
    nonisolated(unsafe) static var models: [String: VisionLanguageModel] = [:]

    func model(_ name: String) throws -> VisionLanguageModel {
        if let m = Self.models[name] { return m }
        let m = try VisionLanguageModel(path: Self.folder.appendingPathComponent(name).path)
        Self.models[name] = m
        return m
    }

    func image(_ name: String) throws -> RGBImage {
        try ImageLoader.load(path: Self.folder.appendingPathComponent("images/\(name)").path)
    }

    func checkpoints() throws -> [(String, [String: Any])] {
        let golden = try Fixtures.json("llava_next/golden.json")
        let cps = try XCTUnwrap(golden["checkpoints"] as? [String: [String: Any]])
        XCTAssertEqual(cps.count, 2)
        return cps.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    func testEveryCheckpointAndImageMatchesTransformers() throws {
        let data = try Data(contentsOf: Self.folder.appendingPathComponent("golden.f32"))
        var grids = Set<[Int]>()
        for (name, cp) in try checkpoints() {
            let model = try self.model(name)
            let llava = model.llava
            let next = try XCTUnwrap(llava.anyResolution, name)
            XCTAssertEqual(next.layout.gridPinpoints, cp["image_grid_pinpoints"] as? [[Int]])
            let imageID = try XCTUnwrap(cp["image_token_id"] as? Int)
            XCTAssertEqual(model.imageTokenID, imageID)
            let std = llava.imageProcessor.imageStd ?? [0.5]
            let oneLevel = Float(1.0 / 255.0 / std.min()!) + 1e-5
            let cases = try XCTUnwrap(cp["cases"] as? [[String: Any]])
            XCTAssertEqual(cases.count, 4)
            for c in cases {
                let file = try XCTUnwrap(c["image"] as? String)
                let label = "\(name) \(file)"
                let picture = try image(file)
                XCTAssertEqual([picture.height, picture.width], c["image_size"] as? [Int], label)

                // Preprocessing: base tile plus grid tiles, within one uint8 level of LlavaNextImageProcessor.
                let pixels = try Fixtures.array(c["pixel_values"], in: data)
                let ours = try llava.modelInput(picture)
                XCTAssertEqual(ours.shape, pixels.shape, label)
                XCTAssertEqual(ours.shape[0] - 1, c["tiles"] as? Int, label)
                XCTAssertLessThanOrEqual(maxDifference(ours.array, pixels.values), oneLevel, "\(label) pixels")
                let grid = next.layout.gridShape(height: picture.height, width: picture.width)
                XCTAssertEqual(grid.rows * grid.columns, c["tiles"] as? Int, label)
                grids.insert([grid.rows, grid.columns])

                // Image token count: ours, the layout's, and LlavaNextProcessor's expansion agree.
                let tokens = try XCTUnwrap(c["image_tokens"] as? Int)
                XCTAssertEqual(llava.imageTokenCount(height: picture.height, width: picture.width), tokens, label)
                XCTAssertEqual(next.layout.imageFeatureCount(height: picture.height, width: picture.width), tokens, label)

                // Packed features (tower, projector, unpad, newlines, base first) on the golden pixels.
                let golden = Tensor(shape: pixels.shape, values: pixels.values)
                let packed = try Fixtures.array(c["packed_features"], in: data)
                let features = try llava.imageFeatures(pixels: golden, size: (picture.height, picture.width))
                XCTAssertEqual(features.shape, packed.shape, label)
                let fd = maxDifference(features.array, packed.values)
                XCTAssertLessThan(fd, 1e-3, "\(label) packed features")

                // Prompt ids, then the expansion at the image token.
                let promptIDs = try XCTUnwrap(c["prompt_ids"] as? [Int])
                XCTAssertEqual(model.promptEncoding.ids(try XCTUnwrap(c["prompt"] as? String), addSpecialTokens: true), promptIDs, label)
                let input = ImageInput(hash: file, pixels: golden, size: (picture.height, picture.width))
                let slots = try ChatSession.expand(ids: promptIDs, images: [input], support: model.images)
                let expanded = slots.map { slot -> Int in if case .token(let id) = slot { return id } else { return imageID } }
                XCTAssertEqual(expanded, c["input_ids"] as? [Int], "\(label) input ids")

                // Last logits and 16 greedy ids through the prompt path the chat uses.
                let imageFeatures = ImageFeatures(model: model)
                imageFeatures.attach([input])
                let prompt = Prompt(slots: slots)
                let cache = model.decoder.makeCache(capacity: slots.count + 16)
                let logits = try prompt.run(model: model, features: imageFeatures, cache: cache)
                let goldenLogits = try XCTUnwrap(c["last_logits"] as? [Double]).map(Float.init)
                let ld = maxDifference(Array(logits), goldenLogits)
                XCTAssertEqual(logits.count, goldenLogits.count, label)
                XCTAssertLessThan(ld, 1e-3, "\(label) last logits")
                let ids = try greedyIDs(after: logits, decoder: model.decoder, cache: cache, count: 16)
                XCTAssertEqual(ids, c["greedy_ids"] as? [Int], "\(label) greedy ids")
                print("\(label): \(tokens) image tokens, features max diff \(fd), last logits max diff \(ld)")
            }
        }
        XCTAssertEqual(grids.count, 4, "the four images pick four grids: \(grids)")
    }

    /// Two images of different sizes in one prompt: each placeholder takes its own image's count.
    func testImagesOfDifferentSizesTakeTheirOwnCounts() throws {
        let model = try self.model("clip-llama")
        let support = try XCTUnwrap(model.images)
        let wide = try support.input(hash: "wide", image: try image("landscape.png"))
        let small = try support.input(hash: "small", image: try image("four-three.png"))
        XCTAssertEqual(try support.featureCount(of: wide), 264)
        XCTAssertEqual(try support.featureCount(of: small), 152)
        let t = support.tokenID
        let slots = try ChatSession.expand(ids: [1, t, 5, t, 6], images: [wide, small], support: support)
        XCTAssertEqual(slots.count, 3 + 264 + 152)
        XCTAssertEqual(slots[1], .image(hash: "wide", row: 0))
        XCTAssertEqual(slots[265], .token(5))
        XCTAssertEqual(slots[266 + 151], .image(hash: "small", row: 151))
        // A run already expanded must have its own image's length.
        XCTAssertNoThrow(try ChatSession.expand(ids: [1] + Array(repeating: t, count: 152), images: [small], support: support))
        XCTAssertThrowsError(try ChatSession.expand(ids: [1] + Array(repeating: t, count: 264), images: [small], support: support))
        // Without its size an any-resolution image cannot be counted.
        XCTAssertThrowsError(try support.featureCount(of: ImageInput(hash: "x", pixels: wide.pixels)))
    }

    /// The chat expands an attached image by its size and replies (a follow-up reuses the cache).
    func testChatSessionWithAnImage() throws {
        let model = try self.model("siglip-mistral")
        let support = try XCTUnwrap(model.images)
        let session = ChatSession(model: model)
        var parameters = GenerationParameters()
        parameters.temperature = 0
        parameters.maxTokens = 4
        let generator = try session.send("What is in the image?", images: [try support.input(hash: "p", image: try image("portrait.png"))],
                                         parameters: parameters)
        while try generator.next() != nil {}
        session.commit(reply: generator.text)
        XCTAssertEqual(session.encoderRuns, 1)
        let again = try session.send("And now?", parameters: parameters)
        while try again.next() != nil {}
        XCTAssertGreaterThan(session.reusedPositions, 280)
    }

    /// The pack on a recording tape is the inference pack, and gradients reach both the projected
    /// rows and `image_newline` (so the same forward trains): being linear, it satisfies
    /// <pack(x), g> = <x, ∂x> + <newline, ∂newline> for any upstream gradient g.
    func testPackOnTheTapeMatchesInferenceAndPassesGradients() throws {
        let llava = try model("clip-llama").llava
        let next = try XCTUnwrap(llava.anyResolution)
        let picture = try image("landscape.png")
        let pixels = try llava.modelInput(picture)
        let size = (height: picture.height, width: picture.width)
        let projectedValue = llava.projector.forward(Variable(try llava.tileFeatures(pixels: pixels)), tape: Tape(recording: false)).value
        let projected = Variable(projectedValue, requiresGrad: true)
        next.imageNewline.requiresGrad = true
        defer { next.imageNewline.requiresGrad = false; next.imageNewline.zeroGrad() }
        next.imageNewline.zeroGrad()
        let tape = Tape()
        let packed = try llava.packImageFeatures(projected, sizes: [size], tape: tape)
        XCTAssertEqual(packed.value.array, try llava.imageFeatures(pixels: pixels, size: size).array)
        var random = SeededRandom(seed: 7)
        let upstream = (0..<packed.count).map { _ in random.nextUnit() - 0.5 }
        tape.backward(packed, outputGradient: upstream)
        func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }
        let lhs = dot(packed.value.array, upstream)
        let newlineGrad = try XCTUnwrap(next.imageNewline.grad).array
        let rhs = dot(projectedValue.array, try XCTUnwrap(projected.grad).array) + dot(next.imageNewline.value.array, newlineGrad)
        XCTAssertEqual(lhs, rhs, accuracy: 1e-3 * max(1, abs(lhs)))
        // The newline's gradient is the sum of the upstream rows it fills (8 kept grid rows for this image).
        let d = packed.columns
        XCTAssertGreaterThan(newlineGrad.map { abs($0) }.max()!, 0)
        XCTAssertEqual(packed.rows, 64 + 8 * 25)
        var expected = [Float](repeating: 0, count: d)
        for row in 0..<8 { for k in 0..<d { expected[k] += upstream[(64 + row * 25 + 24) * d + k] } }
        XCTAssertLessThan(maxDifference(newlineGrad, expected), 1e-4)
    }

    /// Configs a LLaVA-NeXT folder must not be built from: one line naming the file and the key.
    func testHostileConfigsAreOneLineErrors() throws {
        let source = Self.folder.appendingPathComponent("clip-llama")
        let configText = try String(contentsOf: source.appendingPathComponent("config.json"), encoding: .utf8)
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(configText.utf8)) as? [String: Any])
        let cases: [(String, (inout [String: Any]) -> Void, String)] = [
            ("empty pinpoints", { $0["image_grid_pinpoints"] = [[Int]]() }, "image_grid_pinpoints"),
            ("absurd pinpoint", { $0["image_grid_pinpoints"] = [[32, 1 << 40]] }, "image_grid_pinpoints[0]"),
            ("not a pair", { $0["image_grid_pinpoints"] = [[32, 64, 96]] }, "image_grid_pinpoints[0]"),
            ("not tile multiples", { $0["image_grid_pinpoints"] = [[48, 64]] }, "multiple of vision_config.image_size"),
            ("too many", { $0["image_grid_pinpoints"] = Array(repeating: [32, 32], count: 10_000) }, "image_grid_pinpoints"),
            ("full with a class token", { $0["vision_feature_select_strategy"] = "full" }, "vision_feature_select_strategy"),
        ]
        let original = config
        for (label, change, expected) in cases {
            config = original
            change(&config)
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("llava-next-bad-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            for file in try FileManager.default.contentsOfDirectory(atPath: source.path) where file != "config.json" {
                try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent(file), withDestinationURL: source.appendingPathComponent(file))
            }
            try JSONSerialization.data(withJSONObject: config).write(to: dir.appendingPathComponent("config.json"))
            XCTAssertThrowsError(try VisionLanguageModel(path: dir.path), label) { error in
                let text = "\(error)"
                XCTAssertEqual(text.split(separator: "\n").count, 1, "\(label): \(text)")
                XCTAssertTrue(text.contains(expected), "\(label): \(text)")
                XCTAssertTrue(text.contains("config.json"), "\(label): \(text)")
            }
        }
    }
}

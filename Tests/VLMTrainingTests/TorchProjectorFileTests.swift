import XCTest
import VLMFormats
import VLMModels
import VLMTensor
import VLMTraining

/// Projector files in LLaVA's torch.save form (`mm_projector.bin`): what projector tuning writes
/// beside the safetensors copies, and what LLaVA's own pretraining stage leaves behind.
extension EvaluatorTests {
    /// `save` writes mm_projector.bin with LLaVA's key names and the same values as the
    /// safetensors files; a folder holding only that file is a projector adapter.
    func testProjectorSaveWritesTheTorchFileAndItLoadsAlone() throws {
        let model = try loadModel()
        let nudged = ProjectorFiles.snapshot(model.llava.projector)
        for t in nudged { for i in 0..<t.count { t.data[i] += 0.03 * Float(i % 5) - 0.06 } }
        let original = ProjectorFiles.snapshot(model.llava.projector)
        ProjectorFiles.apply(nudged, to: model.llava.projector)
        let dir = try temporaryDirectory()
        try ProjectorFiles.save(model.llava.projector, directory: dir)
        ProjectorFiles.apply(original, to: model.llava.projector)

        let bin = try TorchCheckpointFile(path: dir + "/" + ProjectorFiles.llavaTorchFile)
        let safetensors = try SafetensorsFile(path: dir + "/" + ProjectorFiles.llavaFile)
        XCTAssertEqual(bin.weightNames, ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                         "model.mm_projector.2.bias", "model.mm_projector.2.weight"])
        XCTAssertEqual(bin.weightNames, safetensors.weightNames)
        for name in bin.weightNames {
            XCTAssertEqual(try bin.floats(name).shape, try safetensors.floats(name).shape, name)
            XCTAssertEqual(try bin.floats(name).array, try safetensors.floats(name).array, name)
        }

        let alone = try temporaryDirectory()
        try FileManager.default.copyItem(atPath: dir + "/" + ProjectorFiles.llavaTorchFile, toPath: alone + "/" + ProjectorFiles.llavaTorchFile)
        XCTAssertEqual(try AdapterKind.detect(directory: alone), .projector)
        let loaded = try ProjectorFiles.load(directory: alone, for: model.llava.projector)
        for (l, n) in zip(loaded, nudged) { XCTAssertEqual(l.array, n.array) }
        let adapter = try AppliedAdapter.apply(directory: alone, to: model)
        for (now, n) in zip(ProjectorFiles.snapshot(model.llava.projector), nudged) { XCTAssertEqual(now.array, n.array) }
        adapter.unload()
        for (now, o) in zip(ProjectorFiles.snapshot(model.llava.projector), original) { XCTAssertEqual(now.array, o.array) }
    }

    /// The mm_projector.bin torch.save wrote from original-llava's projector loads onto that model
    /// as its own weights.
    func testLlavaTorchProjectorFileLoads() throws {
        let model = try loadModel(Self.data + "/llava/original-llava")
        let loaded = try ProjectorFiles.load(directory: Self.data + "/torch_bin/projector", for: model.llava.projector)
        let own = ProjectorFiles.snapshot(model.llava.projector)
        XCTAssertEqual(loaded.count, 4)
        for (l, o) in zip(loaded, own) { XCTAssertEqual(l.shape, o.shape); XCTAssertEqual(l.array, o.array) }
    }
}

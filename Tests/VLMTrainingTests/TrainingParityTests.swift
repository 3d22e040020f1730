import XCTest
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor
import VLMTraining

/// vlmsh's trainer against PyTorch + PEFT (Tests/Fixtures/gen_train.py): the same tiny LLaVA, the
/// same LoRA init, the same example; losses of 3 AdamW steps within 1e-4 relative and the first
/// step's gradients within 1e-3.
final class TrainingParityTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/data/train").path
    nonisolated(unsafe) static let golden: [String: Any] = {
        let data = FileManager.default.contents(atPath: fixtures + "/golden.json")!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()
    var cases: [String: [String: Any]] { Self.golden["cases"] as! [String: [String: Any]] }

    func loadModel() throws -> VisionLanguageModel {
        try VisionLanguageModel(path: Self.fixtures + "/../llava/clip-llama")
    }

    /// The fixture's examples by name, as a dataset each (pre-tokenized rows).
    func dataset(_ model: VisionLanguageModel, names: [String]) throws -> TrainingDataset {
        let lines = try String(contentsOfFile: Self.fixtures + "/examples.jsonl", encoding: .utf8).split(separator: "\n")
        let wanted = lines.filter { line in names.contains { line.contains("\"name\": \"\($0)\"") } }
        let sorted = names.map { n in wanted.first { $0.contains("\"name\": \"\(n)\"") }! }
        let path = NSTemporaryDirectory() + "vlmsh-train-\(names.joined())-\(getpid()).jsonl"
        try sorted.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        // Relative image paths resolve against the fixture folder.
        return try TrainingDataset.load(path: path, tokenizer: model.tokenizer, template: model.template,
                                        image: (model.imageTokenID, model.llava.featureCount), imageFolder: Self.fixtures)
    }

    func settings(_ mode: FineTuneMode, lr: Float = 1e-2) -> FineTuneSettings {
        var s = FineTuneSettings()
        s.mode = mode; s.learningRate = lr; s.weightDecay = 0; s.scheduler = .constant; s.maxGradNorm = 0; s.steps = 3
        s.loraDropout = 0
        return s
    }

    func makeTrainer(_ mode: FineTuneMode, settings s: FineTuneSettings, examples: [String] = ["A"]) throws -> Trainer {
        let model = try loadModel()
        let lora = !mode.trainsLoRA ? nil : try LoRA.load(directory: Self.fixtures + "/lora-init", decoder: model.decoder)
        let trainable = try TrainableModel(chat: model, mode: mode, lora: lora)
        return try Trainer(model: trainable, dataset: try dataset(model, names: examples), settings: s)
    }

    @discardableResult
    func assertLosses(_ got: [Double], _ expected: [Double], _ name: String, tolerance: Double = 1e-4, file: StaticString = #filePath, line: UInt = #line) -> Double {
        XCTAssertEqual(got.count, expected.count, name, file: file, line: line)
        let worst = zip(got, expected).map { abs($0 - $1) / abs($1) }.max() ?? 0
        print("\(name): losses max relative diff \(worst)")
        XCTAssertLessThan(worst, tolerance, "\(name): losses \(got) vs PyTorch \(expected), max relative diff \(worst)", file: file, line: line)
        return worst
    }

    /// Compares gradients after one step's backward (before the optimizer) with a safetensors file.
    func assertGradients(_ trainer: Trainer, file gradsFile: String, tolerance: Float = 1e-3, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try SafetensorsFile(path: Self.fixtures + "/" + gradsFile)
        var worst: Float = 0, worstName = ""
        XCTAssertEqual(Set(expected.weightNames), Set(trainer.model.parameters.map(\.name)), "gradient names", file: file, line: line)
        // Each tensor is compared relative to its largest entry, floored at 1e-3 of the largest
        // gradient overall: a gradient that is zero in exact arithmetic (a key bias: softmax
        // ignores a shift shared by all keys) holds only rounding noise on both sides.
        var overall: Float = 0
        for name in expected.weightNames { overall = max(overall, try expected.floats(name).array.map(abs).max() ?? 0) }
        for p in trainer.model.parameters {
            let want = try expected.floats(p.name)
            guard let got = p.variable.grad else { XCTFail("\(p.name): no gradient", file: file, line: line); continue }
            var scale: Float = max(1e-3 * overall, 1e-6)
            for i in 0..<want.count { scale = max(scale, abs(want.data[i])) }
            for i in 0..<want.count {
                let d = abs(got.data[i] - want.data[i]) / scale
                if d > worst { worst = d; worstName = p.name }
            }
        }
        print("gradients: max relative diff \(worst) in \(worstName)")
        XCTAssertLessThan(worst, tolerance, "max relative gradient diff \(worst) in \(worstName)", file: file, line: line)
    }

    /// Runs the trainer's first micro-batch forward/backward without stepping, for gradient checks.
    func gradients(_ trainer: Trainer, examples: [[Int]]) throws {
        let batches = examples.map { trainer.dataset.batch($0, padID: trainer.padID) }
        let normalizer = Float(batches.reduce(0) { $0 + $1.labelTokenCount })
        var random = SeededRandom(seed: 0)
        for b in batches {
            let tape = Tape()
            let (loss, _) = try trainer.model.loss(b, normalizer: normalizer, tape: tape, random: &random)
            tape.backward(loss)
        }
    }

    func testLoRAStepsMatchPEFT() throws {
        let c = cases["lora"]!
        let trainer = try makeTrainer(.lora, settings: settings(.lora))
        try gradients(trainer, examples: [[0]])
        try assertGradients(trainer, file: c["grads_file"] as! String)
        trainer.optimizer.zeroGradients()
        let losses = try (0..<3).map { _ in try trainer.step().loss }
        assertLosses(losses, c["losses"] as! [Double], "lora")
    }

    /// `--bf16`: every product's operands rounded to bfloat16 (sums in Float32). The gradients and
    /// losses stay within bfloat16's precision (8 significant bits) of PyTorch's Float32 ones:
    /// measured 4.5 % (a key bias's gradient, zero in exact arithmetic: rounding noise) and
    /// 0.09 %, where Float32 gives 1.5e-5 and 3e-7.
    func testLoRAAndVisionStepsInBF16StayNearPyTorch() throws {
        Kernels.bf16Products = true
        defer { Kernels.bf16Products = false }
        for (name, mode) in [("lora", FineTuneMode.lora), ("vision+projector", .visionProjector)] {
            let c = cases[name]!
            let trainer = try makeTrainer(mode, settings: settings(mode))
            try gradients(trainer, examples: [[0]])
            try assertGradients(trainer, file: c["grads_file"] as! String, tolerance: 6e-2)
            trainer.optimizer.zeroGradients()
            let losses = try (0..<3).map { _ in try trainer.step().loss }
            let worst = assertLosses(losses, c["losses"] as! [Double], name + " bf16", tolerance: 5e-3)
            XCTAssertGreaterThan(worst, 1e-5, "\(name): the products were not rounded to bfloat16")
        }
    }

    func testProjectorStepsMatchPyTorch() throws {
        let c = cases["projector"]!
        let trainer = try makeTrainer(.projector, settings: settings(.projector))
        try gradients(trainer, examples: [[0]])
        try assertGradients(trainer, file: c["grads_file"] as! String)
        trainer.optimizer.zeroGradients()
        let losses = try (0..<3).map { _ in try trainer.step().loss }
        assertLosses(losses, c["losses"] as! [Double], "projector")
    }

    /// The vision tower on the tape: every gradient the loss reaches (layers up to the feature layer
    /// -2, embeddings, pre-norm) and three AdamW steps, against PyTorch training the whole tower.
    func testVisionTowerStepsMatchPyTorch() throws {
        let c = cases["vision+projector"]!
        let trainer = try makeTrainer(.visionProjector, settings: settings(.visionProjector))
        XCTAssertEqual(Set(trainer.model.parameters.map(\.name)), Set(c["trainable"] as! [String]))
        try gradients(trainer, examples: [[0]])
        try assertGradients(trainer, file: c["grads_file"] as! String)
        trainer.optimizer.zeroGradients()
        let losses = try (0..<3).map { _ in try trainer.step().loss }
        assertLosses(losses, c["losses"] as! [Double], "vision+projector")
    }

    func testLoRAProjectorGroupsMatchLLaVATrainer() throws {
        let c = cases["lora+projector"]!
        var s = settings(.loraProjector)
        s.projectorLearningRate = 2e-2; s.weightDecay = 0.1
        let trainer = try makeTrainer(.loraProjector, settings: s)
        // The groups LLaVATrainer.create_optimizer builds (empty ones dropped).
        let groups = c["param_groups"] as! [[String: Any]]
        XCTAssertEqual(trainer.optimizer.groups.count, groups.count)
        for (mine, theirs) in zip(trainer.optimizer.groups, groups) {
            XCTAssertEqual(Set(mine.parameters.map(\.name)), Set(theirs["params"] as! [String]))
            XCTAssertEqual(Double(mine.learningRate), theirs["lr"] as! Double, accuracy: 1e-7)
            XCTAssertEqual(Double(mine.weightDecay), theirs["weight_decay"] as! Double, accuracy: 1e-7)
        }
        let losses = try (0..<3).map { _ in try trainer.step().loss }
        assertLosses(losses, c["losses"] as! [Double], "lora+projector")
    }

    func testClippingMatchesTorch() throws {
        let c = cases["lora-clip"]!
        var s = settings(.lora)
        s.maxGradNorm = 0.05
        let trainer = try makeTrainer(.lora, settings: s)
        let metrics = try (0..<3).map { _ in try trainer.step() }
        assertLosses(metrics.map(\.loss), c["losses"] as! [Double], "lora-clip")
        assertLosses(metrics.map(\.gradNorm), c["grad_norms"] as! [Double], "lora-clip grad norms")
    }

    func testGradientAccumulationNormalizesOverAllLabels() throws {
        for name in ["grad-accum", "grad-accum-text"] {
            let c = cases[name]!
            let examples = c["examples"] as! [String]
            var s = settings(.lora)
            s.gradientAccumulation = 2; s.steps = 2
            // Accumulated micro-batches of one example each.
            let trainer = try makeTrainer(.lora, settings: s, examples: examples)
            try gradients(trainer, examples: [[0], [1]])
            try assertGradients(trainer, file: c["grads_file"] as! String)
            trainer.optimizer.zeroGradients()
            // The same step as one right-padded batch of two.
            let padded = try makeTrainer(.lora, settings: s, examples: examples)
            try gradients(padded, examples: [[0, 1]])
            try assertGradients(padded, file: c["grads_file"] as! String)
            // Two optimizer steps: the order is shuffled, but each step sees both examples.
            let losses = try (0..<1).map { _ in try trainer.step().loss }
            assertLosses(losses, [c["loss"] as! Double], name)
        }
    }

    /// Last-position logits of example A through the inference path (KV-cache forward).
    func inferenceLogits(_ model: VisionLanguageModel) throws -> [Float] {
        let example = try dataset(model, names: ["A"])[0]
        let llava = model.llava, d = model.decoder.config.hiddenSize
        let features = try llava.imageFeatures(pixels: try llava.preprocess(try ImageLoader.load(path: example.imagePath!)))
        let x = Tensor(shape: [example.length, d], zeroed: false)
        let range = example.imageRange!
        for (i, id) in example.inputIDs.enumerated() {
            if range.contains(i) { (x.data + i * d).update(from: features.data + (i - range.lowerBound) * d, count: d) }
            else { try model.decoder.embed([id], into: x.data + i * d) }
        }
        return Array(try model.decoder.forward(embeddings: x.data, count: example.length, cache: model.decoder.makeCache()))
    }

    func assertLogits(_ got: [Float], _ key: String, file: StaticString = #filePath, line: UInt = #line) {
        let want = (Self.golden[key] as! [Double]).map(Float.init)
        let worst = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertEqual(got.count, want.count, key, file: file, line: line)
        XCTAssertLessThan(worst, 1e-4, "\(key): max abs logit diff \(worst)", file: file, line: line)
    }

    /// An adapter vlmsh wrote (Tests/Fixtures/data/train/vlmsh-adapter) loads in PEFT with PEFT's
    /// own key names (checked by gen_train.py), and both give the same logits; PEFT's own adapter
    /// changes vlmsh's inference exactly as it changes transformers'.
    func testAdaptersAgreeWithPEFTInBothDirections() throws {
        XCTAssertEqual(Self.golden["vlmsh_adapter_canonical_key_names"] as? Bool, true)
        let model = try loadModel()
        assertLogits(try inferenceLogits(model), "base_logits")
        try model.decoder.setAdapters(try LoRA.load(directory: Self.fixtures + "/lora-init", decoder: model.decoder).adapters)
        assertLogits(try inferenceLogits(model), "lora_init_logits")
        try model.decoder.setAdapters(try LoRA.load(directory: Self.fixtures + "/vlmsh-adapter", decoder: model.decoder).adapters)
        assertLogits(try inferenceLogits(model), "vlmsh_adapter_logits")
    }

    /// The transformers 4.x layout (`base_model.model.language_model.model.layers…`) loads to the
    /// same adapter as the 5.x one.
    func testTransformers4AdapterKeysLoad() throws {
        let model = try loadModel()
        let source = Self.fixtures + "/lora-init"
        let dir = NSTemporaryDirectory() + "vlmsh-peft4-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.copyItem(atPath: source + "/adapter_config.json", toPath: dir + "/adapter_config.json")
        let file = try SafetensorsFile(path: source + "/adapter_model.safetensors")
        let renamed = try file.weightNames.map { name -> (name: String, tensor: Tensor, dtype: GGMLType) in
            (name.replacingOccurrences(of: "base_model.model.model.language_model.layers", with: "base_model.model.language_model.model.layers"),
             try file.floats(name), .f32)
        }
        XCTAssertTrue(renamed.allSatisfy { $0.name.contains("language_model.model.layers") })
        try SafetensorsWriter.write(renamed, to: dir + "/adapter_model.safetensors")
        try model.decoder.setAdapters(try LoRA.load(directory: dir, decoder: model.decoder).adapters)
        assertLogits(try inferenceLogits(model), "lora_init_logits")
    }

    func testSchedulesMatchTransformers() {
        let c = cases["schedules"]!
        let lrs = c["lrs"] as! [String: [Double]]
        let base = c["base_lr"] as! Double
        for (name, kind, warmup) in [("constant", LearningRateSchedule.Kind.constant, 0), ("constant_with_warmup", .constant, 3),
                                     ("linear", .linear, 3), ("cosine", .cosine, 3)] {
            let schedule = LearningRateSchedule(kind: kind, warmupSteps: warmup, totalSteps: 10)
            let got = (0..<10).map { Double(schedule.factor(at: $0)) * base }
            for (g, e) in zip(got, lrs[name]!) { XCTAssertEqual(g, e, accuracy: 1e-9, name) }
        }
        let ratio = c["warmup_ratio"] as! [String: Any]
        XCTAssertEqual(LearningRateSchedule.warmupSteps(steps: nil, ratio: ratio["ratio"] as? Double, totalSteps: 10), ratio["warmup_steps"] as! Int)
    }

    func testAdamWMatchesTorch() {
        let c = cases["adamw"]!
        let initial = (c["initial"] as! [Double]).map(Float.init)
        let p = Variable(Tensor(shape: [initial.count], values: initial), requiresGrad: true)
        let optimizer = AdamW(parameters: [Parameter(name: "p", variable: p, group: .languageModel)],
                              settings: OptimizerSettings(learningRate: Float(c["lr"] as! Double), weightDecay: Float(c["weight_decay"] as! Double)))
        for (grads, after) in zip(c["grads"] as! [[Double]], c["params_after_step"] as! [[Double]]) {
            let g = p.gradBuffer()
            for i in grads.indices { g[i] = Float(grads[i]) }
            optimizer.update()
            optimizer.zeroGradients()
            for i in after.indices { XCTAssertEqual(Double(p.data[i]), after[i], accuracy: 1e-6) }
        }
    }
}

import ArgumentParser
import Foundation
import VLMFormats
import VLMGeneration
import VLMModels
import VLMTensor
import VLMTraining

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Measure prefill and decode speed, image encoding, or LoRA training throughput.")

    @OptionGroup var model: ModelOptions
    @Option(name: .long, help: "Prompt tokens to prefill.") var prefill = 256
    @Option(name: .long, help: "Tokens to decode one at a time.") var decode = 128
    @Option(name: .long, help: "Measurements to take; the median is reported.") var rounds = 3
    @Flag(name: .long, help: "Print one JSON object.") var json = false
    @Option(name: .long, help: "Time image encoding instead: a CLIP vision config.json, random weights.") var vision: String?
    @Flag(name: .long, help: "Time LoRA training instead: tokens/s of AdamW steps on synthetic batches, and peak memory.") var train = false
    @Option(name: .long, help: "With --train: tokens per sequence.") var seq = 256
    @Option(name: .long, help: "With --train: sequences per step.") var batch = 4
    @Option(name: .long, help: "With --train: timed optimizer steps (after one warm-up step); the median is reported.") var steps = 3
    @Option(name: .customLong("lora-r"), help: "With --train: LoRA rank (alpha is twice the rank).") var loraRank = 8
    @Option(name: .long, help: "With --train: seed of the synthetic token ids.") var seed: UInt64 = 42
    @Flag(name: .long, help: "With --train: recompute each decoder layer in the backward pass instead of keeping its activations.") var gradientCheckpointing = false

    func validate() throws {
        if prefill < 1 || decode < 1 || rounds < 1 { throw ValidationError("--prefill, --decode and --rounds must be ≥ 1") }
        if train && vision != nil { throw ValidationError("give at most one of --train and --vision") }
        if train || vision != nil { try model.rejectAdapter("the --train and --vision benches use random weights") }
        if seq < 2 || batch < 1 || steps < 1 || loraRank < 1 { throw ValidationError("--seq must be ≥ 2; --batch, --steps and --lora-r ≥ 1") }
    }

    func run() async throws {
        if let vision { return try benchVision(vision) }
        if train { return try benchTraining() }
        let m = try model.loadText()
        let context = m.decoder.config.contextLength
        guard prefill + decode <= context else {
            throw ValidationError("--prefill + --decode is \(prefill + decode), more than the model's context of \(context)")
        }
        // Fixed pseudo-random prompt over ordinary tokens, the same every run.
        var random = SeededRandom(seed: 42)
        let vocab = m.decoder.vocabularySize
        let prompt = (0..<prefill).map { _ in 1000 + Int(random.next() % UInt64(max(vocab - 2000, 1))) }

        _ = try m.decoder.forward(tokens: Array(prompt.prefix(8)), cache: m.decoder.makeCache())  // page weights in
        var prefillRates: [Double] = [], decodeRates: [Double] = []
        for _ in 0..<rounds {
            let cache = m.decoder.makeCache(capacity: prefill + decode)
            var t0 = DispatchTime.now().uptimeNanoseconds
            var logits = try m.decoder.forward(tokens: prompt, cache: cache)
            prefillRates.append(Double(prefill) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9))
            t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<decode {
                logits = try m.decoder.forward(tokens: [Sampler.argmax(logits)], cache: cache)
            }
            decodeRates.append(Double(decode) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9))
        }
        let median = { (x: [Double]) in x.sorted()[x.count / 2] }
        if json {
            try printJSON([
                "model": m.path, "threads": Parallel.threads, "prefill_tokens": prefill, "decode_tokens": decode,
                "prefill_tokens_per_second": median(prefillRates), "decode_tokens_per_second": median(decodeRates),
            ])
        } else {
            print(String(format: "prefill %d tokens: %.1f tok/s   decode %d tokens: %.1f tok/s   (%d threads, median of %d)",
                         prefill, median(prefillRates), decode, median(decodeRates), Parallel.threads, rounds))
        }
    }

    /// One image through a CLIP tower up to hidden state -2 (what LLaVA-1.5 uses), random weights.
    private func benchVision(_ path: String) throws {
        let config: CLIPVisionConfiguration
        do { config = try JSONDecoder().decode(CLIPVisionConfiguration.self, from: SmallFile.read(path)) } catch {
            throw ValidationError("\(path): not a CLIP vision config")
        }
        let tower = try CLIPVisionTower(config: config, weights: try WeightMap(file: path, source: RandomWeights.clip(config)))
        let side = config.imageSize
        let pixels = Tensor(shape: [3, side, side], values: (0..<(3 * side * side)).map { Float(($0 * 7919) % 255) / 127.5 - 1 })
        _ = try tower.hiddenStates(pixels: pixels, layers: [1])   // page in, spin up threads
        var times: [Double] = []
        for _ in 0..<rounds {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try tower.hiddenStates(pixels: pixels, layers: [-2])
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        let median = times.sorted()[times.count / 2]
        if json {
            try printJSON(["image_encode_seconds": median, "threads": Parallel.threads, "image_size": side])
        } else {
            print(String(format: "image encode (%dx%d, up to hidden state -2): %.3f s (%d threads, median of %d)",
                         side, side, median, Parallel.threads, rounds))
        }
    }

    /// LoRA fine-tuning throughput: r `--lora-r`, alpha 2r, no dropout, on every attention and MLP
    /// projection; AdamW (lr 1e-4, no weight decay, gradients clipped to norm 1) over synthetic
    /// batches whose labels are the inputs (every position trained). One warm-up step, then
    /// `--steps` timed steps. Token ids are SplitMix64 draws from `--seed`, step by step, row by
    /// row: `1000 + next() % (vocab - 2000)` (bench/train.py draws the same ones for PyTorch).
    private func benchTraining() throws {
        let m = try model.loadText()
        var settings = FineTuneSettings()
        settings.loraRank = loraRank
        settings.loraAlpha = Float(2 * loraRank)
        settings.loraDropout = 0
        settings.learningRate = 1e-4
        var initRandom = SeededRandom(seed: 0)
        let lora = try LoRA.create(settings.loraConfiguration, decoder: m.decoder, layout: .text, random: &initRandom)
        let trainable = try TrainableModel(chat: m, mode: .lora, lora: lora)
        let optimizer = AdamW(parameters: trainable.parameters, settings: OptimizerSettings(learningRate: settings.learningRate))
        let padID = TrainingBatch.padID(for: m.tokenizer)
        let vocab = m.decoder.vocabularySize
        var tokens = SeededRandom(seed: seed)
        func nextBatch(_ step: Int) -> TrainingBatch {
            let examples = (0..<batch).map { row -> TrainingExample in
                let ids = (0..<seq).map { _ in 1000 + Int(tokens.next() % UInt64(max(vocab - 2000, 1))) }
                return TrainingExample(inputIDs: ids, labels: ids, source: "synthetic:\(step).\(row)")
            }
            return TrainingBatch(examples: examples, padID: padID)
        }
        let loadPeak = MemoryUsage.peakResidentBytes()
        MemoryUsage.resetPeak()   // from here VmHWM is the training peak (model already resident)
        var dropout = SeededRandom(seed: 1)
        var seconds: [Double] = [], losses: [Double] = []
        for step in 0...steps {
            let b = nextBatch(step)
            let t0 = DispatchTime.now().uptimeNanoseconds
            let tape = Tape()
            tape.gradientCheckpointing = gradientCheckpointing
            let (loss, _) = try trainable.loss(b, normalizer: Float(b.labelTokenCount), tape: tape, random: &dropout)
            tape.backward(loss)
            let t1 = DispatchTime.now().uptimeNanoseconds
            optimizer.clipGradients(maxNorm: 1)
            optimizer.update()
            optimizer.zeroGradients()
            TrainingProfile.add("optimizer (clip, AdamW, zero)", seconds: Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e9)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            losses.append(Double(loss.data[0]))
            if step > 0 { seconds.append(dt) }   // step 0 is the warm-up
        }
        let median = seconds.sorted()[seconds.count / 2]
        let rate = Double(batch * seq) / median
        let trainingPeak = MemoryUsage.peakResidentBytes()
        let processPeak = max(loadPeak, trainingPeak, MemoryUsage.maxResidentBytes())
        let parameterCount = trainable.parameters.reduce(0) { $0 + $1.variable.count }
        if let profile = TrainingProfile.report() { FileHandle.standardError.write(Data(profile.utf8)) }
        if json {
            try printJSON([
                "model": m.path, "threads": Parallel.threads, "seq": seq, "batch": batch, "steps": steps, "lora_r": loraRank,
                "lora_alpha": 2 * loraRank, "trainable_parameters": parameterCount, "seed": seed,
                "gradient_checkpointing": gradientCheckpointing,
                "train_tokens_per_second": rate, "step_seconds": seconds, "losses": losses,
                "peak_rss_bytes": processPeak, "peak_rss_training_bytes": trainingPeak,
            ])
        } else {
            print(String(format: "LoRA training (r %d, %d trainable), batch %d × seq %d: %.1f tok/s (%.2f s/step, median of %d, %d threads)",
                         loraRank, parameterCount, batch, seq, rate, median, steps, Parallel.threads))
            print(String(format: "loss %.4f → %.4f   peak RSS %.0f MiB (during training %.0f MiB)",
                         losses.first ?? 0, losses.last ?? 0, Double(processPeak) / 1048576, Double(trainingPeak) / 1048576))
        }
    }
}

/// Resident-memory high-water marks of this process (Linux: /proc/self/status VmHWM, which
/// `resetPeak` restarts from the current RSS; elsewhere getrusage's lifetime maximum).
enum MemoryUsage {
    /// Lifetime peak RSS in bytes (`ru_maxrss`: KiB on Linux, bytes on macOS).
    static func maxResidentBytes() -> Int {
        var usage = rusage()
        #if os(Linux)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Int(usage.ru_maxrss) * 1024
        #else
        getrusage(RUSAGE_SELF, &usage)
        return Int(usage.ru_maxrss)
        #endif
    }

    /// Peak RSS since the last `resetPeak` (or process start), in bytes.
    static func peakResidentBytes() -> Int {
        if let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
           let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
           let kib = Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") {
            return kib * 1024
        }
        return maxResidentBytes()
    }

    /// Restarts VmHWM from the current RSS (Linux ≥ 4.0); a no-op where unsupported.
    static func resetPeak() {
        guard let handle = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return }
        try? handle.write(contentsOf: Data("5".utf8))
        try? handle.close()
    }
}

import ArgumentParser
import Foundation
import VLMGeneration
import VLMModels
import VLMTensor

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench", abstract: "Measure prefill and decode speed.")

    @OptionGroup var model: ModelOptions
    @Option(name: .long, help: "Prompt tokens to prefill.") var prefill = 256
    @Option(name: .long, help: "Tokens to decode one at a time.") var decode = 128
    @Option(name: .long, help: "Measurements to take; the median is reported.") var rounds = 3
    @Flag(name: .long, help: "Print one JSON object.") var json = false
    @Option(name: .long, help: "Time image encoding instead: a CLIP vision config.json, random weights.") var vision: String?

    func validate() throws {
        if prefill < 1 || decode < 1 || rounds < 1 { throw ValidationError("--prefill, --decode and --rounds must be ≥ 1") }
    }

    func run() async throws {
        if let vision { return try benchVision(vision) }
        let m = try model.loadText()
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
        do { config = try JSONDecoder().decode(CLIPVisionConfiguration.self, from: Data(contentsOf: URL(fileURLWithPath: path))) } catch {
            throw ValidationError("\(path): not a CLIP vision config")
        }
        let tower = try CLIPVisionTower(config: config, weights: WeightMap(file: path, source: RandomWeights.clip(config)))
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
}

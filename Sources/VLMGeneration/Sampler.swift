import Foundation
import VLMTensor

/// What a reply may look like: the sampling knobs of llama.cpp / transformers.
public struct GenerationParameters: Codable, Sendable, Equatable {
    public var maxTokens = 256
    /// 0 picks the most likely token (greedy).
    public var temperature: Float = 0.8
    /// 0 turns top-k off.
    public var topK = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    /// 1 turns the penalty off; otherwise as transformers' RepetitionPenaltyLogitsProcessor.
    public var repetitionPenalty: Float = 1
    public var seed: UInt64 = 0
    public var stopStrings: [String] = []

    public init() {}

    enum CodingKeys: String, CodingKey {
        case maxTokens = "max_tokens", temperature, topK = "top_k", topP = "top_p", minP = "min_p"
        case repetitionPenalty = "repeat_penalty", seed, stopStrings = "stop"
    }

    /// Refuses numbers the sampler cannot use (NaN and infinities poison every probability and
    /// cannot be stored as JSON). The error names the knob by its `/set` key.
    public func validate() throws {
        func check(_ ok: Bool, _ key: CodingKeys, _ value: Any, _ rule: String) throws {
            if !ok { throw ParameterError(key: key.rawValue, value: "\(value)", rule: rule) }
        }
        try check(maxTokens >= 0, .maxTokens, maxTokens, "a whole number ≥ 0")
        try check(temperature.isFinite && (0...100).contains(temperature), .temperature, temperature, "a number in 0…100 (0 is greedy)")
        try check(topK >= 0, .topK, topK, "a whole number ≥ 0 (0 turns it off)")
        try check(topP.isFinite && (0...1).contains(topP), .topP, topP, "a number in 0…1")
        try check(minP.isFinite && (0...1).contains(minP), .minP, minP, "a number in 0…1")
        try check(repetitionPenalty.isFinite && repetitionPenalty > 0, .repetitionPenalty, repetitionPenalty, "a finite number > 0 (1 is off)")
    }
}

/// A sampling parameter out of its range: `key` is its `/set` name (top_p), `rule` what it must be.
public struct ParameterError: Error, CustomStringConvertible, Sendable {
    public let key: String
    public let value: String
    public let rule: String
    public var description: String { "\(key) must be \(rule), not \(value)" }
}

/// Picks the next token from logits. Order as transformers applies its processors: repetition
/// penalty, temperature, top-k, top-p, min-p. Buffers are allocated once per vocabulary size.
public struct Sampler: Sendable {
    public let parameters: GenerationParameters
    private var random: SeededRandom
    private var candidates: [Int32] = []
    private var values: [Float] = []

    public init(parameters: GenerationParameters) {
        self.parameters = parameters
        random = SeededRandom(seed: parameters.seed)
    }

    /// Chooses a token; `history` holds the ids the repetition penalty looks at.
    public mutating func sample(_ logits: UnsafeBufferPointer<Float>, history: Set<Int>) -> Int {
        let n = logits.count
        if values.count != n { values = [Float](repeating: 0, count: n); candidates = [Int32](repeating: 0, count: n) }
        let p = parameters
        return values.withUnsafeMutableBufferPointer { v in
            candidates.withUnsafeMutableBufferPointer { c in
                _ = v.initialize(from: logits)
                if p.repetitionPenalty != 1 {
                    for id in history where id >= 0 && id < n {
                        v[id] = v[id] > 0 ? v[id] / p.repetitionPenalty : v[id] * p.repetitionPenalty
                    }
                }
                if p.temperature <= 0 { return Sampler.argmax(UnsafeBufferPointer(v)) }
                for i in 0..<n { v[i] /= p.temperature }

                // Candidates sorted by logit; top-k first so the sort is short when it is on.
                for i in 0..<n { c[i] = Int32(i) }
                var count = n
                if p.topK > 0 && p.topK < n {
                    Sampler.selectTop(p.topK, c, v)
                    count = p.topK
                }
                var live = UnsafeMutableBufferPointer(rebasing: c[0..<count])
                live.sort { v[Int($0)] > v[Int($1)] }

                // Softmax over the survivors, then nucleus and min-p cuts on probabilities.
                let maxLogit = v[Int(c[0])]
                var total: Float = 0
                for i in 0..<count { let e = expf(v[Int(c[i])] - maxLogit); v[Int(c[i])] = e; total += e }
                if p.topP < 1 {
                    var cumulative: Float = 0
                    var keep = count
                    for i in 0..<count {
                        cumulative += v[Int(c[i])] / total
                        if cumulative >= p.topP { keep = i + 1; break }
                    }
                    count = keep
                }
                if p.minP > 0 {
                    let threshold = p.minP * v[Int(c[0])]
                    var keep = 1
                    while keep < count && v[Int(c[keep])] >= threshold { keep += 1 }
                    count = keep
                }
                var kept: Float = 0
                for i in 0..<count { kept += v[Int(c[i])] }
                var r = random.nextUnit() * kept
                for i in 0..<count {
                    r -= v[Int(c[i])]
                    if r < 0 { return Int(c[i]) }
                }
                return Int(c[count - 1])
            }
        }
    }

    /// Index of the largest value; the first on ties, as torch.argmax.
    public static func argmax(_ x: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        for i in 1..<x.count where x[i] > x[best] { best = i }
        return best
    }

    /// Moves the `k` largest-valued indices to the front of `c` (quickselect, no allocation).
    static func selectTop(_ k: Int, _ c: UnsafeMutableBufferPointer<Int32>, _ v: UnsafeMutableBufferPointer<Float>) {
        var lo = 0, hi = c.count - 1
        while lo < hi {
            let pivot = v[Int(c[(lo + hi) / 2])]
            var i = lo, j = hi
            while i <= j {
                while v[Int(c[i])] > pivot { i += 1 }
                while v[Int(c[j])] < pivot { j -= 1 }
                if i <= j { c.swapAt(i, j); i += 1; j -= 1 }
            }
            if k - 1 <= j { hi = j } else if k - 1 >= i { lo = i } else { return }
        }
    }
}

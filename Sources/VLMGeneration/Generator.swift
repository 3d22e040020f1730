import Foundation
import VLMTokenizers

/// One generated token and the text it completes (may be empty while a UTF-8 character or a
/// possible stop string is still incomplete).
public struct GeneratedToken: Sendable {
    public let id: Int
    public let text: String
}

/// Timing of one reply.
public struct GenerationStats: Sendable, Codable {
    public var promptTokens = 0
    public var generatedTokens = 0
    public var prefillSeconds: Double = 0
    public var decodeSeconds: Double = 0
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Tokens after the first over the time spent producing them (the first comes from prefill).
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(generatedTokens - 1, 0)) / decodeSeconds : 0 }
    public var timeToFirstToken: Double { prefillSeconds }
}

/// Why generation ended: `context` when the model's context had no room for another position.
public enum FinishReason: String, Sendable, Codable { case endOfSequence = "eos", stopString = "stop", length, context, cancelled }

/// The generate loop as an iterator: the caller drives it token by token (and may stop early).
/// The model is reached through two closures, so text and multimodal prompts share the loop:
/// `prefill` runs the whole prompt once; `step` feeds one token with the KV cache.
public final class Generator {
    public typealias Logits = UnsafeBufferPointer<Float>

    private let prefill: () throws -> Logits
    private let step: (Int) throws -> Logits
    private var sampler: Sampler
    private var detokenizer: StreamingDetokenizer
    private let stopTokens: Set<Int>
    private var history: Set<Int>
    private var pendingLogits: Logits?
    /// Decode steps the context still has room for; at 0 the next token is the last.
    private var stepsLeft: Int
    private var contextFull = false
    private var heldText = ""          // text that might be the start of a stop string

    public private(set) var ids: [Int] = []
    public private(set) var text = ""
    public private(set) var stats = GenerationStats()
    public private(set) var finishReason: FinishReason?
    /// The logits the prompt produced (copied once, at prefill).
    public private(set) var promptLogits: [Float] = []

    /// `decodeSteps` is how many tokens `step` may still feed (the context left after the prompt).
    public init(tokenizer: Tokenizer, parameters: GenerationParameters, promptIDs: [Int], stopTokens: Set<Int>,
                decodeSteps: Int = .max, prefill: @escaping () throws -> Logits, step: @escaping (Int) throws -> Logits) {
        self.prefill = prefill
        stepsLeft = max(decodeSteps, 0)
        self.step = step
        sampler = Sampler(parameters: parameters)
        detokenizer = StreamingDetokenizer(tokenizer: tokenizer)
        self.stopTokens = stopTokens
        history = Set(promptIDs)
        stats.promptTokens = promptIDs.count
    }

    /// The next token, or nil once finished (end of sequence, stop string, max tokens, full context).
    public func next() throws -> GeneratedToken? {
        guard finishReason == nil else { return nil }
        if ids.count >= sampler.parameters.maxTokens { return finish(.length) }
        if contextFull { return finish(.context) }

        let logits: Logits
        let started = DispatchTime.now().uptimeNanoseconds
        if let pending = pendingLogits {
            logits = pending
        } else {
            logits = try prefill()
            promptLogits = Array(logits)
            stats.prefillSeconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        }
        let id = sampler.sample(logits, history: history)
        ids.append(id)
        history.insert(id)
        stats.generatedTokens = ids.count
        if stopTokens.contains(id) { return finish(.endOfSequence, id: id) }

        let piece = emit(detokenizer.append(id))
        if finishReason == nil && ids.count < sampler.parameters.maxTokens {
            guard stepsLeft > 0 else { contextFull = true; return GeneratedToken(id: id, text: piece) }
            stepsLeft -= 1
            let t0 = DispatchTime.now().uptimeNanoseconds
            pendingLogits = try step(id)
            stats.decodeSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        }
        return GeneratedToken(id: id, text: piece)
    }

    /// Ends generation early (Ctrl-C); the text so far stays.
    public func cancel() { if finishReason == nil { finishReason = .cancelled } }

    private func finish(_ reason: FinishReason, id: Int? = nil) -> GeneratedToken? {
        finishReason = reason
        let rest = emit(detokenizer.flush(), final: true)
        return id.map { GeneratedToken(id: $0, text: rest) } ?? (rest.isEmpty ? nil : GeneratedToken(id: -1, text: rest))
    }

    /// Appends new text, holding back a tail that could begin a stop string; cuts at a stop string.
    private func emit(_ piece: String, final: Bool = false) -> String {
        let stops = sampler.parameters.stopStrings
        guard !stops.isEmpty else { text += piece; return piece }
        var candidate = heldText + piece
        if let cut = stops.compactMap({ candidate.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
            candidate = String(candidate[..<cut.lowerBound])
            heldText = ""
            if finishReason == nil { finishReason = .stopString }
            text += candidate
            return candidate
        }
        var hold = 0
        if !final {
            for s in stops {
                for k in stride(from: min(s.count - 1, candidate.count), to: 0, by: -1) where candidate.hasSuffix(s.prefix(k)) {
                    hold = max(hold, k); break
                }
            }
        }
        let out = String(candidate.dropLast(hold))
        heldText = String(candidate.suffix(hold))
        text += out
        return out
    }
}

/// Pre-tokenizer split regexes, implemented by hand so they are exact and fast.
///
/// Each case documents the regex it reproduces (as in HF tokenizer.json and llama.cpp's
/// llama-vocab.cpp). The text is handled as UTF-32 scalars plus one class byte per scalar.
enum SplitPattern: Sendable, Equatable {
    /// GPT-2 / ByteLevel(use_regex): `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3
    /// Qwen2: as Llama 3 with `\p{N}` (one digit per piece).
    case qwen2
    /// `Digits` pre-tokenizer (individual: every \p{N} alone, else runs of \p{N}).
    case digits(individual: Bool)

    static let gpt2Regex = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Regex = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// The pattern for a regex string found in a tokenizer.json Split pre-tokenizer.
    static func forRegex(_ regex: String) -> SplitPattern? {
        // Spelling variants seen in the wild: the case-insensitive group written out per letter.
        let llama3Expanded = #"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        switch regex {
        case gpt2Regex, #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#: return .gpt2
        case llama3Regex, llama3Expanded: return .llama3
        case qwen2Regex: return .qwen2
        default: return nil
        }
    }

    /// Splits `range` of the text into pieces (matches are isolated; the patterns cover all text).
    func split(_ text: UnsafeBufferPointer<UInt32>, _ classes: UnsafeBufferPointer<UInt8>,
               _ range: Range<Int>, into pieces: inout [Range<Int>]) {
        var i = range.lowerBound
        let end = range.upperBound
        while i < end {
            let next: Int
            switch self {
            case .gpt2: next = Self.matchGPT2(text, classes, i, end)
            case .llama3: next = Self.matchLlama3(text, classes, i, end, maxDigits: 3)
            case .qwen2: next = Self.matchLlama3(text, classes, i, end, maxDigits: 1)
            case .digits(let individual): next = Self.matchDigits(classes, i, end, individual: individual)
            }
            pieces.append(i..<next)
            i = next
        }
    }

    private static let L = ScalarClass.letter, N = ScalarClass.number
    private static let WS = ScalarClass.whitespace, NL = ScalarClass.newline
    private static let space: UInt32 = 0x20, apostrophe: UInt32 = 0x27

    /// Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
    @inline(__always)
    private static func contraction(_ t: UnsafeBufferPointer<UInt32>, _ i: Int, _ end: Int, ignoreCase: Bool) -> Int {
        guard i + 1 < end else { return 0 }
        func lower(_ v: UInt32) -> UInt32 {
            guard ignoreCase else { return v }
            if v >= 0x41 && v <= 0x5A { return v + 0x20 }
            if v == 0x17F { return 0x73 }  // long s case-folds to s
            return v
        }
        let a = lower(t[i + 1])
        switch a {
        case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
        case 0x72, 0x76:  // r v -> re ve
            return i + 2 < end && lower(t[i + 2]) == 0x65 ? 3 : 0
        case 0x6C:  // l -> ll
            return i + 2 < end && lower(t[i + 2]) == 0x6C ? 3 : 0
        default: return 0
        }
    }

    @inline(__always)
    private static func run(_ c: UnsafeBufferPointer<UInt8>, from start: Int, _ end: Int, while test: (UInt8) -> Bool) -> Int {
        var k = start
        while k < end && test(c[k]) { k += 1 }
        return k
    }

    /// `\s+(?!\S)|\s+` at a whitespace scalar: leave the last space for the next word.
    @inline(__always)
    private static func whitespaceRun(_ c: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int {
        let k = run(c, from: i, end) { $0 & WS != 0 }
        if k == end || k - i < 2 { return k }
        return k - 1
    }

    private static func matchGPT2(_ t: UnsafeBufferPointer<UInt32>, _ c: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int) -> Int {
        if t[i] == apostrophe {
            let n = contraction(t, i, end, ignoreCase: false)
            if n > 0 { return i + n }
        }
        let j = (t[i] == space && i + 1 < end) ? i + 1 : i
        let cj = c[j]
        if j > i && cj & WS != 0 {
            // " " followed by whitespace: only the whitespace alternatives apply
        } else if cj & L != 0 {
            return run(c, from: j + 1, end) { $0 & L != 0 }
        } else if cj & N != 0 {
            return run(c, from: j + 1, end) { $0 & N != 0 }
        } else if cj & (L | N | WS) == 0 {
            return run(c, from: j + 1, end) { $0 & (L | N | WS) == 0 }
        }
        return whitespaceRun(c, i, end)
    }

    private static func matchLlama3(_ t: UnsafeBufferPointer<UInt32>, _ c: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int, maxDigits: Int) -> Int {
        if t[i] == apostrophe {
            let n = contraction(t, i, end, ignoreCase: true)
            if n > 0 { return i + n }
        }
        let ci = c[i]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if ci & L != 0 { return run(c, from: i + 1, end) { $0 & L != 0 } }
        if ci & (NL | N) == 0 && i + 1 < end && c[i + 1] & L != 0 {
            return run(c, from: i + 2, end) { $0 & L != 0 }
        }
        // \p{N}{1,k}
        if ci & N != 0 {
            let limit = min(end, i + maxDigits)
            return run(c, from: i + 1, limit) { $0 & N != 0 }
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let j = (t[i] == space && i + 1 < end) ? i + 1 : i
        if c[j] & (L | N | WS) == 0 {
            let k = run(c, from: j + 1, end) { $0 & (L | N | WS) == 0 }
            return run(c, from: k, end) { $0 & NL != 0 }
        }
        // \s*[\r\n]+ : through the last newline of the whitespace run
        let k = run(c, from: i, end) { $0 & WS != 0 }
        var m = k - 1
        while m >= i && c[m] & NL == 0 { m -= 1 }
        if m >= i { return m + 1 }
        // \s+(?!\S)|\s+
        if k == end || k - i < 2 { return k }
        return k - 1
    }

    private static func matchDigits(_ c: UnsafeBufferPointer<UInt8>, _ i: Int, _ end: Int, individual: Bool) -> Int {
        if c[i] & N != 0 {
            return individual ? i + 1 : run(c, from: i + 1, end) { $0 & N != 0 }
        }
        return run(c, from: i + 1, end) { $0 & N == 0 }
    }
}

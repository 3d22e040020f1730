import Foundation
import VLMFormats

extension Tokenizer {
    // GGUF token_type values (llama.cpp).
    private static let ggufUnknown = 2, ggufControl = 3, ggufUserDefined = 4

    /// Loads the tokenizer stored in GGUF metadata (`tokenizer.ggml.*`). `file` names the source in errors.
    public static func load(gguf metadata: [String: GGUFValue], file: String) throws -> Tokenizer {
        guard let tokens = metadata["tokenizer.ggml.tokens"]?.strings, !tokens.isEmpty else {
            throw FormatError(file, "no tokenizer: tokenizer.ggml.tokens missing")
        }
        let modelName = metadata["tokenizer.ggml.model"]?.string ?? "?"
        let types = metadata["tokenizer.ggml.token_type"]?.array?.map { $0.int ?? 1 } ?? []
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(tokens.count)
        for (id, token) in tokens.enumerated() where vocab[token] == nil { vocab[token] = id }

        func id(_ key: String) -> Int? {
            guard let v = metadata["tokenizer.ggml.\(key)"]?.int, v >= 0, v < tokens.count else { return nil }
            return v
        }
        let bos = id("bos_token_id"), eos = id("eos_token_id"), unknown = id("unknown_token_id")
        let padding = id("padding_token_id")
        // Control and user-defined tokens are matched whole in text, like HF added tokens.
        var added: [AddedToken] = []
        for (i, type) in types.enumerated() where i < tokens.count {
            if type == ggufControl || type == ggufUserDefined || (type == ggufUnknown && modelName == "llama") {
                added.append(AddedToken(content: tokens[i], id: i, special: type != ggufUserDefined))
            }
        }
        let template = metadata["tokenizer.chat_template"]?.string
        let extraEOS = [id("eot_token_id"), id("eom_token_id")].compactMap { $0 }

        switch modelName {
        case "gpt2":
            guard let mergeLines = metadata["tokenizer.ggml.merges"]?.strings else {
                throw FormatError(file, "no tokenizer: tokenizer.ggml.merges missing")
            }
            let merges = mergeLines.compactMap(splitMerge)
            let pre = metadata["tokenizer.ggml.pre"]?.string ?? "default"
            let preTokenizer = try ggufPreTokenizer(pre, file: file)
            let model = BPEModel(vocab: vocab, merges: merges, byteLevel: true, byteFallback: false,
                                 unknownID: unknown, fuseUnknown: false, ignoreMerges: pre == "llama-bpe")
            return Tokenizer(model: .bpe(model), normalizer: nil, preTokenizer: preTokenizer,
                             decoder: TokenDecoder(pieces: .byteLevel, stripLeadingSpaces: 0),
                             vocab: vocab, addedTokens: added, bos: bos, eos: eos, unknown: unknown, padding: padding,
                             addsBOS: metadata["tokenizer.ggml.add_bos_token"]?.bool ?? false,
                             addsEOS: metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false,
                             chatTemplate: template, extraEOS: extraEOS)
        case "llama":
            guard let scores = metadata["tokenizer.ggml.scores"]?.array?.map({ Float($0.double ?? 0) }) else {
                throw FormatError(file, "no tokenizer: tokenizer.ggml.scores missing")
            }
            let addSpacePrefix = metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
            let model = SentencePieceScoreModel(vocab: vocab, scores: scores, unknownID: unknown)
            return Tokenizer(model: .sentencePieceScores(model, addSpacePrefix: addSpacePrefix),
                             normalizer: nil, preTokenizer: nil,
                             decoder: TokenDecoder(pieces: .sentencePiece(replacement: "\u{2581}", byteFallback: true),
                                                   stripLeadingSpaces: addSpacePrefix ? 1 : 0),
                             vocab: vocab, addedTokens: added, bos: bos, eos: eos, unknown: unknown, padding: padding,
                             addsBOS: metadata["tokenizer.ggml.add_bos_token"]?.bool ?? true,
                             addsEOS: metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false,
                             chatTemplate: template, extraEOS: extraEOS)
        default:
            throw FormatError(file, "unsupported tokenizer model type \(modelName)")
        }
    }

    /// llama.cpp `tokenizer.ggml.pre` names -> the equivalent split regexes.
    static func ggufPreTokenizer(_ name: String, file: String) throws -> PreTokenizer {
        switch name {
        case "gpt2", "default", "mpt", "olmo", "jais":
            return .split(.gpt2)
        case "llama-bpe", "llama3", "dbrx", "smaug-bpe":
            return .split(.llama3)
        case "qwen2", "stablelm2", "deepseek-r1-qwen":
            return .split(.qwen2)
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b":
            // llama.cpp: every \p{N} alone, then the GPT-2 regex (HF: Digits(individual) + ByteLevel).
            return .sequence([.split(.digits(individual: true)), .split(.gpt2)])
        default:
            throw FormatError(file, "unsupported tokenizer pre-tokenizer \(name)")
        }
    }

    private static func splitMerge(_ line: String) -> (String, String)? {
        guard let space = line.firstIndex(of: " ") else { return nil }
        return (String(line[..<space]), String(line[line.index(after: space)...]))
    }

    /// Loads a Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json).
    public static func load(folder: String) throws -> Tokenizer {
        let tokenizerPath = (folder as NSString).appendingPathComponent("tokenizer.json")
        guard let data = try SmallFile.readIfPresent(tokenizerPath) else {
            throw FormatError(folder, "no tokenizer: tokenizer.json missing")
        }
        guard let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw FormatError(tokenizerPath, "not a JSON object")
        }
        let configPath = (folder as NSString).appendingPathComponent("tokenizer_config.json")
        var config: [String: Any] = [:]
        if let configData = try SmallFile.readIfPresent(configPath) {
            guard let object = (try? JSONSerialization.jsonObject(with: configData)) as? [String: Any] else {
                throw FormatError(configPath, "not a JSON object")
            }
            config = object
        }
        // Newer transformers save the template beside the config.
        let jinjaPath = (folder as NSString).appendingPathComponent("chat_template.jinja")
        if config["chat_template"] == nil, let jinja = try SmallFile.readIfPresent(jinjaPath) {
            config["chat_template"] = String(decoding: jinja, as: UTF8.self)
        }
        return try load(tokenizerJSON: json, config: config, file: tokenizerPath)
    }

    static func load(tokenizerJSON json: [String: Any], config: [String: Any], file: String) throws -> Tokenizer {
        guard let modelJSON = json["model"] as? [String: Any] else { throw FormatError(file, "no tokenizer: model missing") }
        let modelType = modelJSON["type"] as? String ?? (modelJSON["merges"] != nil ? "BPE" : "?")
        guard modelType == "BPE" else { throw FormatError(file, "unsupported tokenizer model type \(modelType)") }
        guard let vocabJSON = modelJSON["vocab"] as? [String: Any] else { throw FormatError(file, "no tokenizer: model.vocab missing") }
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(vocabJSON.count)
        for (token, value) in vocabJSON {
            guard let id = (value as? NSNumber)?.intValue else { throw FormatError(file, "vocab entry \(token) is not an id") }
            vocab[token] = id
        }
        var merges: [(String, String)] = []
        for entry in modelJSON["merges"] as? [Any] ?? [] {
            if let line = entry as? String, let pair = splitMerge(line) {
                merges.append(pair)
            } else if let pair = entry as? [String], pair.count == 2 {
                merges.append((pair[0], pair[1]))
            } else {
                throw FormatError(file, "malformed merge \(entry)")
            }
        }

        var added: [AddedToken] = []
        for entry in json["added_tokens"] as? [[String: Any]] ?? [] {
            guard let content = entry["content"] as? String, let id = (entry["id"] as? NSNumber)?.intValue else { continue }
            added.append(AddedToken(content: content, id: id, special: entry["special"] as? Bool ?? false,
                                    leftStrip: entry["lstrip"] as? Bool ?? false, rightStrip: entry["rstrip"] as? Bool ?? false))
        }
        try checkIDs(vocab: vocab, added: added, file: file)
        let addedIDs = Dictionary(added.map { ($0.content, $0.id) }, uniquingKeysWith: { a, _ in a })
        func tokenID(configKey: String) -> Int? {
            var name = config[configKey] as? String
            if let object = config[configKey] as? [String: Any] { name = object["content"] as? String }
            guard let name else { return nil }
            return addedIDs[name] ?? vocab[name]
        }

        let normalizer = try Normalizer.parse(json["normalizer"], file: file)
        let preTokenizer = try PreTokenizer.parse(json["pre_tokenizer"], file: file)
        let byteLevel = preTokenizer?.isByteLevel ?? false
        let byteFallback = modelJSON["byte_fallback"] as? Bool ?? false
        let decoder = try TokenDecoder.parse(json["decoder"], byteLevelModel: byteLevel, byteFallback: byteFallback, file: file)
        let unknownID = (modelJSON["unk_token"] as? String).flatMap { vocab[$0] ?? addedIDs[$0] }
        let model = BPEModel(vocab: vocab, merges: merges, byteLevel: byteLevel, byteFallback: byteFallback,
                             unknownID: unknownID, fuseUnknown: modelJSON["fuse_unk"] as? Bool ?? false,
                             ignoreMerges: modelJSON["ignore_merges"] as? Bool ?? false)

        let bos = tokenID(configKey: "bos_token"), eos = tokenID(configKey: "eos_token")
        // Without an explicit flag, BOS is added when the post-processor template starts with it.
        var addsBOS = config["add_bos_token"] as? Bool
        if addsBOS == nil, let processor = json["post_processor"] as? [String: Any] {
            addsBOS = templateStartsWithBOS(processor, bos: bos, vocab: vocab, added: addedIDs)
        }
        var template: String?
        if let source = config["chat_template"] as? String {
            template = source
        } else if let named = config["chat_template"] as? [[String: Any]] {
            template = (named.first { ($0["name"] as? String) == "default" } ?? named.first)?["template"] as? String
        }
        return Tokenizer(model: .bpe(model), normalizer: normalizer, preTokenizer: preTokenizer, decoder: decoder,
                         vocab: vocab, addedTokens: added, bos: bos, eos: eos, unknown: unknownID,
                         padding: tokenID(configKey: "pad_token"),
                         addsBOS: addsBOS ?? false, addsEOS: config["add_eos_token"] as? Bool ?? false,
                         chatTemplate: template)
    }

    /// Token ids index the id → spelling tables, sized by the largest id: every id must lie in
    /// 0..<(vocab entries + added tokens), so a stray id cannot trap or size a table of terabytes.
    static func checkIDs(vocab: [String: Int], added: [AddedToken], file: String) throws {
        let bound = vocab.count + added.count
        if let (token, id) = vocab.first(where: { $0.value < 0 || $0.value >= bound }) {
            throw FormatError(file, "model.vocab id \(id) of '\(token)' is out of range (0…\(bound - 1))")
        }
        if let token = added.first(where: { $0.id < 0 || $0.id >= bound }) {
            throw FormatError(file, "added_tokens id \(token.id) of '\(token.content)' is out of range (0…\(bound - 1))")
        }
    }

    private static func templateStartsWithBOS(_ processor: [String: Any], bos: Int?, vocab: [String: Int], added: [String: Int]) -> Bool {
        if processor["type"] as? String == "Sequence" {
            return (processor["processors"] as? [[String: Any]] ?? []).contains {
                templateStartsWithBOS($0, bos: bos, vocab: vocab, added: added)
            }
        }
        guard processor["type"] as? String == "TemplateProcessing",
              let first = (processor["single"] as? [[String: Any]])?.first,
              let special = first["SpecialToken"] as? [String: Any], let name = special["id"] as? String else { return false }
        return bos != nil && (added[name] ?? vocab[name]) == bos
    }
}

import Foundation
import GRDB

extension Store {
    /// A session as text: `md` (readable transcript), `jsonl` (one JSON object per turn) or
    /// `llava` (a LLaVA training list holding one conversation record for the session).
    public func export(session id: Int64, format: ExportFormat) throws -> String {
        // One read transaction, so the header and the turns describe the same moment.
        let (session, turns) = try read("export session \(id)") { db -> (SessionRecord, [TurnRecord]) in
            guard let session = try fetchSession(db, "s.id = ?", [id]) else {
                throw StoreError(.notFound, path: path, "no session \(id)")
            }
            return (session, try fetchTurns(db, session: id))
        }
        switch format {
        case .md: return Transcript.markdown(session, turns)
        case .jsonl: return Transcript.jsonLines(session, turns)
        case .llava: return Transcript.llava(session, turns)
        }
    }
}

enum Transcript {
    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    // MARK: Markdown

    static func markdown(_ session: SessionRecord, _ turns: [TurnRecord]) -> String {
        var out = "# Session \(session.id)" + (session.name.map { ": \($0)" } ?? "") + "\n\n"
        out += "- Created: \(timestamp(session.created))\n"
        if let model = session.model { out += "- Model: \(model.path) (\(model.architecture))\n" }
        if let template = session.template { out += "- Template: \(template)\n" }
        if let parent = session.parent { out += "- Replays: session \(parent)\n" }
        if session.params != "{}" { out += "- Params: `\(session.params)`\n" }
        for turn in turns {
            out += "\n## \(turn.role.rawValue.capitalized)\n\n"
            for image in turn.images {
                out += "![\((image.path as NSString).lastPathComponent)](\(markdownLink(image.path))) "
                out += "\(image.width)×\(image.height), sha256 \(image.sha256.prefix(12))\n\n"
            }
            out += turn.text + "\n"
            let stats = statistics(turn)
            if !stats.isEmpty { out += "\n*" + stats.joined(separator: " · ") + "*\n" }
        }
        return out
    }

    /// CommonMark needs angle brackets around link targets with spaces or parentheses.
    static func markdownLink(_ path: String) -> String {
        path.contains(where: { $0 == " " || $0 == "(" || $0 == ")" }) ? "<\(path)>" : path
    }

    static func statistics(_ turn: TurnRecord) -> [String] {
        var stats: [String] = []
        if let n = turn.promptTokens { stats.append("\(n) prompt tokens") }
        if let n = turn.completionTokens { stats.append("\(n) completion tokens") }
        if let t = turn.timings.ttft { stats.append("TTFT " + String(format: "%.3f s", t)) }
        if let r = turn.timings.prefillTokensPerSecond { stats.append("prefill " + String(format: "%.1f tok/s", r)) }
        if let r = turn.timings.decodeTokensPerSecond { stats.append("decode " + String(format: "%.1f tok/s", r)) }
        if let seed = turn.seed { stats.append("seed \(seed)") }
        return stats
    }

    // MARK: JSONL

    static func jsonLines(_ session: SessionRecord, _ turns: [TurnRecord]) -> String {
        turns.map { turn in
            let images: [JSON] = turn.images.map { image in
                .object([("path", .string(image.path)), ("sha256", .string(image.sha256)),
                         ("width", .int(Int64(image.width))), ("height", .int(Int64(image.height)))])
            }
            let object: JSON = .object([
                ("session", .int(session.id)),
                ("index", .int(Int64(turn.index))),
                ("role", .string(turn.role.rawValue)),
                ("text", .string(turn.text)),
                ("images", .array(images)),
                ("prompt_tokens", turn.promptTokens.map { .int(Int64($0)) } ?? .null),
                ("completion_tokens", turn.completionTokens.map { .int(Int64($0)) } ?? .null),
                ("ttft", turn.timings.ttft.map(JSON.double) ?? .null),
                ("prefill_tps", turn.timings.prefillTokensPerSecond.map(JSON.double) ?? .null),
                ("decode_tps", turn.timings.decodeTokensPerSecond.map(JSON.double) ?? .null),
                // Stored JSON is validated and minified on the way in, so it embeds verbatim.
                ("params", turn.params.map(JSON.raw) ?? .null),
                ("seed", turn.seed.map(JSON.uint) ?? .null),
                ("created", .string(timestamp(turn.created))),
            ])
            return object.render() + "\n"
        }.joined()
    }

    // MARK: LLaVA

    /// LLaVA keeps only human/gpt turns; system turns are dropped. Each image's `<image>` token
    /// goes on the first human turn at or after the turn that attached it, once per image.
    static func llava(_ session: SessionRecord, _ turns: [TurnRecord]) -> String {
        var seen = Set<String>()
        var paths: [String] = []
        var pendingTokens = 0
        var conversations: [JSON] = []
        for turn in turns {
            for image in turn.images where seen.insert(image.sha256).inserted {
                paths.append(image.path)
                pendingTokens += 1
            }
            switch turn.role {
            case .system:
                continue
            case .user:
                let value = String(repeating: "<image>\n", count: pendingTokens) + turn.text
                pendingTokens = 0
                conversations.append(.object([("from", .string("human")), ("value", .string(value))]))
            case .assistant:
                conversations.append(.object([("from", .string("gpt")), ("value", .string(turn.text))]))
            }
        }
        var record: [(String, JSON)] = [("id", .string(session.name ?? "session-\(session.id)"))]
        // One image is a plain path (the LLaVA 1.5 layout); several become a list, as
        // multi-image LLaVA variants expect; none leaves the key out (a text-only sample).
        if paths.count == 1 {
            record.append(("image", .string(paths[0])))
        } else if paths.count > 1 {
            record.append(("image", .array(paths.map(JSON.string))))
        }
        record.append(("conversations", .array(conversations)))
        return JSON.array([.object(record)]).render(indent: 2) + "\n"
    }
}

/// Minimal JSON writer: keys stay in the order given, slashes and non-ASCII stay as they are,
/// so exports are stable and diffable.
enum JSON {
    case null
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])
    /// Already-valid JSON text embedded as is.
    case raw(String)

    func render(indent: Int = 0) -> String {
        var out = ""
        write(to: &out, indent: indent, depth: 0)
        return out
    }

    private func write(to out: inout String, indent: Int, depth: Int) {
        let pretty = indent > 0
        let pad = { (level: Int) in pretty ? "\n" + String(repeating: " ", count: indent * level) : "" }
        switch self {
        case .null: out += "null"
        case .int(let v): out += String(v)
        case .uint(let v): out += String(v)
        case .double(let v): out += v.isFinite ? "\(v)" : "null"
        case .string(let s): JSON.escape(s, into: &out)
        case .raw(let text): out += text
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                out += pad(depth + 1)
                item.write(to: &out, indent: indent, depth: depth + 1)
            }
            out += pad(depth) + "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                out += pad(depth + 1)
                JSON.escape(key, into: &out)
                out += pretty ? ": " : ":"
                value.write(to: &out, indent: indent, depth: depth + 1)
            }
            out += pad(depth) + "}"
        }
    }

    static func escape(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                    + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

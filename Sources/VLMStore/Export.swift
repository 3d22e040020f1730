import Foundation
import GRDB

extension Store {
    /// A session as text: `md` (readable transcript), `jsonl` (one JSON object per turn) or
    /// `llava` (a LLaVA training list holding one conversation record for the session).
    public func export(session id: Int64, format: ExportFormat) throws -> String {
        try export(sessions: [id], format: format)
    }

    /// Several sessions as one text: transcripts and turn lines one session after another; for
    /// `llava`, one training list with a record per session, in the order given.
    public func export(sessions ids: [Int64], format: ExportFormat) throws -> String {
        let sessions = try ids.map(sessionWithTurns)
        switch format {
        case .md: return sessions.map { Transcript.markdown($0.0, $0.1) }.joined(separator: "\n")
        case .jsonl: return sessions.map { Transcript.jsonLines($0.0, $0.1) }.joined()
        case .llava: return Transcript.llavaList(sessions.map { Transcript.llavaRecord($0.0, $0.1, imagePath: \.path) })
        }
    }

    /// Sessions as a self-contained LLaVA training folder: `directory/llava.json` (a record per
    /// session, in the order given) and every image copied to `directory/images/` under a name
    /// taken from its content (the first 16 hex digits of its SHA-256 and its extension), with
    /// paths in the data relative to `directory`, so the folder trains wherever it is moved
    /// (`vlmsh finetune --data directory/llava.json`). Each image is checked against the hash the
    /// chat recorded, so the data holds the pictures the model saw; the data file is written last,
    /// by renaming, so it never names an image not yet copied.
    public func exportLLaVAFolder(sessions ids: [Int64], to directory: String) throws -> LLaVAFolderExport {
        let sessions = try ids.map(sessionWithTurns)
        let fm = FileManager.default
        let imagesDirectory = directory + "/" + LLaVAFolderExport.imagesFolder
        do {
            try fm.createDirectory(atPath: imagesDirectory, withIntermediateDirectories: true)
        } catch {
            throw StoreError(.invalidArgument, path: path, "\(directory): cannot create the export folder (\(error.localizedDescription))")
        }
        var copied: [String: String] = [:]   // sha256 → name relative to `directory`
        var records: [JSON] = []
        for (session, turns) in sessions {
            for image in turns.flatMap(\.images) where copied[image.sha256] == nil {
                copied[image.sha256] = try copyImage(image, session: session.id, into: imagesDirectory)
            }
            records.append(Transcript.llavaRecord(session, turns) { copied[$0.sha256]! })
        }
        let dataFile = directory + "/" + LLaVAFolderExport.dataFileName
        do {
            try Data(Transcript.llavaList(records).utf8).write(to: URL(fileURLWithPath: dataFile), options: .atomic)
        } catch {
            throw StoreError(.invalidArgument, path: path, "\(dataFile): cannot write (\(error.localizedDescription))")
        }
        return LLaVAFolderExport(dataFile: dataFile, records: records.count, images: copied.count)
    }

    /// Copies the file of `image` into `folder` as `<sha256 prefix>.<ext>` (kept when already
    /// there) and returns its path relative to the export folder.
    private func copyImage(_ image: ImageRecord, session: Int64, into folder: String) throws -> String {
        try LLaVAFolderExport.copyImage(image.path, sha256: image.sha256, into: folder, storePath: path) {
            guard FileManager.default.isReadableFile(atPath: image.path) else {
                throw StoreError(.notFound, path: path, "\(image.path): the image of session \(session) is gone (sha256 \(image.sha256.prefix(12)))")
            }
            guard try ContentHash.hex(file: image.path) == image.sha256 else {
                throw StoreError(.invalidArgument, path: path,
                                 "\(image.path): the file changed since session \(session) attached it (sha256 \(image.sha256.prefix(12)) then)")
            }
        }
    }

    /// A session and its turns read in one transaction, so they describe the same moment.
    private func sessionWithTurns(_ id: Int64) throws -> (SessionRecord, [TurnRecord]) {
        try read("export session \(id)") { db -> (SessionRecord, [TurnRecord]) in
            guard let session = try fetchSession(db, "s.id = ?", [id]) else {
                throw StoreError(.notFound, path: path, "no session \(id)")
            }
            return (session, try fetchTurns(db, session: id))
        }
    }
}

/// What `Store.exportLLaVAFolder` wrote.
public struct LLaVAFolderExport: Sendable, Equatable {
    public static let dataFileName = "llava.json"
    public static let imagesFolder = "images"
    /// The training data file (absolute, or as the folder was given).
    public var dataFile: String
    /// Conversation records (one per session).
    public var records: Int
    /// Distinct images in the folder.
    public var images: Int

    /// Copies the image file `source`, whose SHA-256 is `sha256`, into `imagesDirectory` as
    /// `<first 16 hex digits>.<ext>` (kept when already there, else `check` runs first) and
    /// returns its path relative to the export folder.
    static func copyImage(_ source: String, sha256: String, into imagesDirectory: String, storePath: String,
                          check: () throws -> Void) throws -> String {
        let ext = (source as NSString).pathExtension.lowercased()
        let name = String(sha256.prefix(16)) + (ext.isEmpty ? "" : "." + ext)
        let target = imagesDirectory + "/" + name
        let relative = imagesFolder + "/" + name
        let fm = FileManager.default
        if fm.fileExists(atPath: target), (try? ContentHash.hex(file: target)) == sha256 { return relative }
        try check()
        // Copied under a temporary name and renamed, so an interrupted export leaves no partial image.
        let temporary = target + ".tmp-\(getpid())"
        do {
            try? fm.removeItem(atPath: temporary)
            try fm.copyItem(atPath: source, toPath: temporary)
            if fm.fileExists(atPath: target) { try fm.removeItem(atPath: target) }
            try fm.moveItem(atPath: temporary, toPath: target)
        } catch {
            try? fm.removeItem(atPath: temporary)
            throw StoreError(.invalidArgument, path: storePath, "\(target): cannot copy \(source) (\(error.localizedDescription))")
        }
        return relative
    }

    /// Copies the image file `source` (its SHA-256 `sha256`) into `directory`/images/ as an export
    /// folder names it, creating the folder; returns the path relative to `directory`.
    public static func copyImage(_ source: String, sha256: String, into directory: String) throws -> String {
        let images = directory + "/" + imagesFolder
        do { try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true) } catch {
            throw StoreError(.invalidArgument, path: directory, "cannot create \(images) (\(error.localizedDescription))")
        }
        return try copyImage(source, sha256: sha256, into: images, storePath: directory) {}
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
    /// goes on the first human turn at or after the turn that attached it, once per image, so
    /// the placeholders come in the order of the record's images. `imagePath` names each image
    /// in the record.
    static func llavaRecord(_ session: SessionRecord, _ turns: [TurnRecord], imagePath: (ImageRecord) -> String) -> JSON {
        var seen = Set<String>()
        var paths: [String] = []
        var pendingTokens = 0
        var conversations: [JSON] = []
        for turn in turns {
            for image in turn.images where seen.insert(image.sha256).inserted {
                paths.append(imagePath(image))
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
        return .object(record)
    }

    /// A LLaVA training file's text: the list of records.
    static func llavaList(_ records: [JSON]) -> String {
        JSON.array(records).render(indent: 2) + "\n"
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

import Foundation
import VLMFormats

/// Text normalization applied to each segment between added tokens (HF `normalizer`).
indirect enum Normalizer: Sendable {
    case prepend(String)
    case replace(pattern: String, content: String)
    case sequence([Normalizer])
    case nfc, nfd, nfkc, nfkd
    case lowercase

    func apply(_ text: String) -> String {
        switch self {
        case .prepend(let prefix):
            // HF prepends only to non-empty segments.
            return text.isEmpty ? text : prefix + text
        case .replace(let pattern, let content):
            return text.replacingOccurrences(of: pattern, with: content)
        case .sequence(let steps):
            return steps.reduce(text) { $1.apply($0) }
        case .nfc: return text.precomposedStringWithCanonicalMapping
        case .nfd: return text.decomposedStringWithCanonicalMapping
        case .nfkc: return text.precomposedStringWithCompatibilityMapping
        case .nfkd: return text.decomposedStringWithCompatibilityMapping
        case .lowercase: return text.lowercased()
        }
    }

    /// Parses a tokenizer.json `normalizer` object (nil / JSON null means none).
    static func parse(_ json: Any?, file: String) throws -> Normalizer? {
        guard let object = json as? [String: Any] else { return nil }
        let type = object["type"] as? String ?? "?"
        switch type {
        case "Prepend":
            return .prepend(object["prepend"] as? String ?? "")
        case "Replace":
            guard let content = object["content"] as? String,
                  let pattern = (object["pattern"] as? [String: Any])?["String"] as? String else {
                throw FormatError(file, "unsupported Replace normalizer (only string patterns are supported)")
            }
            return .replace(pattern: pattern, content: content)
        case "Sequence":
            let steps = try (object["normalizers"] as? [Any] ?? []).compactMap { try parse($0, file: file) }
            return .sequence(steps)
        case "NFC": return .nfc
        case "NFD": return .nfd
        case "NFKC": return .nfkc
        case "NFKD": return .nfkd
        case "Lowercase": return .lowercase
        default:
            throw FormatError(file, "unsupported normalizer type \(type)")
        }
    }
}

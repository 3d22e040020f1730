import Foundation

/// Untrusted text made safe to print: model files, data files and error messages quoting them can
/// hold escape sequences (an OSC sequence retitles the window, others move the cursor or hide
/// text) and can be megabytes long. Control characters are shown escaped (`\u{1B}`) and the
/// length is capped, so what reaches the terminal is what the bytes were, readable and short.
public enum TerminalText {
    /// Characters an error message keeps; the rest is counted, not printed.
    public static let errorLimit = 2000
    /// Characters a single field (an architecture, a template name) keeps.
    public static let fieldLimit = 200

    /// `text` cut to `limit` characters, with control and bidi-override characters escaped;
    /// newlines stay when `keepNewlines`.
    public static func clean(_ text: String, limit: Int, keepNewlines: Bool = false) -> String {
        // Cut before escaping: a 14 MB message is not walked character by character.
        let head = text.prefix(limit)
        var out = ""
        out.reserveCapacity(head.utf8.count)
        for scalar in head.unicodeScalars {
            if isUnsafe(scalar) && !(keepNewlines && scalar == "\n") {
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        if head.endIndex < text.endIndex {
            let rest = text.utf8.count - head.utf8.count
            out += "… (\(rest) more bytes)"
        }
        return out
    }

    /// An error message as printed: controls escaped (newlines kept), at most `errorLimit` characters.
    public static func error(_ message: String) -> String { clean(message, limit: errorLimit, keepNewlines: true) }

    /// One line of model metadata as shown.
    public static func field(_ value: String) -> String { clean(value, limit: fieldLimit) }

    /// C0 and C1 controls, DEL, and the bidi overrides that reorder what a line seems to say.
    static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x08, 0x0A...0x1F, 0x7F...0x9F, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }
}

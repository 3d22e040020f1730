/// Splits a REPL command's arguments the way a shell does, so a path with a space can be
/// passed: `"my pics/cat 1.png"`, `'my pics/cat 1.png'` or `my\ pics/cat\ 1.png`. Single quotes
/// keep everything literally; inside double quotes a backslash escapes `"` and `\` only; outside
/// quotes it escapes any character. No variables, globs or other expansions.
public enum ShellWords {
    public static func split(_ text: String) throws -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false   // "" is a word (empty) although it adds no characters
        var characters = text.makeIterator()
        while let c = characters.next() {
            switch c {
            case _ where c.isWhitespace:
                if inWord { words.append(word); word = ""; inWord = false }
            case "'":
                inWord = true
                word += try quoted(&characters, until: "'", escapes: [])
            case "\"":
                inWord = true
                word += try quoted(&characters, until: "\"", escapes: ["\"", "\\"])
            case "\\":
                guard let escaped = characters.next() else { throw UsageError("a backslash at the end escapes nothing") }
                inWord = true
                word.append(escaped)
            default:
                inWord = true
                word.append(c)
            }
        }
        if inWord { words.append(word) }
        return words
    }

    /// The characters up to the closing `quote` (consumed, not returned).
    private static func quoted(_ characters: inout String.Iterator, until quote: Character, escapes: Set<Character>) throws -> String {
        var text = ""
        while let c = characters.next() {
            if c == quote { return text }
            if c == "\\", !escapes.isEmpty {
                guard let next = characters.next() else { break }
                if !escapes.contains(next) { text.append(c) }
                text.append(next)
            } else {
                text.append(c)
            }
        }
        throw UsageError("unterminated \(quote) quote")
    }
}

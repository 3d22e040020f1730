import VLMFormats
import XCTest

extension XCTestCase {
    /// Runs `body`, expects a FormatError for `file` whose description is one line starting with
    /// the file name, and returns that description.
    @discardableResult
    func expectFormatError(_ file: String, line: UInt = #line, _ body: () throws -> Void) -> String {
        do {
            try body()
            XCTFail("expected a FormatError for \(file)", line: line)
        } catch let e as FormatError {
            XCTAssertEqual(e.file, file, line: line)
            XCTAssertTrue(e.description.hasPrefix(file + ": "), e.description, line: line)
            XCTAssertFalse(e.description.contains("\n"), e.description, line: line)
            return e.description
        } catch {
            XCTFail("expected a FormatError, got \(error)", line: line)
        }
        return ""
    }
}

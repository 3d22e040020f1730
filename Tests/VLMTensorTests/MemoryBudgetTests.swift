import Foundation
import VLMTensor
import XCTest

final class MemoryBudgetTests: XCTestCase {
    func testSizesParseAsPeopleWriteThem() {
        XCTAssertEqual(MemoryBudget.parse("8G"), 8 << 30)
        XCTAssertEqual(MemoryBudget.parse("8gb"), 8 << 30)
        XCTAssertEqual(MemoryBudget.parse("8GiB"), 8 << 30)
        XCTAssertEqual(MemoryBudget.parse("512M"), 512 << 20)
        XCTAssertEqual(MemoryBudget.parse("1.5g"), 3 << 29)
        XCTAssertEqual(MemoryBudget.parse("64k"), 64 << 10)
        XCTAssertEqual(MemoryBudget.parse("1000000"), 1_000_000)
        XCTAssertEqual(MemoryBudget.parse(" 2T "), 2 << 40)
        for bad in ["", "G", "-1G", "0", "nan", "inf", "1e30", "8X", "eight", "0.1"] {
            XCTAssertNil(MemoryBudget.parse(bad), bad)
        }
    }

    func testRequireCountsWhatIsResidentAndNamesTheLimit() throws {
        let saved = MemoryBudget.limit
        defer { MemoryBudget.limit = saved }
        let resident = MemoryBudget.residentBytes()
        XCTAssertGreaterThan(resident, 1 << 20, "read from /proc/self/statm")
        MemoryBudget.limit = resident + (100 << 20)
        XCTAssertNoThrow(try MemoryBudget.require(50e6, for: "half"))
        XCTAssertThrowsError(try MemoryBudget.require(200e6, for: "a thing")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("a thing would need about 200 MB, more than the "), text)
            XCTAssertTrue(text.hasSuffix("already in use (--max-memory)"), text)
        }
        XCTAssertThrowsError(try MemoryBudget.require(.infinity, for: "an unbounded thing"))
        XCTAssertThrowsError(try MemoryBudget.require(.nan, for: "a broken estimate"))
        XCTAssertLessThanOrEqual(MemoryBudget.machineBytes, Int(ProcessInfo.processInfo.physicalMemory))
    }
}

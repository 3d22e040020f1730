import XCTest
@testable import VLMTraining
import VLMTensor

final class AutodiffTests: XCTestCase {
    func testTapeRecordsOnlyTrainablePaths() {
        let tape = Tape()
        let frozen = Variable(shape: [2, 2], values: [1, 2, 3, 4])
        let y = tape.scale(frozen, 2)
        XCTAssertEqual(tape.count, 0)
        XCTAssertEqual(y.value.array, [2, 4, 6, 8])
    }
}

import VLMFormats
import VLMImage
import XCTest

/// Bad input must surface as a FormatError naming the file: never a crash, exit or huge allocation.
final class ErrorTests: XCTestCase {
    func expectFormatError(_ bytes: [UInt8], name: String, containing text: String? = nil, maxPixels: Int = 64_000_000,
                           file: StaticString = #filePath, line: UInt = #line) {
        let path = ImageFixtures.scratch(bytes, name: name)
        do {
            let image = try ImageLoader.load(path: path, maxPixels: maxPixels)
            XCTFail("\(name): decoded \(image.width)x\(image.height) instead of failing", file: file, line: line)
        } catch let error as FormatError {
            XCTAssertEqual(error.file, path, file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), file: file, line: line)
            if let text { XCTAssertTrue(error.message.contains(text), "\(name): \(error.message)", file: file, line: line) }
        } catch {
            XCTFail("\(name): unexpected error \(error)", file: file, line: line)
        }
    }

    func testUnknownEmptyAndTinyFiles() {
        expectFormatError(Array("GIF89a.....".utf8), name: "fake.gif", containing: "not a JPEG or PNG")
        expectFormatError([0xFF, 0xD8, 0xFF], name: "stub.jpg")
        expectFormatError(Array(ImageFixtures.bytes("square").prefix(8)), name: "signature-only.png")
        let path = ImageFixtures.scratch([], name: "empty.png")
        XCTAssertThrowsError(try ImageLoader.load(path: path)) { XCTAssertTrue($0 is FormatError) }
        XCTAssertThrowsError(try ImageLoader.load(path: "/nonexistent/vlmsh.png")) { XCTAssertTrue($0 is FormatError) }
    }

    func testTruncatedFilesAtManyLengths() {
        for name in ["baseline", "progressive", "cmyk", "exif6", "square", "palette", "rgb16", "gray16"] {
            let bytes = ImageFixtures.bytes(name)
            for fraction in [0.05, 0.2, 0.5, 0.8, 0.97] {
                let cut = Int(Double(bytes.count) * fraction)
                expectFormatError(Array(bytes.prefix(cut)), name: "\(name)-cut\(cut)")
            }
            expectFormatError(Array(bytes.dropLast(1)), name: "\(name)-minus1")
        }
    }

    func testCorruptedBytesNeverCrash() {
        // Flip bytes all over each file: decoding may succeed (entropy damage is tolerated, as in
        // PIL) but must never crash, exit or hang; failures are FormatErrors.
        var generator = SystemRandomNumberGenerator()
        for name in ["baseline", "progressive", "gray_jpeg", "cmyk", "square", "palette", "rgba"] {
            let original = ImageFixtures.bytes(name)
            for trial in 0..<40 {
                var bytes = original
                for _ in 0..<(1 + trial % 4) {
                    let i = Int.random(in: 2..<bytes.count, using: &generator)
                    bytes[i] = UInt8.random(in: 0...255, using: &generator)
                }
                let path = ImageFixtures.scratch(bytes, name: "\(name)-corrupt\(trial)")
                do { _ = try ImageLoader.load(path: path) } catch let error as FormatError {
                    XCTAssertEqual(error.file, path)
                } catch { XCTFail("\(name): unexpected error \(error)") }
            }
        }
    }

    func testJPEGStructuralDamage() {
        let bytes = ImageFixtures.bytes("baseline")
        // Find SOF0 and DHT to damage them precisely.
        func find(_ marker: UInt8) -> Int { (2..<bytes.count).first { bytes[$0 - 1] == 0xFF && bytes[$0] == marker }! - 1 }
        var badPrecision = bytes; badPrecision[find(0xC0) + 4] = 12
        expectFormatError(badPrecision, name: "precision12.jpg", containing: "12-bit")
        var badSampling = bytes; badSampling[find(0xC0) + 11] = 0x51
        expectFormatError(badSampling, name: "sampling.jpg", containing: "sampling")
        var badTable = bytes; badTable[find(0xC4) + 4] = 0x07
        expectFormatError(badTable, name: "dhtindex.jpg", containing: "Huffman")
        var overfull = bytes; overfull[find(0xC4) + 5] = 2  // two 1-bit codes leave no room
        expectFormatError(overfull, name: "overfull.jpg", containing: "Huffman")
        var noEOI = bytes; noEOI.removeLast(2)
        expectFormatError(noEOI, name: "noeoi.jpg", containing: "truncated")
    }

    func testHugeHeadersAreRefusedBeforeAllocating() {
        // 100000 x 100000: the JPEG limit (65500) and the pixel limit both refuse it from the header.
        var jpeg = ImageFixtures.bytes("baseline")
        let sof = (2..<jpeg.count).first { jpeg[$0 - 1] == 0xFF && jpeg[$0] == 0xC0 }! - 1
        for (o, v) in [(5, 0xFF), (6, 0xFF), (7, 0xFF), (8, 0xFF)] { jpeg[sof + o] = UInt8(v) }
        expectFormatError(jpeg, name: "huge.jpg", containing: "65535x65535")
        var png = ImageFixtures.bytes("square")
        let side: [UInt8] = [0x00, 0x01, 0x86, 0xA0]  // 100000
        png.replaceSubrange(16..<20, with: side)
        png.replaceSubrange(20..<24, with: side)
        let start = Date()
        expectFormatError(png, name: "huge.png", containing: "exceeds the limit")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        // A small limit applies to real images too.
        expectFormatError(ImageFixtures.bytes("square"), name: "limit.png", containing: "exceeds the limit", maxPixels: 1000)
        expectFormatError(ImageFixtures.bytes("baseline"), name: "limit.jpg", containing: "exceeds the limit", maxPixels: 1000)
    }
}

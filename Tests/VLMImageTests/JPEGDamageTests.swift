import Foundation
import VLMFormats
import VLMImage
import XCTest

/// Damage libjpeg only notices while decoding (the header is valid): it must come back as a
/// FormatError or a decoded image, never a crash, an exit, a hang or text on stderr.
final class JPEGDamageTests: XCTestCase {
    /// The fixture's bytes up to the end of its first SOS header, found by walking the segments.
    func headerThroughSOS(_ name: String) throws -> [UInt8] {
        let bytes = ImageFixtures.bytes(name)
        var pos = 2
        while pos + 4 <= bytes.count {
            XCTAssertEqual(bytes[pos], 0xFF, "segment marker at \(pos)")
            let length = Int(bytes[pos + 2]) << 8 | Int(bytes[pos + 3])
            if bytes[pos + 1] == 0xDA { return Array(bytes[..<(pos + 2 + length)]) }
            pos += 2 + length
        }
        throw XCTSkip("\(name) has no SOS segment")
    }

    /// Deterministic noise; `markerFree` replaces 0xFF so no marker (and no EOI) appears by chance.
    func garbage(_ count: Int, seed: UInt64, markerFree: Bool) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let byte = UInt8(truncatingIfNeeded: state >> 56)
            return markerFree && byte == 0xFF ? 0xFE : byte
        }
    }

    func load(_ bytes: [UInt8], name: String) -> Result<RGBImage, FormatError>? {
        let path = ImageFixtures.scratch(bytes, name: name)
        do { return .success(try ImageLoader.load(path: path)) } catch let error as FormatError {
            XCTAssertEqual(error.file, path)
            XCTAssertFalse(error.description.contains("\n"), error.description)
            return .failure(error)
        } catch {
            XCTFail("\(name): unexpected error \(error)")
            return nil
        }
    }

    func testGarbageScanDataCutShortIsAnError() throws {
        let start = Date()
        for fixture in ["baseline", "progressive", "gray_jpeg", "cmyk"] {
            let header = try headerThroughSOS(fixture)
            let noise = garbage(3000, seed: 7, markerFree: true)
            for cut in [0, 1, 17, 64, 500, 2999] {
                let name = "\(fixture)-garbage-cut\(cut).jpg"
                guard case .failure(let error) = load(header + noise.prefix(cut), name: name) else {
                    XCTFail("\(name): a file cut short in its scan data decoded"); continue
                }
                XCTAssertTrue(error.message.contains("truncated"), "\(name): \(error.message)")
            }
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 20, "damaged files decode (or fail) quickly")
    }

    func testGarbageScanDataWithEndMarkerNeverCrashes() throws {
        for fixture in ["baseline", "progressive", "gray_jpeg", "cmyk"] {
            let header = try headerThroughSOS(fixture)
            for seed in 1...12 as ClosedRange<UInt64> {
                // Unrestricted noise: stray markers in it are damage libjpeg must survive too.
                let bytes = header + garbage(2000, seed: seed, markerFree: seed % 2 == 0) + [0xFF, 0xD9]
                if case .success(let image) = load(bytes, name: "\(fixture)-garbage\(seed).jpg") {
                    XCTAssertEqual(image.pixels.count, image.width * image.height * 3)
                }
            }
        }
    }

    /// libjpeg prints its first warning ("Corrupt JPEG data: ...") to stderr by default.
    func testLibjpegWarningsAreNotPrinted() throws {
        let header = try headerThroughSOS("baseline")
        let bytes = header + garbage(2000, seed: 3, markerFree: true) + [0xFF, 0xD9]
        let path = ImageFixtures.scratch(bytes, name: "warning.jpg")
        let captured = ImageFixtures.scratch([], name: "stderr.txt")
        fflush(nil)
        let saved = dup(STDERR_FILENO)
        let file = open(captured, O_WRONLY | O_TRUNC)
        dup2(file, STDERR_FILENO)
        close(file)
        _ = try? ImageLoader.load(path: path)
        fflush(nil)
        dup2(saved, STDERR_FILENO)
        close(saved)
        XCTAssertEqual(try String(contentsOfFile: captured, encoding: .utf8), "")
    }
}

import VLMFormats
import VLMImage
import XCTest

/// Decoded pixels against `ImageOps.exif_transpose(Image.open(f)).convert("RGB")`.
final class DecodeTests: XCTestCase {
    func testEveryImageMatchesPIL() throws {
        var checked = 0
        for (name, info) in ImageFixtures.index.images.sorted(by: { $0.key < $1.key }) {
            let image = try ImageLoader.load(path: ImageFixtures.file(name))
            XCTAssertEqual(image.width, info.width, name)
            XCTAssertEqual(image.height, info.height, name)
            guard let expected = ImageFixtures.decoded(name) else { continue }
            var maxDiff = 0, differing = 0
            for (a, b) in zip(image.pixels, expected) where a != b {
                maxDiff = max(maxDiff, abs(Int(a) - Int(b)))
                differing += 1
            }
            // Same libjpeg algorithms (islow IDCT, fancy upsampling) as PIL: exact for JPEG too.
            XCTAssertEqual(maxDiff, 0, "\(name): \(differing) bytes differ, max \(maxDiff)")
            checked += 1
        }
        XCTAssertGreaterThanOrEqual(checked, 20)
    }

    func testExifOrientationIsApplied() throws {
        for (name, rotated) in [("exif6", true), ("exif8", true), ("exif3", false)] {
            let info = ImageFixtures.index.images[name]!
            XCTAssertNotEqual(info.orientation, 1)
            let image = try ImageLoader.load(path: ImageFixtures.file(name))
            // The stored JPEGs are 48x32; orientations 6 and 8 swap the sides.
            XCTAssertEqual(image.width, rotated ? 32 : 48, name)
            XCTAssertEqual(image.height, rotated ? 48 : 32, name)
        }
    }

    func testOrientedTransposesLikePIL() {
        // 3x2 image with distinct pixels; expectations worked out from PIL's transpose methods.
        let src = RGBImage(width: 3, height: 2, pixels: (0..<18).map { UInt8($0) })
        func ids(_ im: RGBImage) -> [UInt8] { stride(from: 0, to: im.pixels.count, by: 3).map { im.pixels[$0] / 3 } }
        XCTAssertEqual(ids(src.oriented(.flipHorizontal)), [2, 1, 0, 5, 4, 3])
        XCTAssertEqual(ids(src.oriented(.rotate180)), [5, 4, 3, 2, 1, 0])
        XCTAssertEqual(ids(src.oriented(.flipVertical)), [3, 4, 5, 0, 1, 2])
        XCTAssertEqual(ids(src.oriented(.transpose)), [0, 3, 1, 4, 2, 5])
        XCTAssertEqual(ids(src.oriented(.rotate270)), [3, 0, 4, 1, 5, 2])
        XCTAssertEqual(ids(src.oriented(.transverse)), [5, 2, 4, 1, 3, 0])
        XCTAssertEqual(ids(src.oriented(.rotate90)), [2, 5, 1, 4, 0, 3])
    }
}

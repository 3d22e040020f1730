import Foundation
import VLMStore
import XCTest

final class ContentHashTests: XCTestCase {
    // FIPS 180-4 example vectors.
    func testNISTVectors() {
        XCTAssertEqual(ContentHash.hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(ContentHash.hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(ContentHash.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(ContentHash.hex([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// Feeding odd-sized pieces must give the one-shot digest (exercises the partial-block path).
    func testIncrementalMatchesOneShot() {
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let expected = ContentHash.hex(bytes)
        for piece in [1, 3, 55, 56, 63, 64, 65, 1000] {
            var hasher = ContentHash.Hasher()
            var start = 0
            while start < bytes.count {
                let end = min(start + piece, bytes.count)
                hasher.update(Array(bytes[start..<end]))
                start = end
            }
            XCTAssertEqual(hasher.finalizeHex(), expected, "piece \(piece)")
        }
    }

    func testFileDigestAndFingerprint() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("vlmsh-sha-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // 2.5 MB: more than one 1 MB read chunk, with a ragged tail.
        let bytes = (0..<(5 << 19)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 7) }
        let file = dir.appendingPathComponent("weights.bin")
        try Data(bytes).write(to: file)
        XCTAssertEqual(try ContentHash.hex(file: file.path), ContentHash.hex(bytes))

        let mb = 1 << 20
        var hasher = ContentHash.Hasher()
        hasher.update(Array(bytes[0..<mb]))
        hasher.update(Array(bytes[(bytes.count - mb)...]))
        hasher.update(Array(String(bytes.count).utf8))
        XCTAssertEqual(try ContentHash.fingerprint(file: file.path), hasher.finalizeHex())

        // A small file is hashed once, plus its size.
        let small = dir.appendingPathComponent("small.bin")
        try Data("abc".utf8).write(to: small)
        XCTAssertEqual(try ContentHash.fingerprint(file: small.path), ContentHash.hex("abc3"))

        XCTAssertThrowsError(try ContentHash.hex(file: dir.appendingPathComponent("missing").path)) { error in
            XCTAssertTrue("\(error)".contains("missing"), "\(error)")
        }
    }

    /// Prints throughput: hashing a checkpoint or an image should never dominate a command.
    func testThroughputYardstick() {
        let bytes = [UInt8](repeating: 0x5a, count: 64 << 20)
        let start = Date()
        let digest = ContentHash.hex(bytes)
        let seconds = Date().timeIntervalSince(start)
        print("ContentHash (SHA-256): \(Int(64 / seconds)) MB/s")
        XCTAssertEqual(digest.count, 64)
    }
}

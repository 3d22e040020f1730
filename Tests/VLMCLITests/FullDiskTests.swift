import Foundation
import VLMStore
import XCTest

/// A full disk, simulated honestly: a small tmpfs mounted for the test (mounting needs root; the
/// tests skip without it), filled up to the last byte.
final class FullDiskTests: XCTestCase {
    /// A fresh tmpfs of `kilobytes`, unmounted when the test ends.
    func smallDisk(kilobytes: Int) throws -> String {
        let dir = try scratchDirectory("vlmsh-disk")
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=\(kilobytes)k", "tmpfs", dir]
        mount.standardError = FileHandle.nullDevice
        try mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here (needs root)") }
        addTeardownBlock {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = [dir]
            try? umount.run()
            umount.waitUntilExit()
        }
        return dir
    }

    /// Writes `path` until the disk refuses another byte.
    func fill(_ path: String) {
        let fd = open(path, O_WRONLY | O_CREAT, 0o644)
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0, count: 4096)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        var byte: UInt8 = 0
        while write(fd, &byte, 1) > 0 {}
    }

    func testListingSessionsWorksOnAFullDisk() throws {
        let home = try smallDisk(kilobytes: 512)
        do {
            let store = try Store(path: home + "/vlmsh.sqlite")
            try store.renameSession(try store.createSession(), to: "before-the-disk-filled")
        }
        // The store closed cleanly: SQLite removed the files WAL readers share, which a new
        // reader has to create again.
        XCTAssertFalse(FileManager.default.fileExists(atPath: home + "/vlmsh.sqlite-shm"))
        fill(home + "/filler")

        let r = try CLITests.vlmsh(["sessions", "--json"], home: home)
        XCTAssertEqual(r.status, 0, r.stderr)
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], r.stdout)
        XCTAssertEqual((j["sessions"] as? [[String: Any]])?.map { $0["name"] as? String }, ["before-the-disk-filled"])
        let show = try CLITests.vlmsh(["show", "before-the-disk-filled"], home: home)
        XCTAssertEqual(show.status, 0, show.stderr)

        // Writing still fails, with the store's one-line error.
        let write = try CLITests.vlmsh(["replay", "before-the-disk-filled"], home: home)
        XCTAssertEqual(write.status, 1)
    }

    func testAFineTuneStoppedByAFullDiskLeavesNoHalfWrittenCheckpoint() throws {
        let out = try smallDisk(kilobytes: 64)
        let home = try scratchDirectory("vlmsh-disk-home")
        let r = try CLITests.vlmsh(["finetune", "--model", EvalMergeCLITests.base, "--data", EvalMergeCLITests.examples,
                                    "--mode", "lora+projector", "--steps", "4", "--save-steps", "1", "--out", out + "/run"], home: home)
        XCTAssertEqual(r.status, 1, "the disk is too small for a checkpoint: \(r.stderr)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: out + "/run")) ?? []
        XCTAssertEqual(left.filter { $0.contains(".tmp-") }, [], "\(left)")
    }

    /// Half-written checkpoints of a run that died are removed when a run starts in that folder;
    /// one of a process still running stays.
    func testStaleCheckpointFoldersAreRemovedAtTheNextStart() throws {
        let home = try scratchDirectory("vlmsh-stale")
        let out = home + "/run"
        let finished = Process()
        finished.executableURL = URL(fileURLWithPath: "/bin/true")
        try finished.run()
        finished.waitUntilExit()
        let dead = out + "/checkpoint-3.tmp-\(finished.processIdentifier)"
        let alive = out + "/checkpoint-5.tmp-\(getpid())"
        for folder in [dead, alive] { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }

        let r = try CLITests.vlmsh(["finetune", "--model", EvalMergeCLITests.base, "--data", EvalMergeCLITests.examples,
                                    "--steps", "1", "--out", out], home: home)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dead))
        XCTAssertTrue(FileManager.default.fileExists(atPath: alive), "its process still runs")
        XCTAssertTrue(r.stdout.contains("removed the half-written checkpoint-3.tmp-\(finished.processIdentifier)"), r.stdout)
    }
}

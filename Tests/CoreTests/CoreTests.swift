import XCTest

@testable import Core

final class SHA256Tests: XCTestCase {
    func hex(_ s: String) -> String { var h = SHA256(); h.update(string: s); return h.finalizeHex() }

    func testKnownVectors() {
        XCTAssertEqual(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(
            hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func testStreamingEqualsOneShot() {
        let s = String(repeating: "metatrain-", count: 100)
        var h = SHA256()
        for chunk in stride(from: 0, to: s.utf8.count, by: 37) {
            let bytes = Array(s.utf8)[chunk..<min(chunk + 37, s.utf8.count)]
            Array(bytes).withUnsafeBytes { h.update($0) }
        }
        XCTAssertEqual(h.finalizeHex(), hex(s))
    }
}

/// The SHA instructions' blocks give the portable code's digest, for every length around
/// the block and padding boundaries and for a large buffer fed in odd pieces.
final class SHA256HardwareTests: XCTestCase {
    func testHardwareBlocksEqualThePortableOnes() throws {
        guard SHA256.hardware else { throw XCTSkip("this CPU has no SHA instructions") }
        var g = SeededGenerator(seed: 11)
        let data = (0..<(1 << 20) + 77).map { _ in UInt8(truncatingIfNeeded: g.next()) }
        func digest(_ hardware: Bool, _ n: Int, piece: Int) -> String {
            var h = SHA256()
            h.useHardware = hardware
            data.withUnsafeBytes { all in
                var i = 0
                while i < n {
                    let m = min(piece, n - i)
                    h.update(UnsafeRawBufferPointer(rebasing: all[i..<(i + m)]))
                    i += m
                }
            }
            return h.finalizeHex()
        }
        for n in Array(0...200) + [511, 512, 513, 4096, 65_599] {
            XCTAssertEqual(digest(true, n, piece: n + 1), digest(false, n, piece: n + 1), "\(n) bytes")
        }
        XCTAssertEqual(digest(true, data.count, piece: 1000), digest(false, data.count, piece: 4099))
        var h = SHA256()
        h.update(string: "abc")
        XCTAssertEqual(h.finalizeHex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

final class RandomTests: XCTestCase {
    func testSameKeySameSequenceDifferentKeyDifferent() {
        var a = SeededGenerator(seed: 42, [Stream.metaBatch, 7])
        var b = SeededGenerator(seed: 42, [Stream.metaBatch, 7])
        var c = SeededGenerator(seed: 42, [Stream.metaBatch, 8])
        let xa = (0..<10).map { _ in a.next() }, xb = (0..<10).map { _ in b.next() },
            xc = (0..<10).map { _ in c.next() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
    }

    func testBelowIsUniformEnough() {
        var g = SeededGenerator(seed: 1)
        var counts = [Int](repeating: 0, count: 10)
        for _ in 0..<100_000 { counts[g.below(10)] += 1 }
        for c in counts { XCTAssertEqual(Double(c), 10_000, accuracy: 500) }
    }

    func testShuffleIsAPermutation() {
        var g = SeededGenerator(seed: 3)
        var a = Array(0..<100)
        g.shuffle(&a)
        XCTAssertNotEqual(a, Array(0..<100))
        XCTAssertEqual(a.sorted(), Array(0..<100))
    }
}

final class AtomicFileTests: XCTestCase {
    func testFailedWriteLeavesNothing() throws {
        let dir = NSTemporaryDirectory() + "mt-atomic-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        let path = dir + "/out.txt"
        XCTAssertThrowsError(
            try writeAtomically(to: path) { tmp in
                _ = FileManager.default.createFile(atPath: tmp, contents: Data("half".utf8))
                throw MetatrainError("boom")
            })
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        try writeFileAtomically(path, contents: "whole")
        XCTAssertEqual(try String(contentsOfFile: path, encoding: .utf8), "whole")
    }

    /// A writer SIGKILLed mid-write leaves `.NAME.tmp-PID`; it is removed once that
    /// PID is gone, and a live writer's file is not touched.
    func testAbandonedTemporariesAreRemovedAndLiveOnesKept() throws {
        let dir = NSTemporaryDirectory() + "mt-abandoned-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let dead = pid_t(4_194_305) // above any Linux pid_max
        for name in [".iter-000004.h5.tmp-\(dead)", ".best.h5.tmp-\(getpid())", "iter-000008.h5", ".notes.tmp-x"] {
            XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/" + name, contents: Data("x".utf8)))
        }
        XCTAssertEqual(removeAbandonedTemporaries(in: dir), [".iter-000004.h5.tmp-\(dead)"])
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: dir).sorted(),
            [".best.h5.tmp-\(getpid())", ".notes.tmp-x", "iter-000008.h5"])
        XCTAssertEqual(removeAbandonedTemporaries(in: dir + "/missing"), [])
    }
}

import CLinux
import Foundation
import XCTest

@testable import Transport

/// Worker arenas and the coordinator's views of them, in one process (the
/// multi-process runs in CLITests use them between real workers and coordinators).
final class SharedMemoryTests: XCTestCase {
    func write(_ values: [Float], into m: UnsafeMutableRawBufferPointer) {
        values.withUnsafeBytes { m.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    func read(_ raw: UnsafeRawBufferPointer) -> [UInt32] {
        (0..<(raw.count / 4)).map { raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self) }
    }

    func testPayloadsKeepTheirBitsThroughTheMapping() throws {
        let arena = try SharedArena(name: "test")
        XCTAssertTrue(arena.path.hasPrefix("/proc/\(getpid())/fd/"), arena.path)
        let values: [Float] =
            [.nan, -0.0, .infinity, 1.0000001, .leastNonzeroMagnitude] + (0..<400_000).map { Float($0) * 0.25 }
        let (offset, memory) = try XCTUnwrap(arena.allocate(bytes: 4 * values.count, version: 3))
        write(values, into: memory)
        let view = try SharedView(path: arena.path, token: arena.token)
        XCTAssertEqual(read(try view.bytes(offset: offset, count: 4 * values.count)), values.map(\.bitPattern))
        // The mapping is live: what the worker writes next is what the coordinator reads.
        let (o2, m2) = try XCTUnwrap(arena.allocate(bytes: 8, version: 3))
        write([7, 8], into: m2)
        XCTAssertEqual(read(try view.bytes(offset: o2, count: 8)), [Float(7).bitPattern, Float(8).bitPattern])
    }

    func testSpaceIsRecycledOnlyForALaterVersion() throws {
        let arena = try SharedArena(name: "test")
        let a = try XCTUnwrap(arena.allocate(bytes: 100, version: 5)).offset
        let b = try XCTUnwrap(arena.allocate(bytes: 100, version: 5)).offset
        XCTAssertGreaterThanOrEqual(b, a + 100, "payloads of one version never overlap")
        XCTAssertEqual(b % 64, 0)
        XCTAssertEqual(
            try XCTUnwrap(arena.allocate(bytes: 100, version: 4)).offset, b + 128, "an older version recycles nothing")
        XCTAssertEqual(
            try XCTUnwrap(arena.allocate(bytes: 100, version: 6)).offset, a, "a later version reuses the space")
        // Fixed slots are page-aligned and do not move.
        let s0 = try XCTUnwrap(arena.slot(0, bytes: 5000)), s1 = try XCTUnwrap(arena.slot(1, bytes: 5000))
        XCTAssertEqual(s0.offset % 4096, 0)
        XCTAssertEqual(s1.offset - s0.offset, 8192)
        XCTAssertEqual(try XCTUnwrap(arena.slot(1, bytes: 5000)).offset, s1.offset)
    }

    func testAnotherFileOrABadPayloadIsRefused() throws {
        let arena = try SharedArena(name: "test")
        var wrong = arena.token; wrong[0] ^= 1
        XCTAssertThrowsError(try SharedView(path: arena.path, token: wrong)) {
            XCTAssertTrue("\($0)".contains("token"), "\($0)")
        }
        // Only another process's open file is opened, never a path a peer chose.
        let elsewhere = NSTemporaryDirectory() + "metatrain-\(getpid())-x"
        _ = FileManager.default.createFile(atPath: elsewhere, contents: Data(arena.token))
        defer { try? FileManager.default.removeItem(atPath: elsewhere) }
        for path in [elsewhere, "/proc/\(getpid())/fd/../../self/fd/3", "/proc/self/fd/3", "/proc/1/fd/"] {
            XCTAssertThrowsError(try SharedView(path: path, token: arena.token), path) {
                XCTAssertTrue("\($0)".contains("is not a shared-memory file"), "\($0)")
            }
        }

        let (offset, _) = try XCTUnwrap(arena.allocate(bytes: 64, version: 0))
        let view = try SharedView(path: arena.path, token: arena.token)
        XCTAssertNoThrow(try view.bytes(offset: offset, count: 64))
        XCTAssertThrowsError(try view.bytes(offset: 0, count: 16), "the header is not a payload")
        XCTAssertThrowsError(try view.bytes(offset: offset + 2, count: 4), "misaligned")
        XCTAssertThrowsError(try view.bytes(offset: offset, count: 1 << 30)) {
            XCTAssertTrue("\($0)".contains("outside the shared file"), "\($0)")
        }
    }

    /// The file has no name: once its owner has closed it and nobody maps it, it is gone.
    func testTheFileLivesAsLongAsAMappingAndNoLonger() throws {
        var arena: SharedArena? = try SharedArena(name: "test")
        let path = arena!.path, token = arena!.token
        let (offset, memory) = try XCTUnwrap(arena!.allocate(bytes: 8, version: 0))
        write([1, 2], into: memory)
        let view = try SharedView(path: path, token: token)
        arena = nil
        XCTAssertThrowsError(try SharedView(path: path, token: token), "the owner's descriptor is closed")
        XCTAssertEqual(
            read(try view.bytes(offset: offset, count: 8)), [Float(1).bitPattern, Float(2).bitPattern],
            "a mapping outlives its owner")
    }

    /// Only a memfd sealed against shrinking is mapped; a FIFO, a regular file
    /// or an unsealed memfd behind /proc/PID/fd is refused without blocking, and
    /// the owner itself cannot shrink its file under a peer's mapping.
    func testOnlySealedMemfdsAreMappedAndNeverShrink() throws {
        let fifo = NSTemporaryDirectory() + "metatrain-fifo-\(getpid())"
        unlink(fifo)
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        defer { unlink(fifo) }
        let fifoFD = open(fifo, O_RDWR | O_NONBLOCK) // held open, as a stranger's process would
        defer { close(fifoFD) }
        let regular = NSTemporaryDirectory() + "metatrain-regular-\(getpid())"
        _ = FileManager.default.createFile(atPath: regular, contents: Data(repeating: 1, count: 8192))
        defer { unlink(regular) }
        let regularFD = open(regular, O_RDONLY)
        defer { close(regularFD) }
        let plainMemfd = metatrain_memfd("unsealed") // sealing allowed, never sealed
        defer { close(plainMemfd) }
        XCTAssertEqual(ftruncate(plainMemfd, 8192), 0)
        let token = [UInt8](repeating: 1, count: 16)
        for fd in [fifoFD, regularFD, plainMemfd] {
            let start = Date()
            XCTAssertThrowsError(try SharedView(path: "/proc/\(getpid())/fd/\(fd)", token: token)) {
                XCTAssertTrue("\($0)".contains("not a shared-memory file (a memfd sealed against shrinking)"), "\($0)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(start), 1, "opening never blocks")
        }
        let arena = try SharedArena(name: "test")
        XCTAssertNotNil(arena.allocate(bytes: 1 << 20, version: 0))
        let fd = open(arena.path, O_RDWR)
        defer { close(fd) }
        XCTAssertEqual(ftruncate(fd, 4096), -1, "the file cannot shrink")
        XCTAssertNoThrow(try SharedView(path: arena.path, token: arena.token))
    }
}

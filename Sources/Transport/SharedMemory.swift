import CLinux

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Shared memory between a worker and a coordinator on the same machine, so a
/// 1.5 MB gradient or weight vector is written once into memory both map
/// instead of being copied through a socket by three threads. ZeroMQ still
/// carries every message; only payloads move this way. Like the sockets, this
/// moves bytes and knows nothing of what they mean.
///
/// Each side owns a `SharedArena`: an anonymous memory file (memfd) whose first
/// page holds a random token, followed by payloads. Its owner offers the path
/// /proc/PID/fd/FD and the token in a message; a peer that can open the path
/// and read the same token is on the same machine and maps it as a
/// `SharedView`. The file has no name anywhere, so nothing is left behind
/// however a process ends. When a payload may be overwritten is the caller's
/// rule (by weights version, see docs/PROTOCOL.md).

/// Bytes before the first payload: the token, padded to a page.
let sharedHeaderBytes = 4096
/// Address space each side reserves for an arena (the file grows into it).
let sharedReserveBytes = 1 << 32

/// Why shared memory could not be set up or read.
public struct SharedMemoryError: Error, CustomStringConvertible {
    public let description: String
    public init(_ what: String) { description = what }
    init(errno what: String) { description = "\(what): \(String(cString: strerror(errno)))" }
}

/// The owner's side: a growing file of payloads, mapped read-write.
public final class SharedArena {
    /// Where another process of this user on this machine opens the file.
    public let path: String
    /// 16 random bytes at the start of the file.
    public let token: [UInt8]
    let fd: Int32
    let base: UnsafeMutableRawPointer
    private var fileSize: Int
    private var top = sharedHeaderBytes
    private var version = Int.min

    /// Creates the file; `name` shows in /proc/PID/maps.
    public init(name: String) throws {
        var rng = SystemRandomNumberGenerator()
        token = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        fd = metatrain_memfd(name)
        guard fd >= 0 else { throw SharedMemoryError(errno: "cannot create a shared-memory file") }
        path = "/proc/\(getpid())/fd/\(fd)"
        fileSize = sharedHeaderBytes
        guard posix_fallocate(fd, 0, off_t(fileSize)) == 0 else {
            close(fd)
            throw SharedMemoryError("cannot allocate a shared-memory file")
        }
        // It may grow but never shrink: a peer's mapping never loses a page it was told of.
        guard metatrain_seal_shrink(fd) == 0 else {
            let e = SharedMemoryError(errno: "cannot seal a shared-memory file")
            close(fd)
            throw e
        }
        let p = mmap(nil, sharedReserveBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = SharedMemoryError(errno: "cannot map a shared-memory file")
            close(fd)
            throw e
        }
        base = p
        token.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: 16) }
    }

    deinit {
        munmap(base, sharedReserveBytes)
        close(fd)
    }

    /// Space for `bytes` bytes of a payload computed on weights `version`,
    /// as (offset in the file, memory to fill). Asking for a later version
    /// recycles every earlier payload. Nil when the reserve is exhausted or the
    /// file cannot grow: send the payload inline then.
    public func allocate(bytes: Int, version v: Int) -> (offset: Int, memory: UnsafeMutableRawBufferPointer)? {
        if v > version { version = v; top = sharedHeaderBytes }
        let offset = top, end = (top + bytes + 63) & ~63
        guard grow(to: end) else { return nil }
        top = end
        return (offset, UnsafeMutableRawBufferPointer(start: base + offset, count: bytes))
    }

    /// Fixed slot `index` of `bytes` bytes each (page-aligned), for payloads
    /// whose owner recycles them by its own rule. Nil if the file cannot grow.
    public func slot(_ index: Int, bytes: Int) -> (offset: Int, memory: UnsafeMutableRawBufferPointer)? {
        let stride = (bytes + 4095) & ~4095
        let offset = sharedHeaderBytes + index * stride
        guard grow(to: offset + stride) else { return nil }
        return (offset, UnsafeMutableRawBufferPointer(start: base + offset, count: bytes))
    }

    /// Makes the file at least `end` bytes long, in doubling steps, allocating
    /// the pages now: memory that runs out must fail here, not raise SIGBUS on a
    /// write later.
    private func grow(to end: Int) -> Bool {
        guard end <= sharedReserveBytes else { return false }
        guard end > fileSize else { return true }
        let size = min(sharedReserveBytes, max(end, 2 * fileSize))
        guard posix_fallocate(fd, 0, off_t(size)) == 0 else { return false }
        fileSize = size
        return true
    }
}

/// The peer's side: an arena mapped read-only.
public final class SharedView: @unchecked Sendable {
    let fd: Int32
    let base: UnsafeRawPointer

    /// Opens and maps the file at `path` if it holds `token` (so its owner is on this machine).
    public init(path: String, token: [UInt8]) throws {
        guard token.count == 16 else { throw SharedMemoryError("token of \(token.count) bytes, expected 16") }
        // The path comes from a peer: only another process's open file is acceptable.
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "proc", parts[3] == "fd",
            [parts[2], parts[4]].allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) })
        else {
            throw SharedMemoryError("\(path) is not a shared-memory file (/proc/PID/fd/FD)")
        }
        // Never blocks (a FIFO), and only a memfd its creator sealed against shrinking will do.
        fd = open(path, metatrain_open_peer_flags())
        guard fd >= 0 else { throw SharedMemoryError(errno: "cannot open \(path)") }
        guard metatrain_is_sealed_memfd(fd) != 0 else {
            close(fd)
            throw SharedMemoryError("\(path) is not a shared-memory file (a memfd sealed against shrinking)")
        }
        var head = [UInt8](repeating: 0, count: 16)
        guard pread(fd, &head, 16, 0) == 16, head == token else {
            close(fd)
            throw SharedMemoryError("\(path) does not hold the offered token (another machine's file?)")
        }
        let p = mmap(nil, sharedReserveBytes, PROT_READ, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = SharedMemoryError(errno: "cannot map \(path)")
            close(fd)
            throw e
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), sharedReserveBytes)
        close(fd)
    }

    /// The payload at `offset`, checked against the file's current size.
    public func bytes(offset: Int, count: Int) throws -> UnsafeRawBufferPointer {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SharedMemoryError(errno: "fstat") }
        guard offset >= sharedHeaderBytes, count >= 0, offset % 4 == 0, count <= sharedReserveBytes,
            offset <= min(Int(st.st_size), sharedReserveBytes) - count
        else {
            throw SharedMemoryError(
                "payload of \(count) bytes at offset \(offset) lies outside the shared file (\(st.st_size) bytes)")
        }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }
}

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Shared memory between a worker and a coordinator on the same machine, so a
/// 1.5 MB gradient is written once into memory both map instead of being
/// copied through a socket by three threads. ZeroMQ still carries every
/// message; only the payload moves this way. Like the sockets, this moves
/// bytes and knows nothing of what they mean.
///
/// The worker owns a `SharedArena`: a file in /dev/shm whose first page holds
/// a random token, followed by payloads. It offers the file's path and token in
/// its hello; a coordinator that can open the path and read the same token is
/// on the same machine, maps the file as a `SharedView` and unlinks the path,
/// so the file disappears when both processes have closed it (even after a
/// SIGKILL). Payload lifetime is by weights version: all payloads written for
/// version v stay untouched until the arena is asked for space for a later
/// version, which the worker only does after the coordinator has finished
/// reading version v's results (it reduces them before it publishes v + 1).

/// Bytes before the first payload: the token, padded to a page.
let sharedHeaderBytes = 4096
/// Where arenas live: a tmpfs on Linux.
let sharedDirectory = "/dev/shm"
/// Address space each side reserves for an arena (the file grows into it).
let sharedReserveBytes = 1 << 32

/// Why shared memory could not be set up or read.
public struct SharedMemoryError: Error, CustomStringConvertible {
    public let description: String
    public init(_ what: String) { description = what }
    init(errno what: String) { description = "\(what): \(String(cString: strerror(errno)))" }
}

/// The worker's side: a growing file of payloads, mapped read-write.
public final class SharedArena {
    /// The file's path until the coordinator unlinks it.
    public let path: String
    /// 16 random bytes at the start of the file.
    public let token: [UInt8]
    let fd: Int32
    let base: UnsafeMutableRawPointer
    private var fileSize: Int
    private var top = sharedHeaderBytes
    private var version = Int.min

    /// Creates the file in /dev/shm, named after this process.
    public init() throws {
        var rng = SystemRandomNumberGenerator()
        token = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let suffix = token.prefix(6).map { String($0, radix: 16) }.joined()
        path = "\(sharedDirectory)/metatrain-\(getpid())-\(suffix)"
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SharedMemoryError(errno: "cannot create \(path)") }
        fileSize = sharedHeaderBytes
        guard ftruncate(fd, off_t(fileSize)) == 0 else {
            let e = SharedMemoryError(errno: "cannot size \(path)")
            close(fd); unlink(path)
            throw e
        }
        let p = mmap(nil, sharedReserveBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = SharedMemoryError(errno: "cannot map \(path)")
            close(fd); unlink(path)
            throw e
        }
        base = p
        token.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: 16) }
    }

    deinit {
        munmap(base, sharedReserveBytes)
        close(fd)
        unlink(path)   // usually gone already (the coordinator unlinks it)
    }

    /// Space for `bytes` bytes of a payload computed on weights `version`,
    /// as (offset in the file, memory to fill). Asking for a later version
    /// recycles every earlier payload. Nil when the reserve is exhausted or the
    /// file cannot grow: send the payload inline then.
    public func allocate(bytes: Int, version v: Int) -> (offset: Int, memory: UnsafeMutableRawBufferPointer)? {
        if v > version { version = v; top = sharedHeaderBytes }
        let offset = top, end = (top + bytes + 63) & ~63
        guard end <= sharedReserveBytes else { return nil }
        if end > fileSize {
            // Grow in doubling steps, and allocate the pages now: a tmpfs that is full
            // (Docker's /dev/shm is 64 MB) must fail here, not raise SIGBUS on a write later.
            let size = min(sharedReserveBytes, max(end, 2 * fileSize))
            guard posix_fallocate(fd, 0, off_t(size)) == 0 else { return nil }
            fileSize = size
        }
        top = end
        return (offset, UnsafeMutableRawBufferPointer(start: base + offset, count: bytes))
    }
}

/// The coordinator's side: a worker's arena, mapped read-only.
public final class SharedView: @unchecked Sendable {
    let fd: Int32
    let base: UnsafeRawPointer

    /// Opens and maps the worker's file if it holds `token` (so the worker is on
    /// this machine), then unlinks its path.
    public init(path: String, token: [UInt8]) throws {
        guard token.count == 16 else { throw SharedMemoryError("token of \(token.count) bytes, expected 16") }
        // The path comes from a peer and is unlinked below: only a worker arena's name is acceptable.
        guard path.hasPrefix(sharedDirectory + "/metatrain-"), !path.dropFirst(sharedDirectory.count + 1).contains("/") else {
            throw SharedMemoryError("\(path) is not a worker arena in \(sharedDirectory)")
        }
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw SharedMemoryError(errno: "cannot open \(path)") }
        var head = [UInt8](repeating: 0, count: 16)
        guard pread(fd, &head, 16, 0) == 16, head == token else {
            close(fd)
            throw SharedMemoryError("\(path) does not hold the worker's token (another machine's file?)")
        }
        let p = mmap(nil, sharedReserveBytes, PROT_READ, MAP_SHARED, fd, 0)
        guard let p, p != MAP_FAILED else {
            let e = SharedMemoryError(errno: "cannot map \(path)")
            close(fd)
            throw e
        }
        base = UnsafeRawPointer(p)
        unlink(path)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), sharedReserveBytes)
        close(fd)
    }

    /// The payload at `offset`, checked against the file's current size.
    public func bytes(offset: Int, count: Int) throws -> UnsafeRawBufferPointer {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SharedMemoryError(errno: "fstat") }
        guard offset >= sharedHeaderBytes, count >= 0, offset % 4 == 0, offset <= Int(st.st_size) - count else {
            throw SharedMemoryError("payload of \(count) bytes at offset \(offset) lies outside the shared file (\(st.st_size) bytes)")
        }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }
}

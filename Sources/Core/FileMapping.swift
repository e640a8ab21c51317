import Foundation

/// A file mapped read-only into memory (shared: every process that maps it reads
/// the same pages of the page cache), unmapped when the last reference goes. An
/// empty file maps to no bytes. The file MUST NOT be changed in place while
/// mapped (metatrain replaces files by renaming, which leaves a mapping of the
/// old one intact).
public final class FileMapping: @unchecked Sendable {
    public let path: String
    public let bytes: UnsafeRawBufferPointer
    private var released = 0

    /// Why a file could not be mapped: `reason` is the system's word for it.
    public struct Failure: Error, CustomStringConvertible {
        public let path: String, what: String, reason: String
        public var description: String { "\(path): cannot \(what) (\(reason))" }
    }

    /// `sequential`: the file will be read once, front to back (the kernel reads ahead).
    public init(_ path: String, sequential: Bool = false) throws {
        func failure(_ what: String) -> Failure {
            Failure(path: path, what: what, reason: String(cString: strerror(errno)))
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure("open") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw failure("read its size") }
        let n = Int(st.st_size)
        self.path = path
        guard n > 0 else {
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            return
        }
        guard let p = mmap(nil, n, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { throw failure("map") }
        if sequential { _ = madvise(p, n, MADV_SEQUENTIAL) }
        bytes = UnsafeRawBufferPointer(start: p, count: n)
    }

    /// A reader that never goes back before `offset` lets go of the whole pages there, in
    /// steps of 16 MB: they leave this process's resident set and stay in the page cache.
    public func release(before offset: Int) {
        guard let base = bytes.baseAddress else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let end = min(offset, bytes.count) / page * page
        guard end - released >= 16 << 20 else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base) + released, end - released, MADV_DONTNEED)
        released = end
    }

    /// For a reader that starts again from the front: `release(before:)` counts from 0 again.
    public func rewind() { released = 0 }

    deinit {
        if let base = bytes.baseAddress { munmap(UnsafeMutableRawPointer(mutating: base), bytes.count) }
    }
}

import Foundation

/// Writes a file under a temporary name in the same directory, flushes it to
/// the disk (fsync), renames it into place and flushes the directory, so that
/// readers, and the disk after a crash or power loss, hold either the old file
/// or the whole new one, never a half-written one. If anything fails (a full
/// disk included) the temporary file is removed and the old file stays.
public func writeAtomically<R>(to path: String, _ body: (_ temporaryPath: String) throws -> R) throws -> R {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    if !FileManager.default.fileExists(atPath: dir) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
    do {
        let r = try body(tmp)
        try sync(tmp, what: path)
        if rename(tmp, path) != 0 {
            throw MetatrainError(
                "\(path): cannot rename temporary file into place (\(String(cString: strerror(errno))))")
        }
        try sync(dir, what: path)
        return r
    } catch {
        unlink(tmp)
        // Say so when the disk is full: HDF5's own messages do not.
        if let full = fullDiskNote(dir) {
            throw MetatrainError("\(error); \(full), and \(url.lastPathComponent) was left as it was")
        }
        throw error
    }
}

/// fsync of a file or directory.
func sync(_ p: String, what: String) throws {
    let fd = open(p, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        throw MetatrainError("\(what): cannot open \(p) to flush it (\(String(cString: strerror(errno))))")
    }
    defer { close(fd) }
    guard fsync(fd) == 0 else {
        throw MetatrainError("\(what): cannot flush \(p) to the disk (\(String(cString: strerror(errno))))")
    }
}

/// Removes the temporary files `writeAtomically` left in `dir` when its process
/// died mid-write (`.NAME.tmp-PID` whose PID no longer runs), and returns their
/// names. A live writer's temporary file is left alone.
@discardableResult
public func removeAbandonedTemporaries(in dir: String) -> [String] {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
    return names.filter { name in
        guard name.hasPrefix("."), let r = name.range(of: ".tmp-", options: .backwards),
            let pid = pid_t(name[r.upperBound...]), pid > 0
        else { return false }
        if kill(pid, 0) == 0 || errno != ESRCH { return false }
        return unlink(dir + "/" + name) == 0
    }.sorted()
}

/// "the file system holding DIR is full (N KB free)" when less than 1 MB is free there, else nil.
public func fullDiskNote(_ dir: String) -> String? {
    var st = statvfs()
    guard statvfs(dir, &st) == 0 else { return nil }
    let free = UInt64(st.f_bavail) * UInt64(st.f_frsize)
    return free < 1 << 20 ? "the file system holding \(dir) is full (\(free / 1024) KB free)" : nil
}

/// Writes all of `bytes` to `fd`, again after a short or interrupted write (one write(2) moves
/// at most about 2 GB); nil, or the errno of the write that failed.
public func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
    var done = 0
    while done < bytes.count {
        let n = write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return n == 0 ? EIO : errno }
        done += n
    }
    return nil
}

/// Writes bytes atomically (temporary name, then rename).
public func writeFileAtomically(_ path: String, contents: String) throws {
    try writeAtomically(to: path) { tmp in
        do { try Data(contents.utf8).write(to: URL(fileURLWithPath: tmp)) } catch {
            throw MetatrainError("\(path): cannot write file (\(error.localizedDescription))")
        }
    }
}

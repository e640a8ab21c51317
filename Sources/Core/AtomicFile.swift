import Foundation

/// Writes a file under a temporary name in the same directory and renames it
/// into place, so readers see either the old file or the whole new one, never a
/// half-written one. If `body` throws, the temporary file is removed.
public func writeAtomically<R>(to path: String, _ body: (_ temporaryPath: String) throws -> R) throws -> R {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    if !FileManager.default.fileExists(atPath: dir) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    let tmp = dir + "/." + url.lastPathComponent + ".tmp-\(getpid())"
    do {
        let r = try body(tmp)
        if rename(tmp, path) != 0 {
            throw MetatrainError("\(path): cannot rename temporary file into place (errno \(errno))")
        }
        return r
    } catch {
        unlink(tmp)
        throw error
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
              let pid = pid_t(name[r.upperBound...]), pid > 0 else { return false }
        if kill(pid, 0) == 0 || errno != ESRCH { return false }
        return unlink(dir + "/" + name) == 0
    }.sorted()
}

/// Writes bytes atomically (temporary name, then rename).
public func writeFileAtomically(_ path: String, contents: String) throws {
    try writeAtomically(to: path) { tmp in
        guard FileManager.default.createFile(atPath: tmp, contents: Data(contents.utf8)) else {
            throw MetatrainError("\(path): cannot write file")
        }
    }
}

import Core
import Datasets
import ExperimentConfig
import Foundation
import Storage

/// A run directory (docs/FORMATS.md, "Run directory"): resolved config, metrics.jsonl, checkpoints and a log.
public final class RunDirectory {
    public let path: String
    private var logHandle: FileHandle?
    private let logName: String

    public init(_ path: String, logName: String) throws {
        self.path = path; self.logName = logName
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw MetatrainError("\(path): cannot create run directory")
        }
        // A process killed while writing a checkpoint, best.h5 or config.yaml left its temporary file.
        for dir in [path, file("checkpoints")] {
            for name in removeAbandonedTemporaries(in: dir) {
                log("removed \(dir)/\(name): a writer killed mid-write left it")
            }
        }
    }

    public func file(_ name: String) -> String { path + "/" + name }

    private var lockFD: Int32 = -1

    /// Takes the run directory for this process (an exclusive lock on
    /// RUN/.lock, held until the process ends, however it ends); a second
    /// coordinator on the same directory is refused, naming the holder.
    public func lock() throws {
        guard lockFD < 0 else { return }
        lockFD = try RunDirectory.takeLock(path, ".lock") { holder in
            "\(path) is in use by another run (\(holder)); stop it or use another --run-dir"
        }
    }

    /// Who holds the run directory at `path` now ("process PID on HOST"), or nil when no
    /// live process does (its lock is free, or it has none). Creates nothing.
    public static func holder(ofRunDirectory path: String, lockFile: String = ".lock") -> String? {
        let fd = open(path + "/" + lockFile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return nil
        }
        return holderText(fd)
    }

    /// Takes `path/lockFile` for this process until it ends (a study task holds its run
    /// directory's `.task.lock` from start to ranks.csv, beyond the run's own `.lock`);
    /// throws naming the holder when a live process has it.
    public static func hold(_ path: String, lockFile: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        // Kept open (and locked) until the process exits, however it exits.
        _ = try takeLock(path, lockFile) { holder in "\(path) is in use by another task (\(holder))" }
    }

    /// Locks `dir/name` exclusively and writes "process PID on HOST" into it; returns the open
    /// descriptor (the lock lives as long as it does). A lock held elsewhere throws `busy(holder)`.
    static func takeLock(_ dir: String, _ name: String, busy: (String) -> String) throws -> Int32 {
        let p = dir + "/" + name
        let fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw MetatrainError("\(p): cannot open the lock (\(String(cString: strerror(errno))))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = holderText(fd)
            close(fd)
            throw MetatrainError(busy(holder))
        }
        let me = "process \(getpid()) on \(ProcessInfo.processInfo.hostName)\n"
        _ = ftruncate(fd, 0)
        _ = me.withCString { pwrite(fd, $0, strlen($0), 0) }
        return fd
    }

    /// What a lock file says of its holder ("holder unknown" when it says nothing).
    static func holderText(_ fd: Int32) -> String {
        var buf = [UInt8](repeating: 0, count: 256)
        let n = pread(fd, &buf, buf.count, 0)
        let text = String(decoding: buf.prefix(max(0, n)), as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines)
        return text.isEmpty ? "holder unknown" : text
    }

    /// Records who started this run, how and on what (run.json, atomically): the
    /// command line, metatrain's version, the dataset's path and fingerprint, the
    /// host and the start time. A later start (a resume) is appended under "resumes".
    public func recordStart(datasetPath: String, fingerprint: String, resumedFrom: String? = nil, now: Date = Date())
        throws
    {
        let started = ISO8601DateFormatter().string(from: now)
        let this: [(String, JSON)] = [
            ("command", .array(CommandLine.arguments.map { .string($0) })),
            ("metatrain_version", .string(metatrainVersion)),
            (
                "dataset",
                .object([
                    ("path", .string(URL(fileURLWithPath: datasetPath).standardizedFileURL.path)),
                    ("fingerprint", .string(fingerprint))
                ])
            ),
            ("host", .string(ProcessInfo.processInfo.hostName)), ("pid", .int(Int(getpid()))),
            ("started", .string(started))
        ]
        let p = file("run.json")
        var record: [(String, JSON)]
        if let text = try? String(contentsOfFile: p, encoding: .utf8), case .object(var first)? = try? JSON.parse(text)
        {
            var resumes: [JSON] = []
            if case .array(let a)? = first.first(where: { $0.0 == "resumes" })?.1 { resumes = a }
            first.removeAll { $0.0 == "resumes" }
            resumes.append(.object(this + (resumedFrom.map { [("resumed_from", .string($0))] } ?? [])))
            record = first + [("resumes", .array(resumes))]
        } else {
            record = this
        }
        try writeFileAtomically(p, contents: JSON.object(record).pretty)
    }

    /// Drops metrics.jsonl lines whose `key` (iteration or epoch) is past `t`:
    /// lines written before a crash that a resumed run computes again.
    public func truncateMetrics(key: String, after t: Int) throws {
        let p = file("metrics.jsonl")
        guard let text = try? String(contentsOfFile: p, encoding: .utf8) else { return }
        let keep = text.split(separator: "\n").filter { line in
            guard let j = try? JSON.parse(String(line)), let it = j[key]?.double else { return false }
            return Int(it) <= t
        }
        try writeFileAtomically(p, contents: keep.map { $0 + "\n" }.joined())
    }

    /// Writes config.yaml (atomically).
    public func saveConfig(_ c: Config) throws {
        try writeFileAtomically(
            file("config.yaml"), contents: "# resolved configuration written by metatrain\n" + c.yaml)
    }

    /// The run's TensorBoard events (RUN/tb), made on the first metrics line.
    private var tensorBoard: TensorBoardEvents?
    private var tensorBoardFailed = false

    /// Appends one JSON object line to metrics.jsonl (the line is written whole, then flushed),
    /// and its numbers as TensorBoard scalars at its `iteration` (or `epoch`).
    public func appendMetrics(_ j: JSON) throws {
        defer { tensorBoardScalars(j) }
        let p = file("metrics.jsonl")
        if !FileManager.default.fileExists(atPath: p) { _ = FileManager.default.createFile(atPath: p, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: p) else { throw MetatrainError("\(p): cannot open for appending") }
        defer { try? h.close() }
        h.seekToEndOfFile()
        do { try h.write(contentsOf: Data((j.compact + "\n").utf8)) } catch {
            throw MetatrainError("\(p): cannot append a line (\(error.localizedDescription))")
        }
    }

    /// A metrics line's numbers as scalars in RUN/tb (tags are the metrics.jsonl keys). A failure
    /// there is logged once and costs the run nothing: metrics.jsonl is the record.
    func tensorBoardScalars(_ j: JSON) {
        guard !tensorBoardFailed, case .object(let kv) = j else { return }
        func number(_ v: JSON) -> Double? {
            switch v {
            case .int(let i): return Double(i);
            case .number(let d): return d;
            default: return nil
            }
        }
        guard let step = kv.first(where: { $0.0 == "iteration" || $0.0 == "epoch" }).flatMap({ number($0.1) }) else {
            return
        }
        let wall = kv.first { $0.0 == "time" }.flatMap { number($0.1) } ?? Date().timeIntervalSince1970
        let values = kv.filter { !["iteration", "epoch", "time"].contains($0.0) }.compactMap { k, v in
            number(v).map { (tag: k, value: $0) }
        }
        do {
            if tensorBoard == nil { tensorBoard = try TensorBoardEvents(directory: file("tb")) }
            try tensorBoard!.scalars(values, step: Int(step), wallTime: wall)
        } catch {
            tensorBoardFailed = true
            log("TensorBoard events are off for this run: \(error)")
        }
    }

    /// Appends a line to the run's log file.
    public func log(_ line: String) {
        if logHandle == nil {
            let p = file(logName)
            if !FileManager.default.fileExists(atPath: p) {
                _ = FileManager.default.createFile(atPath: p, contents: nil)
            }
            logHandle = FileHandle(forWritingAtPath: p)
            logHandle?.seekToEndOfFile()
        }
        // A full disk loses log lines, not the run.
        try? logHandle?.write(contentsOf: Data((timestamp() + " " + line + "\n").utf8))
    }

    private func timestamp() -> String { formatTime(Int64(Date().timeIntervalSince1970)) }
    deinit {
        try? logHandle?.close()
        if lockFD >= 0 { close(lockFD) }
    }
}

import Configuration
import Core
import Data
import Foundation

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
            for name in removeAbandonedTemporaries(in: dir) { log("removed \(dir)/\(name): a writer killed mid-write left it") }
        }
    }

    public func file(_ name: String) -> String { path + "/" + name }

    /// Writes config.yaml (atomically).
    public func saveConfig(_ c: Config) throws {
        try writeFileAtomically(file("config.yaml"), contents: "# resolved configuration written by metatrain\n" + c.yaml)
    }

    /// Appends one JSON object line to metrics.jsonl (the line is written whole, then flushed).
    public func appendMetrics(_ j: JSON) throws {
        let p = file("metrics.jsonl")
        if !FileManager.default.fileExists(atPath: p) { _ = FileManager.default.createFile(atPath: p, contents: nil) }
        guard let h = FileHandle(forWritingAtPath: p) else { throw MetatrainError("\(p): cannot open for appending") }
        defer { try? h.close() }
        h.seekToEndOfFile()
        h.write(Data((j.compact + "\n").utf8))
    }

    /// Appends a line to the run's log file.
    public func log(_ line: String) {
        if logHandle == nil {
            let p = file(logName)
            if !FileManager.default.fileExists(atPath: p) { _ = FileManager.default.createFile(atPath: p, contents: nil) }
            logHandle = FileHandle(forWritingAtPath: p)
            logHandle?.seekToEndOfFile()
        }
        logHandle?.write(Data((timestamp() + " " + line + "\n").utf8))
    }

    private func timestamp() -> String { formatTime(Int64(Date().timeIntervalSince1970)) }
    deinit { try? logHandle?.close() }
}

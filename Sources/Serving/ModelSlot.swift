import Core
import Foundation
import Recommendation

/// Where the served model comes from: one checkpoint file, or a run directory's best.h5
/// (else final.h5), followed while training writes newer ones.
public enum ModelSource: Sendable {
    case checkpoint(String)
    case runDirectory(String)

    /// The file to serve now (nil: a run directory with neither file yet).
    public func currentPath() -> String? {
        switch self {
        case .checkpoint(let p): return p
        case .runDirectory(let d):
            for name in ["best.h5", "final.h5"] where FileManager.default.fileExists(atPath: d + "/" + name) {
                return d + "/" + name
            }
            return nil
        }
    }

    public var description: String {
        switch self {
        case .checkpoint(let p): return p
        case .runDirectory(let d): return "\(d)/best.h5 (else final.h5)"
        }
    }
}

/// A file's identity on disk: a new file renamed into place has a new inode or time.
struct FileStamp: Equatable, Sendable {
    var path: String, inode: UInt64, size: Int64, modified: Int64

    init?(_ path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        self.path = path; inode = UInt64(st.st_ino); size = Int64(st.st_size)
        modified = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
    }
}

/// The model being served. A request takes `current` once and finishes on it, so a swap never
/// changes a request's model halfway; the swap itself is one assignment under a lock.
public final class ModelSlot: @unchecked Sendable {
    private let lock = NSLock()
    private var model: Recommender?
    private var stamp: FileStamp?
    private var failedStamp: FileStamp?
    private var problem: String?
    public let source: ModelSource
    public let dataPath: String?
    /// Called after each swap (metrics, logs).
    let onSwap: @Sendable (Recommender) -> Void
    let log: @Sendable (String) -> Void

    init(
        source: ModelSource, dataPath: String?, onSwap: @escaping @Sendable (Recommender) -> Void,
        log: @escaping @Sendable (String) -> Void
    ) {
        self.source = source; self.dataPath = dataPath; self.onSwap = onSwap; self.log = log
    }

    public var current: Recommender? { lock.withLock { model } }
    /// Why no model serves, or why the newest file was not taken.
    public var lastProblem: String? { lock.withLock { problem } }

    /// Loads the source's file if it is new (a new path, inode, size or time) and swaps it
    /// in when it reads back whole; a file that does not is logged once and the old model kept.
    /// Returns whether a new model now serves.
    @discardableResult
    public func refresh() -> Bool {
        guard let path = source.currentPath(), let seen = FileStamp(path) else {
            lock.withLock { if model == nil { problem = "no model yet: \(source.description) does not exist" } }
            return false
        }
        let (same, failed) = lock.withLock { (stamp == seen, failedStamp == seen) }
        if same || failed { return false }
        do {
            let next = try Recommender(checkpoint: path, data: dataPath)
            // The file may have been replaced while it was read: take it only if it is still the one read.
            guard FileStamp(path) == seen else { return false }
            let old = lock.withLock { () -> Recommender? in
                let old = model
                model = next; stamp = seen; failedStamp = nil; problem = nil
                return old
            }
            onSwap(next)
            log(
                old == nil
                    ? "serving \(path) (iteration \(next.checkpoint.iteration), sha256 \(next.sha256.prefix(12))…)"
                    : "reloaded \(path): iteration \(next.checkpoint.iteration), sha256 \(next.sha256.prefix(12))… (was \(old!.sha256.prefix(12))…)"
            )
            return true
        } catch {
            let message = (error as? MetatrainError)?.message ?? "\(error)"
            let keeping = lock.withLock { () -> String in
                failedStamp = seen
                problem = "\(path) was not loaded: \(message)"
                return model.map { "keeping \($0.path) (sha256 \($0.sha256.prefix(12))…)" } ?? "no model serves"
            }
            log("\(path) was not loaded: \(message); \(keeping)")
            return false
        }
    }
}

import Core
import ExperimentConfig
import Foundation
import GRU4Rec
import Storage

// Checkpoints and resume: what a checkpoint holds, where periodic ones go, which
// one `--resume` continues from, and which configuration changes it accepts.
extension MetaTrainer {
    /// The newest periodic checkpoint that reads back whole, each one skipped
    /// logged and printed; nil when there is none at all. Checkpoints that are
    /// all damaged are an error, never a fresh start.
    static func resumePoint(in run: RunDirectory, fingerprint: String) throws -> (path: String, checkpoint: Checkpoint)?
    {
        let all = try periodicCheckpoints(in: run)
        for path in all.reversed() {
            do {
                return (path, try CheckpointFile.read(path, expectedFingerprint: fingerprint))
            } catch {
                run.log("skipped \(path) for --resume: \(error)")
                FileHandle.standardError.write(Data("warning: skipped \(path) for --resume: \(error)\n".utf8))
            }
        }
        if !all.isEmpty {
            throw MetatrainError(
                "\(run.path): no checkpoint in checkpoints/ reads back whole (each is named above); nothing to resume from"
            )
        }
        return nil
    }

    /// Refuses a checkpoint whose configuration differs in a key that may not
    /// change on resume, or whose model sizes are not `dims`.
    static func checkResumable(_ ck: Checkpoint, path: String, config: Config, dims: ModelDims) throws {
        let conflicts = try resumeConflicts(checkpoint: ck.configJSON, run: config.json)
        guard conflicts.isEmpty else {
            throw MetatrainError(
                "\(path): cannot resume with another " + conflicts.joined(separator: ", ")
                    + "; on resume only " + Config.resumableKeys.joined(separator: ", ") + " may change")
        }
        guard ck.dims == dims, ck.adamM != nil, ck.adamV != nil else {
            throw MetatrainError("\(path): not a resumable meta checkpoint for these model sizes")
        }
    }

    func checkpoint() -> Checkpoint {
        var c = Checkpoint(
            dims: dims, params: theta, adamM: adam.m, adamV: adam.v, metaSGDAlpha: alpha,
            history: (MetaTrainer.iterationKeys + MetaTrainer.evalKeys).map { ($0, history[$0] ?? []) },
            iteration: iteration, adamStep: adam.step, seed: config.seed, configJSON: config.json,
            datasetFingerprint: dataset.fingerprint, kind: .meta, algorithm: config.maml.algorithm.rawValue)
        c.alphaAdamM = adamAlpha?.m; c.alphaAdamV = adamAlpha?.v
        c.carryUse(of: dataset, config: config)
        return c
    }

    /// checkpoints/iter-NNNNNN.h5 (atomic), keeping the newest `checkpoint.keep`.
    public func writePeriodicCheckpoint() throws {
        let dir = run.file("checkpoints")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try CheckpointFile.write(checkpoint(), to: dir + "/" + String(format: "iter-%06d.h5", iteration))
        let all = try MetaTrainer.periodicCheckpoints(in: run)
        for old in all.dropLast(config.checkpoint.keep) { try? FileManager.default.removeItem(atPath: old) }
    }

    public func writeFinal() throws { try CheckpointFile.write(checkpoint(), to: run.file("final.h5")) }

    /// The keys whose values differ between a checkpoint's configuration and a
    /// resumed run's, other than `Config.resumableKeys`, each as "KEY (checkpoint: A, now: B)".
    public static func resumeConflicts(checkpoint: String, run: String) throws -> [String] {
        func flat(_ j: JSON, _ prefix: String, _ out: inout [String: String]) {
            if case .object(let kv) = j {
                for (k, v) in kv { flat(v, prefix.isEmpty ? k : prefix + "." + k, &out) }
            } else {
                out[prefix] = j.compact
            }
        }
        var a: [String: String] = [:], b: [String: String] = [:]
        flat(try JSON.parse(checkpoint), "", &a)
        flat(try JSON.parse(run), "", &b)
        return Set(a.keys).union(b.keys).sorted().filter { key in
            a[key] != b[key] && !Config.mayChangeOnResume(key)
        }.map { "\($0) (checkpoint: \(a[$0] ?? "none"), now: \(b[$0] ?? "none"))" }
    }

    static func periodicCheckpoints(in run: RunDirectory) throws -> [String] {
        periodicCheckpoints(inRunDirectory: run.path)
    }

    /// The whole periodic checkpoints (no temporary files) of the run directory at `path`, oldest first,
    /// without creating anything (the directory may not exist).
    public static func periodicCheckpoints(inRunDirectory path: String) -> [String] {
        let dir = path + "/checkpoints"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.hasPrefix("iter-") && $0.hasSuffix(".h5") }.sorted().map { dir + "/" + $0 }
    }

    /// One thing a run directory holds that a fresh start would replace.
    public struct RunItem: CustomStringConvertible, Sendable {
        /// The file or directory's name in the run directory.
        public let name: String
        public let description: String
    }

    /// What the run directory at `path` holds of a run: config, metrics, run record,
    /// checkpoints, best and final weights, TensorBoard events (logs are appended to, not counted).
    public static func runContents(inRunDirectory path: String) -> [RunItem] {
        let fm = FileManager.default
        var out: [RunItem] = []
        for name in ["config.yaml", "metrics.jsonl", "run.json", "best.h5", "final.h5"]
        where fm.fileExists(atPath: path + "/" + name) {
            out.append(RunItem(name: name, description: name))
        }
        let checkpoints = periodicCheckpoints(inRunDirectory: path)
        if !checkpoints.isEmpty {
            let last = URL(fileURLWithPath: checkpoints.last!).lastPathComponent
            out.append(
                RunItem(
                    name: "checkpoints",
                    description:
                        "checkpoints/ (\(checkpoints.count) checkpoint\(checkpoints.count == 1 ? "" : "s"), newest \(last))"
                ))
        }
        if fm.fileExists(atPath: path + "/tb") { out.append(RunItem(name: "tb", description: "tb/")) }
        return out
    }

    public static func latestCheckpoint(in run: RunDirectory) throws -> String? {
        try periodicCheckpoints(in: run).last
    }
}

import Core
import Datasets
import ExperimentConfig
import Foundation
import Storage

/// Reports progress: a live line on a terminal, plain lines otherwise.
public protocol ProgressSink: AnyObject {
    /// Whether transient updates are shown (a terminal); otherwise callers log plain lines.
    var isTerminal: Bool { get }
    func update(_ line: String) // transient (terminal only)
    func log(_ line: String) // permanent
}

/// The global GRU4Rec baseline: trains one model on all train-user pairs with
/// shuffled mini-batches, dropout on the final hidden state, Adam and
/// global-norm clipping; validates HR@10 on val episodes (zero-shot) each
/// epoch, keeps best.h5, stops after `pretrain.patience` epochs without
/// improvement, and writes final.h5.
public final class Pretrainer {
    public struct Result: Sendable {
        public var epochs: Int, bestEpoch: Int, bestHR10: Double, stoppedEarly: Bool
        /// The checkpoint a `--resume` continued from, if any.
        public var resumedFrom: String?
        /// The line `pretrain` (and a study's pretraining task) ends with.
        public func summary(bestCheckpoint: String) -> String {
            "pretrained \(epochs) epochs; best val HR@10 \(String(format: "%.4f", bestHR10)) at epoch \(bestEpoch); wrote \(bestCheckpoint)"
        }
    }

    /// The checkpoint written after every epoch, which `--resume` continues from.
    public static let resumeCheckpoint = "last.h5"

    /// What a pretraining run directory holds (what `pretrain --overwrite` removes), in this order.
    public static let runFiles = [
        "metrics.jsonl", "best.h5", resumeCheckpoint, "final.h5", "pretrain.log", "run.json", "config.yaml", "tb"
    ]

    /// The checkpoint `--resume` continues from in `run`; an error when there is none.
    public static func resumePoint(in run: RunDirectory) throws -> String {
        let path = run.file(resumeCheckpoint)
        guard FileManager.default.fileExists(atPath: path) else {
            throw MetatrainError("\(run.path): no \(resumeCheckpoint) to resume from (it is written after each epoch)")
        }
        return path
    }

    let dataset: Dataset, fingerprint: String, config: Config, run: RunDirectory
    weak var progress: ProgressSink?

    public init(dataset: Dataset, fingerprint: String, config: Config, run: RunDirectory, progress: ProgressSink?) {
        self.dataset = dataset; self.fingerprint = fingerprint; self.config = config; self.run = run;
        self.progress = progress
    }

    func say(_ s: String) { run.log(s); progress?.log(s) }

    /// Trains from scratch, or with `resume` from the run directory's last.h5:
    /// the weights, Adam state and history of its epoch, then the same epochs an
    /// uninterrupted run computes (shuffles and dropout are seeded by epoch), so
    /// the bits match. Only `Config.resumableKeys` may differ from its config.
    public func train(resume: Bool = false) throws -> Result {
        let p = config.pretrain
        var s = try start()
        var resumedFrom: String?
        if resume { resumedFrom = try self.resume(&s) }
        try run.saveConfig(config)
        let clock = EpochClock(firstEpoch: s.epoch, started: Date())
        var stoppedEarly = false
        while s.epoch < p.epochs {
            if s.sinceBest >= p.patience {
                say(
                    "early stop: no val HR@10 improvement for \(p.patience) epochs (best \(String(format: "%.4f", s.best)) at epoch \(s.bestEpoch))"
                )
                stoppedEarly = true
                break
            }
            try runEpoch(&s, clock: clock)
        }
        try CheckpointFile.write(checkpoint(s, iteration: s.epoch), to: run.file("final.h5"))
        return Result(
            epochs: s.epoch, bestEpoch: s.bestEpoch, bestHR10: s.val.episodes.isEmpty ? 0 : Double(s.best),
            stoppedEarly: stoppedEarly, resumedFrom: resumedFrom)
    }
}

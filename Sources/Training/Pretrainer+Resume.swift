import Core
import ExperimentConfig
import Foundation
import Storage

// Resume: the state of the run directory's last.h5, checked against this run's config.
extension Pretrainer {
    /// Loads last.h5 into `s` (weights, Adam, history, epoch, the early-stopping record
    /// replayed from the history) and cuts metrics.jsonl back to its epoch; returns its path.
    func resume(_ s: inout State) throws -> String {
        let path = try Self.resumePoint(in: run)
        let ck = try CheckpointFile.read(path, expectedFingerprint: fingerprint)
        let conflicts = try MetaTrainer.resumeConflicts(checkpoint: ck.configJSON, run: config.json)
        guard conflicts.isEmpty else {
            throw MetatrainError(
                "\(path): cannot resume with another " + conflicts.joined(separator: ", ")
                    + "; on resume only " + Config.resumableKeys.joined(separator: ", ") + " may change")
        }
        guard ck.kind == .pretrain, ck.dims == s.dims, let m = ck.adamM, let v = ck.adamV else {
            throw MetatrainError("\(path): not a resumable pretraining checkpoint for these model sizes")
        }
        s.params.assign(from: ck.params)
        s.adam.m.assign(from: m); s.adam.v.assign(from: v); s.adam.step = ck.adamStep
        for (k, v) in ck.history where Self.historyKeys.contains(k) { s.history[k] = v }
        s.epoch = ck.iteration
        guard s.history["epoch"]?.count == s.epoch else {
            throw MetatrainError("\(path): history does not cover its \(s.epoch) epochs")
        }
        for e in 0..<s.epoch { _ = s.record(score: s.score(epoch: e + 1), epoch: e + 1) }
        try run.truncateMetrics(key: "epoch", after: s.epoch)
        say("resumed from \(path) at epoch \(s.epoch)")
        return path
    }
}

import Evaluation
import Storage

// Validation bookkeeping: each evaluation's metrics go into the history, a new
// best HR@10 writes best.h5, and `eval.patience` evaluations without one stop the run.
extension MetaTrainer {
    public struct Validation: Sendable {
        public var hr10: Double, ndcg10: Double, mrr: Double, loss: Double, improved: Bool
    }

    /// Records a validation at the current iteration; writes best.h5 on a new
    /// best HR@10 and stops early after `eval.patience` evaluations without one.
    public func applyEval(_ perEpisode: [(MetricSums, Float)]) throws -> Validation {
        let total = perEpisode.reduce(MetricSums()) { $0 + $1.0 }
        let loss = perEpisode.isEmpty ? 0 : perEpisode.reduce(0.0) { $0 + Double($1.1) } / Double(perEpisode.count)
        let v = Validation(
            hr10: total.mean(.hr10), ndcg10: total.mean(.ndcg10), mrr: total.mean(.mrr), loss: loss,
            improved: total.mean(.hr10) > best)
        for (k, x) in zip(MetaTrainer.evalKeys, [Double(iteration), v.hr10, v.ndcg10, v.mrr, v.loss]) {
            history[k, default: []].append(Float(x))
        }
        replayEarlyStopping()
        if v.improved { try CheckpointFile.write(checkpoint(), to: run.file("best.h5")) }
        return v
    }

    /// Best HR@10 and evaluations since it, recomputed from the history (so a resumed run agrees).
    func replayEarlyStopping() {
        best = -Double.infinity; evalsSinceBest = 0
        for x in history["val_hr@10"] ?? [] {
            if Double(x) > best { best = Double(x); evalsSinceBest = 0 } else { evalsSinceBest += 1 }
        }
        stoppedEarly = evalsSinceBest >= config.eval.patience
    }

    public var bestHR10: Double? { best.isFinite ? best : nil }
}

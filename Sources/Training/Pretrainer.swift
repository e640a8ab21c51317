import Core
import Datasets
import Evaluation
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import MetaLearning
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
        let c = config, p = c.pretrain
        let dims = ModelDims(V: dataset.nItems, E: c.model.embeddingDim, H: c.model.hiddenDim)
        let model = GRU4Rec(dims: dims)
        var initRNG = SeededGenerator(seed: c.seed, [Stream.modelInit])
        let params = model.initialParameters(rng: &initRNG)
        let grads = FloatBuffer(count: model.parameterCount)
        let adam = Adam(count: model.parameterCount)
        let trainPairs: [Int64] = (0..<dataset.nPairs).compactMap {
            dataset.userSplit[Int(dataset.pairUser[$0])] == SplitKind.train.rawValue ? Int64($0) : nil
        }
        guard !trainPairs.isEmpty else { throw MetatrainError("\(run.path): no train-user pairs to pretrain on") }
        let val = Evaluator(dataset: dataset, split: .val, limit: c.eval.valEpisodes)
        if val.episodes.isEmpty { say("warning: no validation episodes; best.h5 follows the training loss") }
        say(
            "pretrain: \(trainPairs.count) train pairs, \(val.episodes.count) val episodes, \(model.parameterCount) parameters (V \(dims.V), E \(dims.E), H \(dims.H))"
        )

        var history: [String: [Float]] = [:]
        let historyKeys = ["epoch", "train_loss", "val_hr@10", "val_ndcg@10", "val_mrr", "val_loss"]
        // Scores compare as Float, as the history stores them, so a resumed run
        // replays the same best epoch and patience count.
        var best = -Float.infinity, bestEpoch = 0, sinceBest = 0, epoch = 0, stoppedEarly = false
        func record(score: Float, epoch: Int) -> Bool {
            if score > best { best = score; bestEpoch = epoch; sinceBest = 0; return true }
            sinceBest += 1
            return false
        }
        var batch = PackedBatch()
        let nBatches = (trainPairs.count + p.batchSize - 1) / p.batchSize
        func checkpoint(_ iteration: Int) -> Checkpoint {
            var ck = Checkpoint(
                dims: dims, params: params, adamM: adam.m, adamV: adam.v,
                history: historyKeys.map { ($0, history[$0] ?? []) }, iteration: iteration, adamStep: adam.step,
                seed: c.seed, configJSON: c.json, datasetFingerprint: fingerprint, kind: .pretrain, algorithm: "gru4rec"
            )
            ck.carryUse(of: dataset, config: c)
            return ck
        }
        var resumedFrom: String?
        if resume {
            let path = try Self.resumePoint(in: run)
            let ck = try CheckpointFile.read(path, expectedFingerprint: fingerprint)
            let conflicts = try MetaTrainer.resumeConflicts(checkpoint: ck.configJSON, run: c.json)
            guard conflicts.isEmpty else {
                throw MetatrainError(
                    "\(path): cannot resume with another " + conflicts.joined(separator: ", ")
                        + "; on resume only " + Config.resumableKeys.joined(separator: ", ") + " may change")
            }
            guard ck.kind == .pretrain, ck.dims == dims, let m = ck.adamM, let v = ck.adamV else {
                throw MetatrainError("\(path): not a resumable pretraining checkpoint for these model sizes")
            }
            params.assign(from: ck.params)
            adam.m.assign(from: m); adam.v.assign(from: v); adam.step = ck.adamStep
            for (k, v) in ck.history where historyKeys.contains(k) { history[k] = v }
            epoch = ck.iteration
            guard history["epoch"]?.count == epoch else {
                throw MetatrainError("\(path): history does not cover its \(epoch) epochs")
            }
            for e in 0..<epoch {
                _ = record(
                    score: val.episodes.isEmpty ? -history["train_loss"]![e] : history["val_hr@10"]![e], epoch: e + 1)
            }
            try run.truncateMetrics(key: "epoch", after: epoch)
            resumedFrom = path
            say("resumed from \(path) at epoch \(epoch)")
        }
        try run.saveConfig(c)
        let firstEpoch = epoch, runStarted = Date()
        while epoch < p.epochs {
            if sinceBest >= p.patience {
                say(
                    "early stop: no val HR@10 improvement for \(p.patience) epochs (best \(String(format: "%.4f", best)) at epoch \(bestEpoch))"
                )
                stoppedEarly = true
                break
            }
            epoch += 1
            let started = Date()
            var order = trainPairs
            var shuffle = SeededGenerator(seed: c.seed, [Stream.pretrainEpoch, UInt64(epoch)])
            shuffle.shuffle(&order)
            var dropoutRNG = SeededGenerator(seed: c.seed, [Stream.dropout, UInt64(epoch)])
            var lossSum = 0.0
            for b in 0..<nBatches {
                let slice = order[(b * p.batchSize)..<min((b + 1) * p.batchSize, order.count)]
                batch.pack(pairs: slice, of: dataset)
                grads.zero()
                let loss = model.lossAndGradient(
                    params, grads, batch, dropout: Float(c.model.dropout), rng: &dropoutRNG)
                lossSum += Double(loss)
                clipGradNorm(grads, maxNorm: Float(c.maml.clipNorm))
                adam.update(params, grads, lr: Float(p.lr))
                if b % 10 == 0 || b == nBatches - 1 {
                    // ETA from the batches done since this process started.
                    let done = Double((epoch - firstEpoch - 1) * nBatches + b + 1),
                        left = Double((p.epochs - epoch + 1) * nBatches - b - 1)
                    let eta = Date().timeIntervalSince(runStarted) / done * left
                    progress?.update(
                        String(
                            format: "epoch %d/%d  batch %d/%d  loss %.4f  %@ ETA %@", epoch, p.epochs, b + 1, nBatches,
                            lossSum / Double(b + 1), formatDuration(Date().timeIntervalSince(runStarted)),
                            formatDuration(eta)))
                }
            }
            let trainLoss = lossSum / Double(nBatches)
            let v = val.zeroShot(params, dims: dims).reduce(MetricSums(), +)
            let valLoss = val.episodes.isEmpty ? trainLoss : val.queryLoss(params, dims: dims)
            for (k, x) in zip(
                historyKeys, [Double(epoch), trainLoss, v.mean(.hr10), v.mean(.ndcg10), v.mean(.mrr), valLoss])
            {
                history[k, default: []].append(Float(x))
            }
            let secs = Date().timeIntervalSince(started)
            try run.appendMetrics(
                .object([
                    ("epoch", .int(epoch)), ("train_loss", .number(trainLoss)), ("val_hr@10", .number(v.mean(.hr10))),
                    ("val_ndcg@10", .number(v.mean(.ndcg10))), ("val_mrr", .number(v.mean(.mrr))),
                    ("val_loss", .number(valLoss)),
                    ("seconds", .number(secs)),
                    ("time", .number((Date().timeIntervalSince1970 * 1000).rounded() / 1000))
                ]))
            var note = ""
            if record(
                score: val.episodes.isEmpty ? -history["train_loss"]!.last! : history["val_hr@10"]!.last!, epoch: epoch)
            {
                try CheckpointFile.write(checkpoint(epoch), to: run.file("best.h5"))
                note = "  (best, saved best.h5)"
            }
            try CheckpointFile.write(checkpoint(epoch), to: run.file(Self.resumeCheckpoint))
            say(
                String(
                    format:
                        "epoch %d/%d  train loss %.4f  val HR@10 %.4f  NDCG@10 %.4f  MRR %.4f  val loss %.4f  %.1fs%@",
                    epoch, p.epochs, trainLoss, v.mean(.hr10), v.mean(.ndcg10), v.mean(.mrr), valLoss, secs, note))
        }
        try CheckpointFile.write(checkpoint(epoch), to: run.file("final.h5"))
        return Result(
            epochs: epoch, bestEpoch: bestEpoch, bestHR10: val.episodes.isEmpty ? 0 : Double(best),
            stoppedEarly: stoppedEarly,
            resumedFrom: resumedFrom)
    }
}

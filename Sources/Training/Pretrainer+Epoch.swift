import Core
import Evaluation
import Foundation
import GRU4Rec
import Kernels
import Storage

// One epoch: shuffled mini-batches with dropout, Adam and clipping; then validation,
// the epoch's metrics, best.h5 when it improves, and last.h5 to resume from.
extension Pretrainer {
    /// When this process's epochs began, for the ETA.
    struct EpochClock { let firstEpoch: Int, started: Date }

    func runEpoch(_ s: inout State, clock: EpochClock) throws {
        let c = config, p = c.pretrain
        s.epoch += 1
        let epoch = s.epoch, started = Date()
        let nBatches = (s.trainPairs.count + p.batchSize - 1) / p.batchSize
        var order = s.trainPairs
        var shuffle = SeededGenerator(seed: c.seed, [Stream.pretrainEpoch, UInt64(epoch)])
        shuffle.shuffle(&order)
        var dropoutRNG = SeededGenerator(seed: c.seed, [Stream.dropout, UInt64(epoch)])
        var batch = PackedBatch()
        var lossSum = 0.0
        for b in 0..<nBatches {
            let slice = order[(b * p.batchSize)..<min((b + 1) * p.batchSize, order.count)]
            batch.pack(pairs: slice, of: dataset)
            s.grads.zero()
            let loss = s.model.lossAndGradient(
                s.params, s.grads, batch, dropout: Float(c.model.dropout), rng: &dropoutRNG)
            lossSum += Double(loss)
            clipGradNorm(s.grads, maxNorm: Float(c.maml.clipNorm))
            s.adam.update(s.params, s.grads, lr: Float(p.lr))
            if b % 10 == 0 || b == nBatches - 1 {
                // ETA from the batches done since this process started.
                let done = Double((epoch - clock.firstEpoch - 1) * nBatches + b + 1),
                    left = Double((p.epochs - epoch + 1) * nBatches - b - 1)
                let elapsed = Date().timeIntervalSince(clock.started)
                progress?.update(
                    String(
                        format: "epoch %d/%d  batch %d/%d  loss %.4f  %@ ETA %@", epoch, p.epochs, b + 1, nBatches,
                        lossSum / Double(b + 1), formatDuration(elapsed), formatDuration(elapsed / done * left)))
            }
        }
        let trainLoss = lossSum / Double(nBatches)
        let v = s.val.zeroShot(s.params, dims: s.dims).reduce(MetricSums(), +)
        let valLoss = s.val.episodes.isEmpty ? trainLoss : s.val.queryLoss(s.params, dims: s.dims)
        for (k, x) in zip(
            Self.historyKeys, [Double(epoch), trainLoss, v.mean(.hr10), v.mean(.ndcg10), v.mean(.mrr), valLoss])
        {
            s.history[k, default: []].append(Float(x))
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
        if s.record(score: s.score(epoch: epoch), epoch: epoch) {
            try CheckpointFile.write(checkpoint(s, iteration: epoch), to: run.file("best.h5"))
            note = "  (best, saved best.h5)"
        }
        try CheckpointFile.write(checkpoint(s, iteration: epoch), to: run.file(Self.resumeCheckpoint))
        say(
            String(
                format:
                    "epoch %d/%d  train loss %.4f  val HR@10 %.4f  NDCG@10 %.4f  MRR %.4f  val loss %.4f  %.1fs%@",
                epoch, p.epochs, trainLoss, v.mean(.hr10), v.mean(.ndcg10), v.mean(.mrr), valLoss, secs, note))
    }
}

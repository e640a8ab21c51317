import Core
import Datasets
import Evaluation
import ExperimentConfig
import GRU4Rec
import Kernels
import Storage

// A pretraining run's state: the model and its optimiser, the training pairs and the
// validation episodes, the history of every epoch, and the early-stopping record.
extension Pretrainer {
    /// Every history curve, in the order checkpoints store them.
    static let historyKeys = ["epoch", "train_loss", "val_hr@10", "val_ndcg@10", "val_mrr", "val_loss"]

    struct State {
        let dims: ModelDims, model: GRU4Rec
        let params: FloatBuffer, grads: FloatBuffer, adam: Adam
        /// Every train user's pairs, in dataset order (shuffled per epoch).
        let trainPairs: [Int64]
        let val: Evaluator
        var history: [String: [Float]] = [:]
        var epoch = 0
        // Scores compare as Float, as the history stores them, so a resumed run
        // replays the same best epoch and patience count.
        var best = -Float.infinity, bestEpoch = 0, sinceBest = 0

        /// Records epoch `epoch`'s score; true when it is the best so far.
        mutating func record(score: Float, epoch: Int) -> Bool {
            if score > best { best = score; bestEpoch = epoch; sinceBest = 0; return true }
            sinceBest += 1
            return false
        }

        /// Epoch e's (1-based) score: val HR@10, or minus the training loss without val episodes.
        func score(epoch e: Int) -> Float {
            val.episodes.isEmpty ? -history["train_loss"]![e - 1] : history["val_hr@10"]![e - 1]
        }
    }

    /// A fresh model from the seed, and the data it trains and validates on.
    func start() throws -> State {
        let c = config
        let dims = ModelDims(V: dataset.nItems, E: c.model.embeddingDim, H: c.model.hiddenDim)
        let model = GRU4Rec(dims: dims)
        var initRNG = SeededGenerator(seed: c.seed, [Stream.modelInit])
        let params = model.initialParameters(rng: &initRNG)
        let trainPairs: [Int64] = (0..<dataset.nPairs).compactMap {
            dataset.userSplit[Int(dataset.pairUser[$0])] == SplitKind.train.rawValue ? Int64($0) : nil
        }
        guard !trainPairs.isEmpty else { throw MetatrainError("\(run.path): no train-user pairs to pretrain on") }
        let val = Evaluator(dataset: dataset, split: .val, limit: c.eval.valEpisodes)
        if val.episodes.isEmpty { say("warning: no validation episodes; best.h5 follows the training loss") }
        say(
            "pretrain: \(trainPairs.count) train pairs, \(val.episodes.count) val episodes, \(model.parameterCount) parameters (V \(dims.V), E \(dims.E), H \(dims.H))"
        )
        return State(
            dims: dims, model: model, params: params, grads: FloatBuffer(count: model.parameterCount),
            adam: Adam(count: model.parameterCount), trainPairs: trainPairs, val: val)
    }

    /// The checkpoint of the state at `iteration` (epochs done), carrying what using the model needs.
    func checkpoint(_ s: State, iteration: Int) -> Checkpoint {
        let c = config
        var ck = Checkpoint(
            dims: s.dims, params: s.params, adamM: s.adam.m, adamV: s.adam.v,
            history: Self.historyKeys.map { ($0, s.history[$0] ?? []) }, iteration: iteration,
            adamStep: s.adam.step, seed: c.seed, configJSON: c.json, datasetFingerprint: fingerprint,
            kind: .pretrain, algorithm: "gru4rec")
        ck.carryUse(of: dataset, config: c)
        return ck
    }
}

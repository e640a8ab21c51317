import Coordination
import Core
import Datasets
import Evaluation
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import MetaLearning
import Storage

/// The coordinator's training state and math, with no sockets: θ (and
/// Meta-SGD's α), Adam, the meta-batch plan, the reduction of unit results,
/// validation bookkeeping with early stopping, and checkpoints. Everything a
/// run needs to continue bit-identically lives in its periodic checkpoints.
///
/// By role: this file holds the state and the plan (which episodes each
/// iteration's units hold); MetaTrainer+Step.swift the reduction and the Adam
/// step; MetaTrainer+Validation.swift validation and early stopping;
/// MetaTrainer+Resume.swift checkpoints and resume. A worker's half of the math
/// is UnitComputer.swift.
public final class MetaTrainer {
    public let config: Config
    public let dataset: Dataset
    public let run: RunDirectory
    public let dims: ModelDims
    public let layout: ParameterLayout
    public let algorithm: MetaAlgorithm
    /// θ's and α's sizes (ModelPayload).
    public let payload: ModelPayload
    public let theta: FloatBuffer
    public let alpha: FloatBuffer?
    let adam: Adam
    let adamAlpha: Adam?
    let sampler: MetaBatchSampler
    /// Val episodes used for validation (eval.val_episodes; 0 = all).
    public let valEpisodes: [Int]
    /// Completed iterations; equals the published weights version.
    public internal(set) var iteration = 0
    /// The checkpoint this run resumed from (nil: it started afresh).
    public private(set) var resumedFrom: String?
    public internal(set) var stoppedEarly = false
    var best = -Double.infinity
    var evalsSinceBest = 0
    /// The last iteration's reduced meta-gradient (the tree sum, before scaling); the reduce writes it anew each time.
    let gradTheta: FloatBuffer
    let gradAlpha: FloatBuffer?
    let reducer: PlanReducer
    /// Estimated cost of episodes, for dispatch order.
    public let cost: UnitCost

    // Curves written to every checkpoint, in this order.
    static let iterationKeys = ["iteration", "meta_loss", "grad_norm"]
    static let evalKeys = ["eval_iteration", "val_hr@10", "val_ndcg@10", "val_mrr", "val_loss"]
    var history: [String: [Float]] = [:]

    public init(config: Config, dataset: Dataset, run: RunDirectory, resume: Bool) throws {
        self.config = config; self.dataset = dataset; self.run = run
        dims = ModelDims(V: dataset.nItems, E: config.model.embeddingDim, H: config.model.hiddenDim)
        layout = ParameterLayout(dims)
        payload = ModelPayload(config: config, items: dataset.nItems)
        algorithm = MetaAlgorithm(config: config, layout: layout)
        adam = Adam(count: layout.count)
        let isMetaSGD = payload.alpha > 0
        adamAlpha = isMetaSGD ? Adam(count: layout.count) : nil
        gradTheta = FloatBuffer(count: layout.count)
        gradAlpha = isMetaSGD ? FloatBuffer(count: layout.count) : nil
        reducer = PlanReducer(count: layout.count)
        cost = UnitCost(dataset: dataset, config: config)
        sampler = MetaBatchSampler(dataset: dataset, seed: config.seed, batchSize: config.maml.metaBatchSize)
        guard sampler.batchSize > 0 else { throw MetatrainError("\(run.path): the dataset has no train episodes") }
        let nVal = dataset.episodes(.val).count
        valEpisodes = Array(0..<(config.eval.valEpisodes > 0 ? min(config.eval.valEpisodes, nVal) : nVal))

        try run.lock()
        let resumeFrom = resume ? try MetaTrainer.resumePoint(in: run, fingerprint: dataset.fingerprint) : nil
        if let (latest, ck) = resumeFrom {
            try MetaTrainer.checkResumable(ck, path: latest, config: config, dims: dims)
            guard let m = ck.adamM, let v = ck.adamV else {
                throw MetatrainError("\(latest): checkpoint without Adam state")
            }
            theta = ck.params
            adam.m.assign(from: m); adam.v.assign(from: v); adam.step = ck.adamStep
            if isMetaSGD {
                guard let a = ck.metaSGDAlpha, let am = ck.alphaAdamM, let av = ck.alphaAdamV else {
                    throw MetatrainError("\(latest): Meta-SGD checkpoint without rates or their Adam state")
                }
                alpha = a
                adamAlpha!.m.assign(from: am); adamAlpha!.v.assign(from: av); adamAlpha!.step = ck.adamStep
            } else {
                alpha = nil
            }
            iteration = ck.iteration
            for (k, v) in ck.history { history[k] = v }
            replayEarlyStopping()
            try run.truncateMetrics(key: "iteration", after: iteration)
            run.log("resumed from \(latest) at iteration \(iteration)")
            resumedFrom = latest
        } else {
            if let warm = config.warmStart.checkpoint {
                try MetaTrainer.checkWarmStart(config)
                let ck: Checkpoint
                do { ck = try CheckpointFile.read(warm, expectedFingerprint: dataset.fingerprint) } catch {
                    throw MetatrainError("warm_start.checkpoint: \(error)")
                }
                guard ck.dims == dims else {
                    throw MetatrainError(
                        "\(warm): warm-start checkpoint has E \(ck.dims.E), H \(ck.dims.H), V \(ck.dims.V); this config needs E \(dims.E), H \(dims.H), V \(dims.V)"
                    )
                }
                theta = ck.params
            } else {
                var rng = SeededGenerator(seed: config.seed, [Stream.modelInit])
                theta = GRU4Rec(dims: dims).initialParameters(rng: &rng)
            }
            if isMetaSGD {
                alpha = FloatBuffer(count: layout.count)
                for i in 0..<layout.count { alpha!.ptr[i] = Float(config.maml.innerLR) }
            } else {
                alpha = nil
            }
            try? FileManager.default.removeItem(atPath: run.file("metrics.jsonl"))
        }
        try run.saveConfig(config)
    }

    /// A warm start's checkpoint must exist: said naming the key and how to make one,
    /// before anything in the run directory is touched.
    public static func checkWarmStart(_ config: Config) throws {
        guard let warm = config.warmStart.checkpoint, !FileManager.default.fileExists(atPath: warm) else { return }
        throw MetatrainError(
            "warm_start.checkpoint: \(warm) does not exist; make it with `metatrain pretrain --data DATASET --run-dir DIR` (warm start from DIR/best.h5), or set warm_start.checkpoint to an existing checkpoint"
        )
    }

    public var iterations: Int { config.maml.iterations }
    public var finished: Bool { iteration >= iterations || stoppedEarly }
    public var metaBatchSize: Int { sampler.batchSize }

    /// Iteration t's meta-batch in fixed chunks of `maml.chunk_size` tasks.
    public func trainUnits(iteration t: Int) -> [[Int]] {
        chunks(sampler.batch(iteration: t), config.maml.chunkSize)
    }

    /// Iteration t's plan over `blocks` nodes of the reduction tree (one per
    /// block, biggest first; see `ReductionTree.guidedPartition`).
    public func trainPlan(iteration t: Int, blocks k: Int) -> TrainPlan {
        let chunks = trainUnits(iteration: t)
        return .blocks(
            chunks, ReductionTree(leaves: chunks.count).guidedPartition(into: max(1, k)),
            cost: { cost.cost($0, split: .train) })
    }

    /// Iteration t's plan with every chunk a unit, the `split` cheapest cut into pieces.
    public func splitPlan(iteration t: Int, split: Int) -> TrainPlan {
        .split(trainUnits(iteration: t), split: split, cost: { cost.cost($0, split: .train) })
    }

    public func evalUnits() -> [[Int]] { chunks(valEpisodes, config.maml.chunkSize) }

    /// Units ordered by estimated cost (prefix items to run), costliest first.
    public func dispatchOrder(_ units: [[Int]], split: SplitKind) -> [Int] {
        TrainPlan.costliestFirst(units.map { cost.cost($0, split: split) })
    }

    func chunks(_ a: [Int], _ n: Int) -> [[Int]] {
        stride(from: 0, to: a.count, by: n).map { Array(a[$0..<min($0 + n, a.count)]) }
    }

    public func evalDue(_ t: Int) -> Bool { !valEpisodes.isEmpty && t % config.eval.every == 0 }
    public func checkpointDue(_ t: Int) -> Bool { t % config.checkpoint.every == 0 }
}

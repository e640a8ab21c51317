import Configuration
import Core
import Datasets
import Evaluation
import Foundation
import GRU4Rec
import Kernels
import MetaLearning
import Storage

/// A reduced meta-gradient (or meta-loss) that is not finite: the step is not taken.
public struct NonFiniteGradient: Error, CustomStringConvertible {
    public let iteration: Int
    /// Episodes of each unit of the iteration.
    public let units: [[Int]]
    public var description: String {
        let list = units.prefix(8).map { "[" + $0.prefix(8).map(String.init).joined(separator: ",") + ($0.count > 8 ? ",…" : "") + "]" }
        return "iteration \(iteration): the summed meta-gradient is not finite (units of episodes \(list.joined(separator: " "))"
            + "\(units.count > 8 ? " …" : "")); the model diverged (lower maml.inner_lr or maml.outer_lr)"
    }
}

/// The coordinator's training state and math, with no sockets: θ (and
/// Meta-SGD's α), Adam, the meta-batch plan, the reduction of unit results,
/// validation bookkeeping with early stopping, and checkpoints. Everything a
/// run needs to continue bit-identically lives in its periodic checkpoints.
public final class MetaTrainer {
    public let config: Config
    public let dataset: Dataset
    public let run: RunDirectory
    public let dims: ModelDims
    public let layout: ParameterLayout
    public let algorithm: MetaAlgorithm
    public let theta: FloatBuffer
    public let alpha: FloatBuffer?
    let adam: Adam
    let adamAlpha: Adam?
    let sampler: MetaBatchSampler
    /// Val episodes used for validation (eval.val_episodes; 0 = all).
    public let valEpisodes: [Int]
    /// Completed iterations; equals the published weights version.
    public private(set) var iteration = 0
    /// The checkpoint this run resumed from (nil: it started afresh).
    public private(set) var resumedFrom: String?
    public private(set) var stoppedEarly = false
    private var best = -Double.infinity
    private var evalsSinceBest = 0
    /// The last iteration's reduced meta-gradient (the tree sum, before scaling); the reduce writes it anew each time.
    let gradTheta: FloatBuffer
    private let gradAlpha: FloatBuffer?
    let reducer: PlanReducer
    /// Estimated cost of episodes, for dispatch order.
    public let cost: UnitCost

    // Curves written to every checkpoint, in this order.
    static let iterationKeys = ["iteration", "meta_loss", "grad_norm"]
    static let evalKeys = ["eval_iteration", "val_hr@10", "val_ndcg@10", "val_mrr", "val_loss"]
    private var history: [String: [Float]] = [:]

    public init(config: Config, dataset: Dataset, run: RunDirectory, resume: Bool) throws {
        self.config = config; self.dataset = dataset; self.run = run
        dims = ModelDims(V: dataset.nItems, E: config.model.embeddingDim, H: config.model.hiddenDim)
        layout = ParameterLayout(dims)
        algorithm = MetaAlgorithm(config: config, layout: layout)
        adam = Adam(count: layout.count)
        let isMetaSGD = config.maml.algorithm == .metasgd
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
        // The newest periodic checkpoint that reads back whole; each one skipped is logged.
        var resumeFrom: (path: String, checkpoint: Checkpoint)?
        if resume {
            for path in try MetaTrainer.periodicCheckpoints(in: run).reversed() {
                do {
                    resumeFrom = (path, try CheckpointFile.read(path, expectedFingerprint: dataset.fingerprint))
                    break
                } catch {
                    run.log("skipped \(path) for --resume: \(error)")
                    FileHandle.standardError.write(Data("warning: skipped \(path) for --resume: \(error)\n".utf8))
                }
            }
        }
        if resume, resumeFrom == nil, !(try MetaTrainer.periodicCheckpoints(in: run)).isEmpty {
            throw MetatrainError("\(run.path): no checkpoint in checkpoints/ reads back whole (each is named above); nothing to resume from")
        }
        if let (latest, ck) = resumeFrom {
            let conflicts = try MetaTrainer.resumeConflicts(checkpoint: ck.configJSON, run: config.json)
            guard conflicts.isEmpty else {
                throw MetatrainError("\(latest): cannot resume with another " + conflicts.joined(separator: ", ")
                                     + "; on resume only " + Config.resumableKeys.joined(separator: ", ") + " may change")
            }
            guard ck.dims == dims, let m = ck.adamM, let v = ck.adamV else {
                throw MetatrainError("\(latest): not a resumable meta checkpoint for these model sizes")
            }
            theta = ck.params
            adam.m.assign(from: m); adam.v.assign(from: v); adam.step = ck.adamStep
            if isMetaSGD {
                guard let a = ck.metaSGDAlpha, let am = ck.alphaAdamM, let av = ck.alphaAdamV else {
                    throw MetatrainError("\(latest): Meta-SGD checkpoint without rates or their Adam state")
                }
                alpha = a
                adamAlpha!.m.assign(from: am); adamAlpha!.v.assign(from: av); adamAlpha!.step = ck.adamStep
            } else { alpha = nil }
            iteration = ck.iteration
            for (k, v) in ck.history { history[k] = v }
            replayEarlyStopping()
            try run.truncateMetrics(key: "iteration", after: iteration)
            run.log("resumed from \(latest) at iteration \(iteration)")
            resumedFrom = latest
        } else {
            if let warm = config.warmStart.checkpoint {
                let ck = try CheckpointFile.read(warm, expectedFingerprint: dataset.fingerprint)
                guard ck.dims == dims else {
                    throw MetatrainError("\(warm): warm-start checkpoint has E \(ck.dims.E), H \(ck.dims.H), V \(ck.dims.V); this config needs E \(dims.E), H \(dims.H), V \(dims.V)")
                }
                theta = ck.params
            } else {
                var rng = SeededGenerator(seed: config.seed, [Stream.modelInit])
                theta = GRU4Rec(dims: dims).initialParameters(rng: &rng)
            }
            if isMetaSGD {
                alpha = FloatBuffer(count: layout.count)
                for i in 0..<layout.count { alpha!.ptr[i] = Float(config.maml.innerLR) }
            } else { alpha = nil }
            try? FileManager.default.removeItem(atPath: run.file("metrics.jsonl"))
        }
        try run.saveConfig(config)
    }

    public var iterations: Int { config.maml.iterations }
    public var finished: Bool { iteration >= iterations || stoppedEarly }
    public var metaBatchSize: Int { sampler.batchSize }

    /// Parameter ranges Adam may update (everything but frozen embeddings).
    public var trainableRanges: [Range<Int>] {
        var out: [Range<Int>] = [], start = 0
        for f in algorithm.frozen.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if f.lowerBound > start { out.append(start..<f.lowerBound) }
            start = f.upperBound
        }
        if start < layout.count { out.append(start..<layout.count) }
        return out
    }

    /// Iteration t's meta-batch in fixed chunks of `maml.chunk_size` tasks.
    public func trainUnits(iteration t: Int) -> [[Int]] {
        chunks(sampler.batch(iteration: t), config.maml.chunkSize)
    }

    /// Iteration t's plan over `blocks` nodes of the reduction tree (one per
    /// block, biggest first; see `ReductionTree.guidedPartition`).
    public func trainPlan(iteration t: Int, blocks k: Int) -> TrainPlan {
        let chunks = trainUnits(iteration: t)
        return .blocks(chunks, ReductionTree(leaves: chunks.count).guidedPartition(into: max(1, k)),
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

    /// Reduces one iteration's unit results (IN UNIT ORDER: the sums are added in
    /// this order, so the bits do not depend on which worker computed what),
    /// divides by the number of tasks, clips, and takes the Adam step.
    /// Returns the mean meta-loss and the gradient norm before clipping.
    public func applyTrain(_ units: [UnitSums], plan: TrainPlan, iteration t: Int) throws -> (loss: Double, gradNorm: Double) {
        precondition(t == iteration + 1, "iteration \(t) applied after \(iteration)")
        let n = layout.count
        // The tree sum over the plan's partition, in one fused pass with the squares.
        let sums: PlanReducer.Sums
        do { sums = try reducer.reduce(units, plan: plan, gradTheta: gradTheta, gradAlpha: gradAlpha) } catch {
            throw MetatrainError("iteration \(t): \(error)")
        }
        let sq = sums.squares, tasks = sums.tasks, loss = sums.lossSum
        // Finite parts can still overflow: such a step is never taken.
        guard sq.isFinite, loss.isFinite else {
            throw NonFiniteGradient(iteration: t, units: plan.units.map { $0.flatMap { $0 } })
        }
        // Mean over tasks and global-norm clipping over θ and α together, folded
        // into one scale that Adam applies as it reads the gradient.
        let inv = 1 / Double(tasks)
        let norm = sq.squareRoot() * inv
        let coef = config.maml.clipNorm / (norm + 1e-6)
        let scale = Float(inv * min(coef, 1))
        let lr = Float(config.maml.outerLR), ranges = trainableRanges
        adam.update(theta, gradTheta, gradScale: scale, lr: lr, ranges: ranges, threads: 2)
        if let alpha, let ga = gradAlpha, let aa = adamAlpha {
            aa.update(alpha, ga, gradScale: scale, lr: lr, ranges: ranges, threads: 2)
            let lo = Float(config.maml.innerLRBounds.0), hi = Float(config.maml.innerLRBounds.1)
            for i in 0..<n { alpha.ptr[i] = min(max(alpha.ptr[i], lo), hi) }
        }
        iteration = t
        let meanLoss = loss / Double(tasks)
        for (k, v) in zip(MetaTrainer.iterationKeys, [Double(t), meanLoss, norm]) { history[k, default: []].append(Float(v)) }
        return (meanLoss, norm)
    }

    public struct Validation: Sendable { public var hr10: Double, ndcg10: Double, mrr: Double, loss: Double, improved: Bool }

    /// Records a validation at the current iteration; writes best.h5 on a new
    /// best HR@10 and stops early after `eval.patience` evaluations without one.
    public func applyEval(_ perEpisode: [(MetricSums, Float)]) throws -> Validation {
        let total = perEpisode.reduce(MetricSums()) { $0 + $1.0 }
        let loss = perEpisode.isEmpty ? 0 : perEpisode.reduce(0.0) { $0 + Double($1.1) } / Double(perEpisode.count)
        let v = Validation(hr10: total.mean(.hr10), ndcg10: total.mean(.ndcg10), mrr: total.mean(.mrr), loss: loss,
                           improved: total.mean(.hr10) > best)
        for (k, x) in zip(MetaTrainer.evalKeys, [Double(iteration), v.hr10, v.ndcg10, v.mrr, v.loss]) { history[k, default: []].append(Float(x)) }
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

    func checkpoint() -> Checkpoint {
        var c = Checkpoint(dims: dims, params: theta, adamM: adam.m, adamV: adam.v, metaSGDAlpha: alpha,
                           history: (MetaTrainer.iterationKeys + MetaTrainer.evalKeys).map { ($0, history[$0] ?? []) },
                           iteration: iteration, adamStep: adam.step, seed: config.seed, configJSON: config.json,
                           datasetFingerprint: dataset.fingerprint, kind: .meta, algorithm: config.maml.algorithm.rawValue)
        c.alphaAdamM = adamAlpha?.m; c.alphaAdamV = adamAlpha?.v
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

    static func periodicCheckpoints(in run: RunDirectory) throws -> [String] { periodicCheckpoints(inRunDirectory: run.path) }

    /// The whole periodic checkpoints (no temporary files) of the run directory at `path`, oldest first,
    /// without creating anything (the directory may not exist).
    public static func periodicCheckpoints(inRunDirectory path: String) -> [String] {
        let dir = path + "/checkpoints"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.hasPrefix("iter-") && $0.hasSuffix(".h5") }.sorted().map { dir + "/" + $0 }
    }

    public static func latestCheckpoint(in run: RunDirectory) throws -> String? { try periodicCheckpoints(in: run).last }


}


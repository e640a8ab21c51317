import Configuration
import Core
import Data
import Evaluation
import Foundation
import GRU4Rec
import Kernels
import MetaLearning
import Storage

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
    public private(set) var stoppedEarly = false
    private var best = -Double.infinity
    private var evalsSinceBest = 0
    /// The last iteration's reduced meta-gradient (the tree sum, before scaling); the reduce writes it anew each time.
    let gradTheta: FloatBuffer
    private let gradAlpha: FloatBuffer?
    private var scratch: [FloatBuffer] = []   // re-joined split chunks

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
        sampler = MetaBatchSampler(dataset: dataset, seed: config.seed, batchSize: config.maml.metaBatchSize)
        guard sampler.batchSize > 0 else { throw MetatrainError("\(run.path): the dataset has no train episodes") }
        let nVal = dataset.episodes(.val).count
        valEpisodes = Array(0..<(config.eval.valEpisodes > 0 ? min(config.eval.valEpisodes, nVal) : nVal))

        if resume, let latest = try MetaTrainer.latestCheckpoint(in: run) {
            let ck = try CheckpointFile.read(latest, expectedFingerprint: dataset.fingerprint)
            guard ck.configJSON == config.json else {
                throw MetatrainError("\(latest): its configuration differs from this run's; resume with the run's config.yaml")
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
            try truncateMetrics(after: iteration)
            run.log("resumed from \(latest) at iteration \(iteration)")
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

    /// How one meta-iteration's chunks go out as work units. A chunk goes whole,
    /// or split into its first half (summed) followed by its remaining tasks one
    /// by one: the coordinator re-joins the pieces in task order, which gives the
    /// chunk's sum bit for bit, so splitting never changes the weights. (A worker
    /// adds each task to its running sum in one addition per element, starting
    /// from +0; such a sum is never −0, so adding a lone task's 0 + g instead of g
    /// changes no bit.)
    public struct TrainPlan: Equatable, Sendable {
        /// Episodes of each work unit, in unit order.
        public var units: [[Int]]
        /// For each chunk, in chunk order, the units that make it, in task order.
        public var chunkUnits: [[Int]]
        /// Order in which units are handed out.
        public var dispatchOrder: [Int]
    }

    /// Iteration t's plan: chunks in dispatch order (costliest first), with the
    /// last `split` of them split so that a phase ends on single tasks, not on
    /// whole chunks (with several workers, one worker would otherwise idle for
    /// up to a chunk while another finishes).
    public func trainPlan(iteration t: Int, split: Int) -> TrainPlan {
        let chunks = trainUnits(iteration: t)
        let byCost = dispatchOrder(chunks, split: .train)
        let splitSet = Set(byCost.suffix(max(0, min(split, chunks.count - 1))).filter { chunks[$0].count > 1 })
        var units: [[Int]] = [], chunkUnits: [[Int]] = []
        for (c, chunk) in chunks.enumerated() {
            var pieces = [chunk]
            if splitSet.contains(c) {
                let head = chunk.count / 2
                pieces = [Array(chunk[..<head])] + chunk[head...].map { [$0] }
            }
            chunkUnits.append(Array(units.count..<(units.count + pieces.count)))
            units += pieces
        }
        // Whole chunks costliest first, then the pieces, costliest first.
        let order = byCost.filter { !splitSet.contains($0) }.map { chunkUnits[$0][0] }
        let pieceIndices = splitSet.sorted().flatMap { chunkUnits[$0] }
        let pieceOrder = dispatchOrder(pieceIndices.map { units[$0] }, split: .train).map { pieceIndices[$0] }
        return TrainPlan(units: units, chunkUnits: chunkUnits, dispatchOrder: order + pieceOrder)
    }

    public func evalUnits() -> [[Int]] { chunks(valEpisodes, config.maml.chunkSize) }

    /// Units ordered by estimated cost (prefix items to run), costliest first.
    public func dispatchOrder(_ units: [[Int]], split: SplitKind) -> [Int] {
        let ep = dataset.episodes(split)
        let cost = units.map { u in
            u.reduce(0) { acc, e in
                acc + ep.supportPairs(e).reduce(0) { $0 + dataset.prefixLength(Int($1)) } * (config.maml.innerSteps + 1)
                    + ep.queryPairs(e).reduce(0) { $0 + dataset.prefixLength(Int($1)) }
            }
        }
        return units.indices.sorted { cost[$0] != cost[$1] ? cost[$0] > cost[$1] : $0 < $1 }
    }

    func chunks(_ a: [Int], _ n: Int) -> [[Int]] {
        stride(from: 0, to: a.count, by: n).map { Array(a[$0..<min($0 + n, a.count)]) }
    }

    public func evalDue(_ t: Int) -> Bool { !valEpisodes.isEmpty && t % config.eval.every == 0 }
    public func checkpointDue(_ t: Int) -> Bool { t % config.checkpoint.every == 0 }

    /// One unit's result as the coordinator received it: float32 runs that may be
    /// unaligned views into received frames, valid for the duration of the call.
    public struct UnitSums {
        public var gradTheta: UnsafeRawBufferPointer
        /// Meta-SGD only (empty otherwise).
        public var gradAlpha: UnsafeRawBufferPointer
        public var lossSum: Double
        public var tasks: Int
        public init(gradTheta: UnsafeRawBufferPointer, gradAlpha: UnsafeRawBufferPointer, lossSum: Double, tasks: Int) {
            self.gradTheta = gradTheta; self.gradAlpha = gradAlpha; self.lossSum = lossSum; self.tasks = tasks
        }
    }

    /// Reduces one iteration's unit results (IN UNIT ORDER: the sums are added in
    /// this order, so the bits do not depend on which worker computed what),
    /// divides by the number of tasks, clips, and takes the Adam step.
    /// Returns the mean meta-loss and the gradient norm before clipping.
    public func applyTrain(_ units: [UnitSums], plan: TrainPlan, iteration t: Int) throws -> (loss: Double, gradNorm: Double) {
        precondition(t == iteration + 1, "iteration \(t) applied after \(iteration)")
        guard !units.isEmpty, units.count == plan.units.count else {
            throw MetatrainError("iteration \(t) has \(units.count) unit results for \(plan.units.count) units")
        }
        let n = layout.count
        for u in units {
            guard u.gradTheta.count == 4 * n, u.gradAlpha.count == (gradAlpha == nil ? 0 : 4 * n) else {
                throw MetatrainError("unit result has \(u.gradTheta.count / 4)+\(u.gradAlpha.count / 4) gradient entries, expected \(n)")
            }
        }
        // Re-join split chunks in task order, then add the chunk sums over the
        // fixed reduction tree on chunk indices (one fused pass, squares included). Every
        // worker is waiting for the new weights now, so two threads share the
        // work on two fixed halves of the vector: each element gets the same
        // additions, and the squares add up as (half 1 + half 2), whatever the
        // machine.
        var tasks = 0, chunkLosses: [Double] = []
        for pieces in plan.chunkUnits {
            var chunkLoss = 0.0
            for p in pieces { tasks += units[p].tasks; chunkLoss += units[p].lossSum }
            chunkLosses.append(chunkLoss)
        }
        let tree = ReductionTree(leaves: plan.chunkUnits.count)
        let loss = tree.sum(chunkLosses.enumerated().map { ($0..<($0 + 1), $1) })
        let thetaPieces = plan.chunkUnits.map { $0.map { units[$0].gradTheta.baseAddress! } }
        let alphaPieces = gradAlpha == nil ? [] : plan.chunkUnits.map { $0.map { units[$0].gradAlpha.baseAddress! } }
        let joins = plan.chunkUnits.filter { $0.count > 1 }.count * (gradAlpha == nil ? 1 : 2)
        while scratch.count < joins { scratch.append(FloatBuffer(count: n)) }
        let mid = n / 2 / 8 * 8
        let work = ReduceWork(tree: tree, thetaPieces: thetaPieces, alphaPieces: alphaPieces, scratch: Array(scratch.prefix(joins)),
                              gradTheta: gradTheta, gradAlpha: gradAlpha, halves: [0..<mid, mid..<n])
        DispatchQueue.concurrentPerform(iterations: 2) { work.run(half: $0) }
        let sq = (work.squares[0] + work.squares[1]) + (work.squares[2] + work.squares[3])
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

    static func periodicCheckpoints(in run: RunDirectory) throws -> [String] {
        let dir = run.file("checkpoints")
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        return names.filter { $0.hasPrefix("iter-") && $0.hasSuffix(".h5") }.sorted().map { dir + "/" + $0 }
    }

    public static func latestCheckpoint(in run: RunDirectory) throws -> String? { try periodicCheckpoints(in: run).last }

    /// Drops metrics.jsonl lines logged after `t` (written before a crash, recomputed now).
    func truncateMetrics(after t: Int) throws {
        let p = run.file("metrics.jsonl")
        guard let text = try? String(contentsOfFile: p, encoding: .utf8) else { return }
        let keep = text.split(separator: "\n").filter { line in
            guard let j = try? JSON.parse(String(line)), let it = j["iteration"]?.double else { return false }
            return Int(it) <= t
        }
        try writeFileAtomically(p, contents: keep.map { $0 + "\n" }.joined())
    }

}

/// What a worker computes for one unit, on the weights it holds.
public final class UnitComputer {
    public let config: Config
    public let dataset: Dataset
    public let dims: ModelDims
    public let layout: ParameterLayout
    let learner: MetaLearner
    let algorithm: MetaAlgorithm
    let weighting: SupportWeighting
    let evaluator: Evaluator
    public let theta: FloatBuffer
    public let alpha: FloatBuffer?
    let gradTheta: FloatBuffer
    let gradAlpha: FloatBuffer?
    var task = MetaTask(support: PackedBatch(), query: PackedBatch())

    public init(config: Config, dataset: Dataset) {
        self.config = config; self.dataset = dataset
        dims = ModelDims(V: dataset.nItems, E: config.model.embeddingDim, H: config.model.hiddenDim)
        layout = ParameterLayout(dims)
        let model = GRU4Rec(dims: dims)
        learner = MetaLearner(model: model)
        learner.sparseEmbeddingSweeps = true   // install() tells it when θ changes
        algorithm = MetaAlgorithm(config: config, layout: layout)
        weighting = SupportWeighting(config.weighting)
        evaluator = Evaluator(dataset: dataset, split: .val, limit: 1)
        theta = FloatBuffer(count: layout.count)
        let metasgd = config.maml.algorithm == .metasgd
        alpha = metasgd ? FloatBuffer(count: layout.count) : nil
        gradTheta = FloatBuffer(count: layout.count)
        gradAlpha = metasgd ? FloatBuffer(count: layout.count) : nil
    }

    /// Copies published weights in (float32 runs, possibly unaligned views into
    /// a received frame); throws if their size does not match this run's model.
    public func install(theta t: UnsafeRawBufferPointer, alpha a: UnsafeRawBufferPointer) throws {
        guard t.count == 4 * layout.count, a.count == (alpha == nil ? 0 : 4 * layout.count) else {
            throw MetatrainError("weights of \(t.count / 4)+\(a.count / 4) floats do not fit this model (\(layout.count) parameters)")
        }
        UnsafeMutableRawPointer(theta.ptr).copyMemory(from: t.baseAddress!, byteCount: t.count)
        if let alpha { UnsafeMutableRawPointer(alpha.ptr).copyMemory(from: a.baseAddress!, byteCount: a.count) }
        learner.weightsChanged()
    }

    /// Σ over the unit's train episodes (in order) of task gradients and meta-losses.
    /// The gradient buffers are this computer's own: valid until its next call.
    public func train(episodes: [Int]) -> (gradTheta: FloatBuffer, gradAlpha: FloatBuffer?, lossSum: Double, tasks: Int) {
        gradTheta.zero(); gradAlpha?.zero()
        let ep = dataset.episodes(.train)
        var loss = 0.0
        for e in episodes {
            let s = ep.supportPairs(e)
            task.support.pack(pairs: s, of: dataset, weights: weighting.weights(s, in: dataset))
            task.query.pack(pairs: ep.queryPairs(e), of: dataset)
            loss += Double(learner.accumulate(theta: theta, alpha: alpha, task: task, algorithm: algorithm,
                                              gradTheta: gradTheta, gradAlpha: gradAlpha))
        }
        return (gradTheta, gradAlpha, loss, episodes.count)
    }

    /// Per val episode: metric sums and adapted query loss.
    public func eval(episodes: [Int]) -> [(MetricSums, Float)] {
        evaluator.fewShot(theta, dims: dims, policy: FewShotPolicy(metaConfig: config, layout: layout, rates: alpha),
                          episodes: episodes)
    }
}

/// One iteration's reduce over two fixed halves of the parameter vector, one
/// thread each (see MetaTrainer.applyTrain). The pointers are valid for the call.
final class ReduceWork: @unchecked Sendable {
    let tree: ReductionTree
    let thetaPieces: [[UnsafeRawPointer]], alphaPieces: [[UnsafeRawPointer]]
    let scratch: [FloatBuffer]
    let gradTheta: FloatBuffer, gradAlpha: FloatBuffer?
    let halves: [Range<Int>]
    /// Σ squares of θ's gradient in each half, then α's.
    var squares = [Double](repeating: 0, count: 4)
    private let lock = NSLock()

    init(tree: ReductionTree, thetaPieces: [[UnsafeRawPointer]], alphaPieces: [[UnsafeRawPointer]], scratch: [FloatBuffer],
         gradTheta: FloatBuffer, gradAlpha: FloatBuffer?, halves: [Range<Int>]) {
        self.tree = tree
        self.thetaPieces = thetaPieces; self.alphaPieces = alphaPieces; self.scratch = scratch
        self.gradTheta = gradTheta; self.gradAlpha = gradAlpha; self.halves = halves
    }

    func run(half h: Int) {
        let r = halves[h], at = 4 * r.lowerBound
        var nextScratch = 0
        func reduce(_ chunks: [[UnsafeRawPointer]], into out: FloatBuffer) -> Double {
            var sources: [(node: Range<Int>, source: UnsafeRawPointer)] = []
            for (c, pieces) in chunks.enumerated() {
                if pieces.count == 1 { sources.append((c..<(c + 1), pieces[0])); continue }
                let buf = scratch[nextScratch]
                nextScratch += 1
                _ = sumInOrder(pieces.map { $0 + at }, count: r.count, into: buf.ptr + r.lowerBound)
                sources.append((c..<(c + 1), UnsafeRawPointer(buf.ptr)))
            }
            return treeSum(tree, sources, range: r, into: out.ptr)
        }
        let sqTheta = reduce(thetaPieces, into: gradTheta)
        let sqAlpha = gradAlpha.map { reduce(alphaPieces, into: $0) } ?? 0
        lock.lock(); squares[h] = sqTheta; squares[2 + h] = sqAlpha; lock.unlock()
    }
}

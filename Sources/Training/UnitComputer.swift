import Core
import Datasets
import Evaluation
import ExperimentConfig
import GRU4Rec
import Kernels
import MetaLearning

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
    /// θ's and α's sizes (ModelPayload).
    public let payload: ModelPayload
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
        learner.sparseEmbeddingSweeps = true // install() tells it when θ changes
        algorithm = MetaAlgorithm(config: config, layout: layout)
        weighting = SupportWeighting(config.weighting)
        evaluator = Evaluator(dataset: dataset, split: .val, limit: 1)
        payload = ModelPayload(config: config, items: dataset.nItems)
        theta = FloatBuffer(count: layout.count)
        let metasgd = payload.alpha > 0
        alpha = metasgd ? FloatBuffer(count: layout.count) : nil
        gradTheta = FloatBuffer(count: layout.count)
        gradAlpha = metasgd ? FloatBuffer(count: layout.count) : nil
    }

    /// Copies published weights in (float32 runs, possibly unaligned views into
    /// a received frame); throws if their size does not match this run's model.
    public func install(theta t: UnsafeRawBufferPointer, alpha a: UnsafeRawBufferPointer) throws {
        guard t.count == 4 * payload.theta, a.count == 4 * payload.alpha else {
            throw MetatrainError(
                "weights of \(t.count / 4)+\(a.count / 4) floats do not fit this model (\(layout.count) parameters)")
        }
        UnsafeMutableRawPointer(theta.ptr).copyMemory(from: t.baseAddress!, byteCount: t.count)
        if let alpha { UnsafeMutableRawPointer(alpha.ptr).copyMemory(from: a.baseAddress!, byteCount: a.count) }
        learner.weightsChanged()
    }

    /// Σ over the unit's train episodes (in order) of task gradients and meta-losses.
    /// The gradient buffers are this computer's own: valid until its next call.
    public func train(episodes: [Int]) -> (gradTheta: FloatBuffer, gradAlpha: FloatBuffer?, lossSum: Double, tasks: Int)
    {
        train(leaves: [episodes])
    }

    /// A block's sum: each leaf (chunk) summed over its episodes in order, and
    /// the leaves added over the reduction tree of `leaves.count` leaves (the
    /// shape of the block's node in the phase's tree), so the result is the
    /// node's sum bit for bit whoever computes it. Depth + 1 buffers suffice:
    /// a left child's sum waits while its right sibling is computed.
    public func train(leaves: [[Int]]) -> (gradTheta: FloatBuffer, gradAlpha: FloatBuffer?, lossSum: Double, tasks: Int)
    {
        precondition(!leaves.isEmpty, "a unit has at least one leaf")
        var level = 0
        func node(_ r: Range<Int>, into g: (FloatBuffer, FloatBuffer?)) -> Double {
            if r.count == 1 { return leaf(leaves[r.lowerBound], into: g) }
            let (a, b) = ReductionTree.children(r)
            let left = node(a, into: g)
            level += 1
            while spare.count < level {
                spare.append((FloatBuffer(count: layout.count), alpha == nil ? nil : FloatBuffer(count: layout.count)))
            }
            let s = spare[level - 1]
            let right = node(b, into: s)
            level -= 1
            add(s.0, into: g.0)
            if let x = s.1, let y = g.1 { add(x, into: y) }
            return left + right
        }
        let loss = node(0..<leaves.count, into: (gradTheta, gradAlpha))
        return (gradTheta, gradAlpha, loss, leaves.reduce(0) { $0 + $1.count })
    }

    /// Buffers for right subtrees' sums, by depth.
    private var spare: [(FloatBuffer, FloatBuffer?)] = []

    /// y = y + x, element by element (the tree's (left) + (right)).
    private func add(_ x: FloatBuffer, into y: FloatBuffer) {
        let n = layout.count
        for i in 0..<n { y.ptr[i] = y.ptr[i] + x.ptr[i] }
    }

    /// One leaf: its episodes' task gradients summed in order from zero into `g`.
    private func leaf(_ episodes: [Int], into g: (FloatBuffer, FloatBuffer?)) -> Double {
        g.0.zero(); g.1?.zero()
        let ep = dataset.episodes(.train)
        var loss = 0.0
        for e in episodes {
            let s = ep.supportPairs(e)
            task.support.pack(pairs: s, of: dataset, weights: weighting.weights(s, in: dataset))
            task.query.pack(pairs: ep.queryPairs(e), of: dataset)
            loss += Double(
                learner.accumulate(
                    theta: theta, alpha: alpha, task: task, algorithm: algorithm,
                    gradTheta: g.0, gradAlpha: g.1))
        }
        return loss
    }

    /// Per val episode: metric sums and adapted query loss.
    public func eval(episodes: [Int]) -> [(MetricSums, Float)] {
        evaluator.fewShot(
            theta, dims: dims, policy: FewShotPolicy(metaConfig: config, layout: layout, rates: alpha),
            episodes: episodes)
    }
}

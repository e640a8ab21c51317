import Coordination
import Core
import Datasets
import Dispatch
import ExperimentConfig
import Foundation
import Kernels
import Wire

extension TrainPlan {
    /// One unit per block of `blocks` (a partition of the tree into nodes),
    /// handed out biggest first (then costliest first).
    public static func blocks(_ chunks: [[Int]], _ blocks: [Range<Int>], cost: ([Int]) -> Int) -> TrainPlan {
        precondition(
            ReductionTree(leaves: chunks.count).isPartition(blocks), "blocks must be a partition of the tree into nodes"
        )
        let units = blocks.map { Array(chunks[$0]) }
        let costs = units.map { $0.reduce(0) { $0 + cost($1) } }
        let order = units.indices.sorted {
            units[$0].count != units[$1].count
                ? units[$0].count > units[$1].count
                : costs[$0] != costs[$1] ? costs[$0] > costs[$1] : $0 < $1
        }
        return TrainPlan(
            leaves: chunks.count, units: units,
            parts: blocks.enumerated().map { Part(node: $1, units: [$0]) }, dispatchOrder: order)
    }
}

extension ReductionTree {
    /// At most `k` nodes that partition the tree, big ones first and halving
    /// towards the end (guided scheduling: hosts take the big blocks first and
    /// the phase ends on single leaves): the last node of more than one leaf
    /// is split until there are `k`. For 8 leaves and k = 4: [0,4) [4,6) [6,7) [7,8).
    public func guidedPartition(into k: Int) -> [Range<Int>] {
        var parts = [root]
        while parts.count < k, let i = parts.lastIndex(where: { $0.count > 1 }) {
            let (a, b) = ReductionTree.children(parts[i])
            parts.replaceSubrange(i...i, with: [a, b])
        }
        return parts
    }
}

/// Estimated cost of computing episodes (prefix items the GRU runs), to hand
/// the costliest work out first so that phases end on cheap units.
public struct UnitCost: Sendable {
    let dataset: Dataset
    let innerSteps: Int
    public init(dataset: Dataset, config: Config) { self.dataset = dataset; innerSteps = config.maml.innerSteps }

    public func cost(_ episodes: [Int], split: SplitKind) -> Int {
        let ep = dataset.episodes(split)
        return episodes.reduce(0) { acc, e in
            acc + ep.supportPairs(e).reduce(0) { $0 + dataset.prefixLength(Int($1)) } * (innerSteps + 1)
                + ep.queryPairs(e).reduce(0) { $0 + dataset.prefixLength(Int($1)) }
        }
    }
}

/// One unit's result as received: float32 runs that may be unaligned views
/// into received frames or shared memory, valid for the duration of a call.
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

extension UnitSums {
    /// A received train result's sums, read where they landed (a frame or shared memory):
    /// the caller keeps `r` alive while these are used (withExtendedLifetime).
    public init(viewing r: TrainResult) {
        self.init(
            gradTheta: UnsafeRawBufferPointer(start: r.gradTheta.baseAddress, count: 4 * r.gradTheta.count),
            gradAlpha: UnsafeRawBufferPointer(start: r.gradAlpha.baseAddress, count: 4 * r.gradAlpha.count),
            lossSum: r.lossSum, tasks: r.tasks)
    }
}

/// Adds a plan's unit results over the reduction tree: the coordinator's
/// reduce (the whole meta-batch) and a host agent's (one block, whose leaves
/// form a tree of the same shape as the block's node). Split leaves re-join in
/// task order first. Two threads take two fixed halves of the vector, so every
/// element gets the same additions whatever the machine.
public final class PlanReducer {
    public let count: Int
    private var scratch: [FloatBuffer] = []

    public init(count: Int) { self.count = count }

    /// The reduced sums: Σ squares of θ's (and α's) tree sum, the meta-loss tree sum and the tasks.
    public struct Sums: Sendable { public var squares: Double, lossSum: Double, tasks: Int }

    /// Writes the tree sum of `units` (in unit order, as `plan` made them) into
    /// `gradTheta` (and `gradAlpha`); throws on results of the wrong size.
    public func reduce(_ units: [UnitSums], plan: TrainPlan, gradTheta: FloatBuffer, gradAlpha: FloatBuffer?) throws
        -> Sums
    {
        let n = count
        guard !units.isEmpty, units.count == plan.units.count else {
            throw MetatrainError("\(units.count) unit results for \(plan.units.count) units")
        }
        for u in units {
            guard u.gradTheta.count == 4 * n, u.gradAlpha.count == (gradAlpha == nil ? 0 : 4 * n) else {
                throw MetatrainError(
                    "a unit result has \(u.gradTheta.count / 4)+\(u.gradAlpha.count / 4) gradient entries, expected \(n)"
                )
            }
        }
        var tasks = 0, partLosses: [(node: Range<Int>, value: Double)] = []
        for part in plan.parts {
            var loss = 0.0
            for u in part.units { tasks += units[u].tasks; loss += units[u].lossSum }
            partLosses.append((part.node, loss))
        }
        let tree = ReductionTree(leaves: plan.leaves)
        let lossSum = tree.sum(partLosses)
        let nodes = plan.parts.map(\.node)
        let thetaPieces = plan.parts.map { $0.units.map { units[$0].gradTheta.baseAddress! } }
        let alphaPieces = gradAlpha == nil ? [] : plan.parts.map { $0.units.map { units[$0].gradAlpha.baseAddress! } }
        let joins = plan.parts.filter { $0.units.count > 1 }.count * (gradAlpha == nil ? 1 : 2)
        while scratch.count < joins { scratch.append(FloatBuffer(count: n)) }
        let mid = n / 2 / 8 * 8
        let work = ReduceWork(
            tree: tree, nodes: nodes, thetaPieces: thetaPieces, alphaPieces: alphaPieces,
            scratch: Array(scratch.prefix(joins)), gradTheta: gradTheta, gradAlpha: gradAlpha,
            halves: [0..<mid, mid..<n])
        DispatchQueue.concurrentPerform(iterations: 2) { work.run(half: $0) }
        let squares = (work.squares[0] + work.squares[1]) + (work.squares[2] + work.squares[3])
        return Sums(squares: squares, lossSum: lossSum, tasks: tasks)
    }
}

/// One reduce over two fixed halves of the parameter vector, one thread each.
/// The pointers are valid for the call.
final class ReduceWork: @unchecked Sendable {
    let tree: ReductionTree
    let nodes: [Range<Int>]
    let thetaPieces: [[UnsafeRawPointer]], alphaPieces: [[UnsafeRawPointer]]
    let scratch: [FloatBuffer]
    let gradTheta: FloatBuffer, gradAlpha: FloatBuffer?
    let halves: [Range<Int>]
    /// Σ squares of θ's gradient in each half, then α's.
    var squares = [Double](repeating: 0, count: 4)
    private let lock = NSLock()

    init(
        tree: ReductionTree, nodes: [Range<Int>], thetaPieces: [[UnsafeRawPointer]], alphaPieces: [[UnsafeRawPointer]],
        scratch: [FloatBuffer], gradTheta: FloatBuffer, gradAlpha: FloatBuffer?, halves: [Range<Int>]
    ) {
        self.tree = tree; self.nodes = nodes
        self.thetaPieces = thetaPieces; self.alphaPieces = alphaPieces; self.scratch = scratch
        self.gradTheta = gradTheta; self.gradAlpha = gradAlpha; self.halves = halves
    }

    func run(half h: Int) {
        let r = halves[h], at = 4 * r.lowerBound
        var nextScratch = 0
        func reduce(_ parts: [[UnsafeRawPointer]], into out: FloatBuffer) -> Double {
            var sources: [(node: Range<Int>, source: UnsafeRawPointer)] = []
            for (node, pieces) in zip(nodes, parts) {
                if pieces.count == 1 { sources.append((node, pieces[0])); continue }
                let buf = scratch[nextScratch]
                nextScratch += 1
                _ = sumInOrder(pieces.map { $0 + at }, count: r.count, into: buf.ptr + r.lowerBound)
                sources.append((node, UnsafeRawPointer(buf.ptr)))
            }
            return treeSum(tree, sources, range: r, into: out.ptr)
        }
        let sqTheta = reduce(thetaPieces, into: gradTheta)
        let sqAlpha = gradAlpha.map { reduce(alphaPieces, into: $0) } ?? 0
        lock.lock(); squares[h] = sqTheta; squares[2 + h] = sqAlpha; lock.unlock()
    }
}

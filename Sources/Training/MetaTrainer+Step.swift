import Coordination
import Core
import ExperimentConfig
import Kernels

/// A reduced meta-gradient (or meta-loss) that is not finite: the step is not taken.
public struct NonFiniteGradient: Error, CustomStringConvertible {
    public let iteration: Int
    /// Episodes of each unit of the iteration.
    public let units: [[Int]]
    public var description: String {
        let list = units.prefix(8).map {
            "[" + $0.prefix(8).map(String.init).joined(separator: ",") + ($0.count > 8 ? ",…" : "") + "]"
        }
        return
            "iteration \(iteration): the summed meta-gradient is not finite (units of episodes \(list.joined(separator: " "))"
            + "\(units.count > 8 ? " …" : "")); the model diverged (lower maml.inner_lr or maml.outer_lr)"
    }
}

// The coordinator's half of an iteration: the tree sum of the units' results,
// the mean over tasks, global-norm clipping and the Adam step.
extension MetaTrainer {
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

    /// Reduces one iteration's unit results (IN UNIT ORDER: the sums are added in
    /// this order, so the bits do not depend on which worker computed what),
    /// divides by the number of tasks, clips, and takes the Adam step.
    /// Returns the mean meta-loss and the gradient norm before clipping.
    public func applyTrain(_ units: [UnitSums], plan: TrainPlan, iteration t: Int) throws -> (
        loss: Double, gradNorm: Double
    ) {
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
        for (k, v) in zip(MetaTrainer.iterationKeys, [Double(t), meanLoss, norm]) {
            history[k, default: []].append(Float(v))
        }
        return (meanLoss, norm)
    }
}

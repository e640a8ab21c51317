import GRU4Rec
import Kernels

/// The inner loop: θ'_{k+1} = θ'_k − α ⊙ ∇L_s(θ'_k), k = 0..<steps, on one
/// support batch, starting from θ. α is one scalar rate or (Meta-SGD) one rate
/// per parameter element. Elements in `frozen` ranges are never updated.
public struct InnerLoop {
    public enum Rate { case scalar(Float), perElement(FloatBuffer) }
    public var steps: Int
    public var rate: Rate
    public var frozen: [Range<Int>]

    public init(steps: Int, rate: Rate, frozen: [Range<Int>] = []) {
        self.steps = steps; self.rate = rate; self.frozen = frozen
    }

    /// Adapts a copy of θ in `adapted` (overwritten), using `grads` as scratch.
    /// Returns the support loss at each step (before its update).
    @discardableResult
    public func adapt(
        model: GRU4Rec, from theta: FloatBuffer, into adapted: FloatBuffer, grads: FloatBuffer,
        support: PackedBatch
    ) -> [Float] {
        adapted.assign(from: theta)
        var losses: [Float] = []
        for _ in 0..<steps {
            grads.zero()
            losses.append(model.lossAndGradient(adapted, grads, support))
            for r in frozen { (grads.ptr + r.lowerBound).update(repeating: 0, count: r.count) }
            let p = adapted.ptr, g = grads.ptr, n = adapted.count
            switch rate {
            case .scalar(let a): for i in 0..<n { p[i] -= a * g[i] }
            case .perElement(let a): for i in 0..<n { p[i] -= a.ptr[i] * g[i] }
            }
        }
        return losses
    }
}

import ExperimentConfig
import GRU4Rec
import Kernels

/// Which meta-gradient a task contributes (docs/FORMATS.md, "Configuration", `maml.*`).
public struct MetaAlgorithm: Sendable {
    public enum Kind: String, Sendable { case fomaml, maml, metasgd }
    public var kind: Kind
    /// Meta-SGD only: differentiate through the inner loop (MAML always does, FOMAML never).
    public var secondOrder: Bool
    public var innerSteps: Int
    /// Scalar inner rate (FOMAML, MAML); Meta-SGD uses its learned per-element rates.
    public var innerLR: Float
    /// Meta-loss (1 − λ)·L_q(θ') + λ·L_q(θ).
    public var residualLambda: Float
    /// Parameter ranges excluded from inner and outer updates (frozen embeddings).
    public var frozen: [Range<Int>]

    public init(
        kind: Kind, secondOrder: Bool = false, innerSteps: Int, innerLR: Float, residualLambda: Float = 0,
        frozen: [Range<Int>] = []
    ) {
        self.kind = kind; self.secondOrder = secondOrder; self.innerSteps = innerSteps; self.innerLR = innerLR
        self.residualLambda = residualLambda; self.frozen = frozen
    }

    /// Whether the gradient flows through the inner loop's Hessians.
    public var usesHessian: Bool { kind == .maml || (kind == .metasgd && secondOrder) }
}

/// One task: a weighted support batch and a query batch.
public struct MetaTask {
    public var support: PackedBatch
    public var query: PackedBatch
    public init(support: PackedBatch, query: PackedBatch) { self.support = support; self.query = query }
}

/// Computes one task's meta-gradient. Owns its workspace (θ'_k for every inner
/// step, support gradients, Hessian-vector scratch), sized once per worker.
///
/// Inner loop: θ'_0 = θ, θ'_{k+1} = θ'_k − α ⊙ ∇L_s(θ'_k) (frozen entries fixed).
/// - FOMAML: ∂/∂θ ≈ ∇L_q(θ'_K).
/// - MAML: the exact chain rule backwards through the loop,
///   v ← ∇L_q(θ'_K); for k = K−1…0: v ← v − H_s(θ'_k)·(α ⊙ P v), where P zeroes
///   frozen entries and H_s·u is a Hessian-vector product.
/// - Meta-SGD: the same walk also accumulates ∂/∂α −= ∇L_s(θ'_k) ⊙ v
///   (first order: v stays ∇L_q(θ'_K)).
/// Residual λ adds λ·∇L_q(θ) and scales the rest by (1 − λ).
///
/// Hessian-vector products are central differences of gradients,
/// H·u ≈ (∇L(θ + εu) − ∇L(θ − εu)) / 2ε with ε = `hvpScale`·‖θ‖∞ / ‖u‖∞;
/// GradientTests measure their error against finite differences of the whole
/// meta-objective.
public final class MetaLearner {
    public let model: GRU4Rec
    public var hvpScale: Float = 1e-3
    private var thetas: [FloatBuffer] = [] // θ'_0 … θ'_K
    private var supportGrads: [FloatBuffer] = [] // ∇L_s(θ'_k)
    private let v: FloatBuffer, u: FloatBuffer, gPlus: FloatBuffer, gMinus: FloatBuffer, probe: FloatBuffer
    private lazy var alphaTask = FloatBuffer(count: model.parameterCount) // this task's ∂/∂α (Meta-SGD)
    /// Which of supportGrads are all zero: FOMAML's step and MAML's forward pass clear a
    /// gradient in the pass that reads it, so the next use needs no separate clearing pass.
    private var gradClean: [Bool] = []

    /// FOMAML's embedding sweeps cover only the rows a task's items touch. The
    /// bits are the same as full sweeps (θ − α·0 = θ, and a running sum from +0
    /// never holds −0, so adding +0 changes nothing), but the learner must be
    /// told when θ's contents change: call `weightsChanged()` (a worker does on
    /// every install). Off by default.
    public var sparseEmbeddingSweeps = false
    /// Embedding rows in which θ'_K may differ from θ (nil: unknown, sweep all).
    private var staleRows: [Int]?
    private var rowMark: [Bool] = []

    /// θ's contents changed: the next task re-derives θ' in full.
    public func weightsChanged() { staleRows = nil }

    /// The rows without repeats, in first-seen order (a row swept twice in one
    /// step would lose its update).
    private func distinct(_ rows: [Int]) -> [Int] {
        if rowMark.count < model.dims.V { rowMark = [Bool](repeating: false, count: model.dims.V) }
        var out: [Int] = []
        for r in rows where !rowMark[r] { rowMark[r] = true; out.append(r) }
        for r in out { rowMark[r] = false }
        return out
    }

    public init(model: GRU4Rec) {
        self.model = model
        let n = model.parameterCount
        v = FloatBuffer(count: n); u = FloatBuffer(count: n)
        gPlus = FloatBuffer(count: n); gMinus = FloatBuffer(count: n); probe = FloatBuffer(count: n)
    }

    private func reserve(_ steps: Int) {
        while thetas.count < steps + 1 { thetas.append(FloatBuffer(count: model.parameterCount)) }
        while supportGrads.count < steps {
            supportGrads.append(FloatBuffer(count: model.parameterCount))
            gradClean.append(true)
        }
    }

    /// Adds the task's meta-gradient into `gradTheta` (and, for Meta-SGD,
    /// `gradAlpha`) and returns the task's meta-loss. `alpha` holds Meta-SGD's rates.
    /// Each element receives the task's contribution in ONE addition, so a sum
    /// over tasks equals, bit for bit, a partial sum plus the remaining tasks'
    /// gradients computed separately (what lets the coordinator split a chunk).
    @discardableResult
    public func accumulate(
        theta: FloatBuffer, alpha: FloatBuffer?, task: MetaTask, algorithm a: MetaAlgorithm,
        gradTheta: FloatBuffer, gradAlpha: FloatBuffer?
    ) -> Float {
        let n = model.parameterCount, K = a.innerSteps
        precondition(
            a.kind != .metasgd || (alpha != nil && gradAlpha != nil), "Meta-SGD needs rates and their gradient")
        reserve(K)
        let plainFirstOrder = a.kind == .fomaml
        if plainFirstOrder {
            // FOMAML needs no θ'_k history: adapt one buffer in place, zeroing the
            // gradient in the same pass as the update (one sweep over θ per step).
            // The first step reads θ and writes θ'_1 (no separate copy of θ), and
            // each step leaves g zeroed for the next step and the next task.
            let cur = thetas[K], g = K > 0 ? supportGrads[0] : v
            if K > 0, !gradClean[0] { g.zero() }
            let lr = a.innerLR
            // With sparse sweeps, the embedding part of a sweep covers only the rows
            // the batch's items touch (their gradient is zero elsewhere), plus, on
            // the first step, the rows θ' still holds from the previous task.
            let sparse = sparseEmbeddingSweeps && K > 0
            let emb = model.layout["embedding.weight"].range, E = model.dims.E
            precondition(emb.lowerBound == 0, "sparse sweeps expect the embedding first in the layout")
            let supportRows = sparse ? distinct(task.support.tokens.map { Int($0) }) : []
            for k in 0..<K {
                model.lossAndGradient(k == 0 ? theta : cur, g, task.support)
                zeroFrozen(g, a.frozen)
                let src = UnsafePointer(k == 0 ? theta.ptr : cur.ptr)
                if !sparse {
                    sgdStepClearing(cur.ptr, from: src, g.ptr, lr: lr, count: n)
                    continue
                }
                sgdStepClearing(
                    cur.ptr + emb.upperBound, from: src + emb.upperBound, g.ptr + emb.upperBound, lr: lr,
                    count: n - emb.upperBound)
                if k == 0, staleRows == nil {
                    sgdStepClearing(
                        cur.ptr + emb.lowerBound, from: src + emb.lowerBound, g.ptr + emb.lowerBound, lr: lr,
                        count: emb.count)
                } else {
                    for r in k == 0 ? distinct(supportRows + staleRows!) : supportRows {
                        let o = emb.lowerBound + r * E
                        sgdStepClearing(cur.ptr + o, from: src + o, g.ptr + o, lr: lr, count: E)
                    }
                }
            }
            if K == 0 { cur.assign(from: theta) }
            staleRows = sparse ? supportRows : (K == 0 ? [] : nil)
            if K > 0 { gradClean[0] = true }
            if K > 0 && a.residualLambda == 0 {
                // The query gradient goes into the (zeroed) g, then into gradTheta in
                // one addition per element, leaving g zeroed again: no separate
                // buffer, memset or sweep for v.
                let queryLoss = model.lossAndGradient(cur, g, task.query)
                if sparse {
                    addClearing(gradTheta.ptr + emb.upperBound, g.ptr + emb.upperBound, count: n - emb.upperBound)
                    for r in distinct(task.query.tokens.map { Int($0) }) {
                        addClearing(gradTheta.ptr + emb.lowerBound + r * E, g.ptr + emb.lowerBound + r * E, count: E)
                    }
                } else {
                    addClearing(gradTheta.ptr, g.ptr, count: n)
                }
                zeroFrozen(gradTheta, a.frozen)
                return queryLoss
            }
        } else {
            staleRows = nil
        }
        // Forward through the inner loop, keeping every θ'_k and ∇L_s(θ'_k) (and, for the
        // Hessian-vector products' step sizes, max |θ'_k|, taken in the pass that writes θ'_k).
        // θ'_0 is θ itself (no copy); MAML, which needs ∇L_s(θ'_k) only to step, clears it
        // in the pass that steps, Meta-SGD keeps it for ∂/∂α.
        func adapted(_ k: Int) -> FloatBuffer { k == 0 ? theta : thetas[k] }
        var thetaMaxAbs = [Float?](repeating: nil, count: K + 1)
        for k in 0..<(plainFirstOrder ? 0 : K) {
            let g = supportGrads[k]
            if !gradClean[k] { g.zero() }
            model.lossAndGradient(adapted(k), g, task.support)
            zeroFrozen(g, a.frozen)
            let next = thetas[k + 1].ptr, cur = adapted(k).ptr, gp = g.ptr
            if a.kind == .metasgd, let alpha {
                let ap = alpha.ptr
                for i in 0..<n { next[i] = cur[i] - ap[i] * gp[i] }
                gradClean[k] = false
            } else {
                thetaMaxAbs[k + 1] = subtractScaledMaxAbsClearing(next, cur, a.innerLR, gp, count: n)
                gradClean[k] = true
            }
        }
        // Chain rule starts at the query loss of the adapted parameters.
        v.zero()
        let queryLoss = model.lossAndGradient(adapted(K), v, task.query)
        if a.kind == .metasgd, gradAlpha != nil { alphaTask.zero() }
        // The embedding rows the support batch reads: the products' sweeps cover only these.
        let supportRows = a.usesHessian ? distinct(task.support.tokens.map { Int($0) }) : []
        if a.kind == .metasgd || a.usesHessian {
            for k in stride(from: K - 1, through: 0, by: -1) {
                if a.kind == .metasgd, gradAlpha != nil {
                    let ga = alphaTask.ptr, gs = supportGrads[k].ptr, vp = v.ptr
                    let scale = 1 - a.residualLambda
                    for i in 0..<n { ga[i] -= scale * gs[i] * vp[i] }
                }
                guard a.usesHessian else { continue }
                // u = α ⊙ P v, then v ← v − H_s(θ'_k)·u.
                var uMaxAbs: Float?
                if a.kind == .metasgd, let alpha {
                    for i in 0..<n { u.ptr[i] = alpha.ptr[i] * v.ptr[i] }
                } else {
                    uMaxAbs = scaleMaxAbs(u.ptr, a.innerLR, v.ptr, count: n)
                }
                if !a.frozen.isEmpty { zeroFrozen(u, a.frozen); uMaxAbs = nil }
                subtractHessianVectorProduct(
                    from: v, at: adapted(k), u, batch: task.support, rows: supportRows, thetaMaxAbs: thetaMaxAbs[k],
                    uMaxAbs: uMaxAbs)
            }
        }
        var metaLoss = queryLoss
        let lambda = a.residualLambda
        let gt = gradTheta.ptr
        if lambda > 0 {
            // λ·∇L_q(θ) on the unadapted parameters.
            gMinus.zero()
            probesClean = false
            let lq0 = model.lossAndGradient(theta, gMinus, task.query)
            metaLoss = (1 - lambda) * queryLoss + lambda * lq0
            for i in 0..<n { gt[i] += (1 - lambda) * v.ptr[i] + lambda * gMinus.ptr[i] }
        } else {
            for i in 0..<n { gt[i] += v.ptr[i] }
        }
        if a.kind == .metasgd, let gradAlpha {
            let ga = gradAlpha.ptr, at = alphaTask.ptr
            for i in 0..<n { ga[i] += at[i] }
        }
        zeroFrozen(gradTheta, a.frozen)
        if let gradAlpha { zeroFrozen(gradAlpha, a.frozen) }
        return metaLoss
    }

    /// Whether gPlus and gMinus are all zero (the products' invariant: each clears them as it
    /// reads them; the residual term's gradient in gMinus breaks it).
    private var probesClean = false
    /// θ'_k − εu, built in the pass that builds θ'_k + εu in `probe`.
    private lazy var probeMinus = FloatBuffer(count: model.parameterCount)

    /// v −= H(θ)·u, the central difference (∇L(θ + εu) − ∇L(θ − εu))·(1/2ε), with the
    /// operations per element of computing it into a buffer and subtracting that (same bits).
    /// The sweeps over θ are a large part of a second-order step (the support batch is
    /// small): both probes are built in one vectorised pass, the difference is subtracted
    /// in the pass that clears the two gradients for the next product, and over the
    /// embedding every pass covers only `rows`, those the batch's items read. Elsewhere the
    /// probes' embedding rows are never read and both gradients are zero there, and
    /// v − (0 − 0)·s is v for every v, −0 and NaN included.
    func subtractHessianVectorProduct(
        from v: FloatBuffer, at theta: FloatBuffer, _ u: FloatBuffer, batch: PackedBatch, rows: [Int],
        thetaMaxAbs: Float? = nil, uMaxAbs: Float? = nil
    ) {
        let n = model.parameterCount
        let uMax = uMaxAbs ?? maxAbs(u.ptr, count: n), tMax = thetaMaxAbs ?? maxAbs(theta.ptr, count: n)
        guard uMax > 0 else { return } // H·0 = 0: v is unchanged
        let eps = hvpScale * max(tMax, 1) / uMax
        let emb = model.layout["embedding.weight"].range, E = model.dims.E
        precondition(emb.lowerBound == 0, "sparse sweeps expect the embedding first in the layout")
        let d = emb.upperBound
        if !probesClean { gPlus.zero(); gMinus.zero() }
        addScaledPair(probe.ptr + d, probeMinus.ptr + d, theta.ptr + d, eps, u.ptr + d, count: n - d)
        for r in rows {
            addScaledPair(probe.ptr + r * E, probeMinus.ptr + r * E, theta.ptr + r * E, eps, u.ptr + r * E, count: E)
        }
        model.lossAndGradient(probe, gPlus, batch)
        model.lossAndGradient(probeMinus, gMinus, batch)
        let s = 1 / (2 * eps)
        subtractScaledDifferenceClearing(v.ptr + d, gPlus.ptr + d, gMinus.ptr + d, s, count: n - d)
        for r in rows {
            subtractScaledDifferenceClearing(v.ptr + r * E, gPlus.ptr + r * E, gMinus.ptr + r * E, s, count: E)
        }
        probesClean = true
    }

    private func zeroFrozen(_ b: FloatBuffer, _ ranges: [Range<Int>]) {
        for r in ranges { (b.ptr + r.lowerBound).update(repeating: 0, count: r.count) }
    }
}

extension MetaAlgorithm {
    /// The algorithm a resolved config asks for (`maml.*`, `warm_start.freeze_embeddings`).
    public init(config c: Config, layout: ParameterLayout) {
        let kind: Kind
        switch c.maml.algorithm {
        case .fomaml: kind = .fomaml;
        case .maml: kind = .maml;
        case .metasgd: kind = .metasgd
        }
        self.init(
            kind: kind, secondOrder: c.maml.secondOrder, innerSteps: c.maml.innerSteps, innerLR: Float(c.maml.innerLR),
            residualLambda: Float(c.maml.residualLambda),
            frozen: c.warmStart.freezeEmbeddings ? [layout["embedding.weight"].range] : [])
    }
}

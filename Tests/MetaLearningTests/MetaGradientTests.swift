import Core
import GRU4Rec
import Kernels
import XCTest

@testable import MetaLearning

/// Each algorithm's task gradient against central finite differences of the
/// whole meta-objective J(θ, α) = (1−λ)·L_q(θ'_K) + λ·L_q(θ) on a tiny model.
final class MetaGradientTests: XCTestCase {
    let model = GRU4Rec(dims: ModelDims(V: 7, E: 3, H: 9))
    lazy var task = MetaTask(
        support: PackedBatch(prefixes: [[1, 2], [3], [4, 5, 6]], labels: [3, 6, 2], weights: [0.5, 1, 2]),
        query: PackedBatch(prefixes: [[2, 3, 1], [5], [6, 4]], labels: [4, 1, 5]))

    func params(_ seed: UInt64) -> FloatBuffer {
        var rng = SeededGenerator(seed: seed)
        let p = model.initialParameters(rng: &rng)
        for i in model.layout["fc.weight"].range { p[i] *= 3 }
        return p
    }

    /// J evaluated directly: run the inner loop with plain gradients, then the query loss.
    func objective(_ theta: FloatBuffer, _ alpha: FloatBuffer?, _ a: MetaAlgorithm) -> Double {
        let cur = theta.copy(), g = FloatBuffer(count: theta.count)
        for _ in 0..<a.innerSteps {
            g.zero(); model.lossAndGradient(cur, g, task.support)
            for r in a.frozen { for i in r { g[i] = 0 } }
            for i in 0..<cur.count { cur[i] -= (alpha?[i] ?? a.innerLR) * g[i] }
        }
        let lam = Double(a.residualLambda)
        return (1 - lam) * Double(model.loss(cur, task.query)) + lam * Double(model.loss(theta, task.query))
    }

    /// Relative L2 error of the analytic gradient against central differences over all entries of `x`.
    func fdError(_ x: FloatBuffer, analytic: FloatBuffer, _ f: () -> Double) -> Double {
        let eps: Float = 1e-2
        var num = 0.0, den = 0.0
        for i in 0..<x.count {
            let s = x[i]
            x[i] = s + eps; let fp = f()
            x[i] = s - eps; let fm = f()
            x[i] = s
            let d = (fp - fm) / Double(2 * eps)
            num += (d - Double(analytic[i])) * (d - Double(analytic[i])); den += d * d
        }
        return (num / den).squareRoot()
    }

    func testMAMLSecondOrderMatchesWholeObjective() {
        let theta = params(1)
        let a = MetaAlgorithm(kind: .maml, innerSteps: 3, innerLR: 0.4, residualLambda: 0.2)
        let g = FloatBuffer(count: theta.count)
        let learner = MetaLearner(model: model)
        let loss = learner.accumulate(theta: theta, alpha: nil, task: task, algorithm: a, gradTheta: g, gradAlpha: nil)
        XCTAssertEqual(Double(loss), objective(theta, nil, a), accuracy: 1e-5)
        let err = fdError(theta, analytic: g) { objective(theta, nil, a) }
        // The first-order approximation is measurably worse on the same objective.
        let fo = FloatBuffer(count: theta.count)
        learner.accumulate(
            theta: theta, alpha: nil, task: task,
            algorithm: MetaAlgorithm(kind: .fomaml, innerSteps: 3, innerLR: 0.4, residualLambda: 0.2),
            gradTheta: fo, gradAlpha: nil)
        let foErr = fdError(theta, analytic: fo) { objective(theta, nil, a) }
        print("MAML relative error \(err), FOMAML relative error \(foErr)")
        XCTAssertLessThan(err, 2e-3)
        XCTAssertGreaterThan(foErr, 5 * err)
    }

    /// The second-order walk as it was written before its sweeps went sparse: every product
    /// over all of θ, in scalar loops (H·u = (∇L(θ'_k + εu) − ∇L(θ'_k − εu))·(1/2ε), then v −= H·u).
    func denseMAML(
        _ model: GRU4Rec, _ theta: FloatBuffer, _ task: MetaTask, _ a: MetaAlgorithm, hvpScale: Float
    ) -> [Float] {
        let n = theta.count, K = a.innerSteps, lr = a.innerLR
        func maxAbs(_ b: FloatBuffer) -> Float { (0..<n).reduce(Float(0)) { max($0, abs(b[$1])) } }
        var thetas = [theta.copy()]
        for k in 0..<K {
            let g = FloatBuffer(count: n), next = FloatBuffer(count: n)
            model.lossAndGradient(thetas[k], g, task.support)
            for i in 0..<n { next[i] = thetas[k][i] - lr * g[i] }
            thetas.append(next)
        }
        let v = FloatBuffer(count: n), u = FloatBuffer(count: n), probe = FloatBuffer(count: n)
        model.lossAndGradient(thetas[K], v, task.query)
        for k in stride(from: K - 1, through: 0, by: -1) {
            for i in 0..<n { u[i] = lr * v[i] }
            let uMax = maxAbs(u)
            guard uMax > 0 else { continue }
            let eps = hvpScale * max(maxAbs(thetas[k]), 1) / uMax
            let plus = FloatBuffer(count: n), minus = FloatBuffer(count: n)
            for i in 0..<n { probe[i] = thetas[k][i] + eps * u[i] }
            model.lossAndGradient(probe, plus, task.support)
            for i in 0..<n { probe[i] = thetas[k][i] + -eps * u[i] }
            model.lossAndGradient(probe, minus, task.support)
            for i in 0..<n { plus[i] = (plus[i] - minus[i]) * (1 / (2 * eps)) }
            for i in 0..<n { v[i] -= plus[i] }
        }
        let lam = a.residualLambda
        guard lam > 0 else { return (0..<n).map { 0 + v[$0] } }
        let g0 = FloatBuffer(count: n)
        model.lossAndGradient(theta, g0, task.query)
        return (0..<n).map { 0 + ((1 - lam) * v[$0] + lam * g0[$0]) }
    }

    /// Second-order MAML sweeps the embedding only over the rows a support batch reads, and
    /// keeps its probes' embedding rows zeroed between tasks: the same bits as dense sweeps,
    /// over tasks that read different rows, with a residual term (which uses the probe
    /// buffers' space) between them.
    func testSecondOrderSparseSweepsHaveTheDenseBits() {
        let big = GRU4Rec(dims: ModelDims(V: 40, E: 4, H: 6))
        var rng = SeededGenerator(seed: 9)
        let theta = big.initialParameters(rng: &rng)
        func t(_ s: [[Int32]], _ q: [[Int32]]) -> MetaTask {
            MetaTask(
                support: PackedBatch(prefixes: s, labels: s.map { ($0.last! % 39) + 1 }, weights: s.map { _ in 1 }),
                query: PackedBatch(prefixes: q, labels: q.map { ($0.first! % 39) + 1 }))
        }
        let tasks = [
            t([[1, 2], [3]], [[2, 3, 1], [5]]), t([[30, 31, 32], [33]], [[7], [8, 9]]),
            t([[10, 11], [12, 13, 14]], [[1, 30]]), t([[1, 2], [3]], [[2, 3, 1], [5]])
        ]
        let learner = MetaLearner(model: big)
        for (j, task) in tasks.enumerated() {
            let a = MetaAlgorithm(kind: .maml, innerSteps: 2, innerLR: 0.3, residualLambda: j == 1 ? 0.2 : 0)
            let g = FloatBuffer(count: theta.count)
            learner.accumulate(theta: theta, alpha: nil, task: task, algorithm: a, gradTheta: g, gradAlpha: nil)
            let want = denseMAML(big, theta, task, a, hvpScale: learner.hvpScale)
            XCTAssertEqual((0..<theta.count).map { g[$0].bitPattern }, want.map(\.bitPattern), "task \(j)")
        }
    }

    func testMetaSGDSecondOrderRatesAndWeights() {
        let theta = params(2)
        let alpha = FloatBuffer(count: theta.count)
        var r = SeededGenerator(seed: 9)
        for i in 0..<alpha.count { alpha[i] = 0.1 + 0.3 * r.uniformFloat() }
        let a = MetaAlgorithm(kind: .metasgd, secondOrder: true, innerSteps: 2, innerLR: 0, residualLambda: 0.1)
        let gt = FloatBuffer(count: theta.count), ga = FloatBuffer(count: theta.count)
        MetaLearner(model: model).accumulate(
            theta: theta, alpha: alpha, task: task, algorithm: a, gradTheta: gt, gradAlpha: ga)
        let errTheta = fdError(theta, analytic: gt) { objective(theta, alpha, a) }
        let errAlpha = fdError(alpha, analytic: ga) { objective(theta, alpha, a) }
        print("Meta-SGD relative error θ \(errTheta), α \(errAlpha)")
        XCTAssertLessThan(errTheta, 2e-3)
        XCTAssertLessThan(errAlpha, 2e-3)
    }

    func testFirstOrderVariantsAreTheirDefinitions() {
        let theta = params(3)
        let learner = MetaLearner(model: model)
        // FOMAML: ∇L_q at the adapted parameters.
        let g = FloatBuffer(count: theta.count)
        learner.accumulate(
            theta: theta, alpha: nil, task: task, algorithm: MetaAlgorithm(kind: .fomaml, innerSteps: 2, innerLR: 0.3),
            gradTheta: g, gradAlpha: nil)
        let adapted = FloatBuffer(count: theta.count), scratch = FloatBuffer(count: theta.count),
            want = FloatBuffer(count: theta.count)
        InnerLoop(steps: 2, rate: .scalar(0.3)).adapt(
            model: model, from: theta, into: adapted, grads: scratch, support: task.support)
        model.lossAndGradient(adapted, want, task.query)
        for i in 0..<g.count { XCTAssertEqual(g[i], want[i], accuracy: 1e-6) }
        // First-order Meta-SGD: ∂/∂α = −Σ_k ∇L_s(θ'_k) ⊙ ∇L_q(θ'_K).
        let alpha = FloatBuffer(count: theta.count)
        for i in 0..<alpha.count { alpha[i] = 0.2 }
        let gt = FloatBuffer(count: theta.count), ga = FloatBuffer(count: theta.count)
        learner.accumulate(
            theta: theta, alpha: alpha, task: task, algorithm: MetaAlgorithm(kind: .metasgd, innerSteps: 1, innerLR: 0),
            gradTheta: gt, gradAlpha: ga)
        let gs = FloatBuffer(count: theta.count), gq = FloatBuffer(count: theta.count)
        model.lossAndGradient(theta, gs, task.support)
        for i in 0..<theta.count { adapted[i] = theta[i] - 0.2 * gs[i] }
        model.lossAndGradient(adapted, gq, task.query)
        for i in 0..<theta.count {
            XCTAssertEqual(gt[i], gq[i], accuracy: 1e-6)
            XCTAssertEqual(ga[i], -gs[i] * gq[i], accuracy: 1e-6)
        }
    }

    func testFrozenEmbeddingsGetNoGradientAndStayFixed() {
        let theta = params(4)
        let emb = model.layout["embedding.weight"].range
        let a = MetaAlgorithm(kind: .maml, innerSteps: 2, innerLR: 0.3, frozen: [emb])
        let g = FloatBuffer(count: theta.count)
        MetaLearner(model: model).accumulate(
            theta: theta, alpha: nil, task: task, algorithm: a, gradTheta: g, gradAlpha: nil)
        for i in emb { XCTAssertEqual(g[i], 0) }
        // Non-frozen entries still match the objective (with embeddings held fixed).
        let rest = FloatBuffer(count: theta.count)
        for i in 0..<theta.count where !emb.contains(i) { rest[i] = g[i] }
        let eps: Float = 1e-2
        for i in model.layout["gru.weight_hh_l0"].range.prefix(40) {
            let s = theta[i]
            theta[i] = s + eps; let fp = objective(theta, nil, a)
            theta[i] = s - eps; let fm = objective(theta, nil, a)
            theta[i] = s
            XCTAssertEqual((fp - fm) / Double(2 * eps), Double(rest[i]), accuracy: 2e-3)
        }
    }
}

import Core
import Datasets
import ExperimentConfig
import GRU4Rec
import Kernels
import XCTest

@testable import MetaLearning

/// A tiny in-memory dataset: one user, pairs with given prefixes/labels/reliabilities.
func tinyDataset(prefixes: [[Int32]], labels: [Int32], reliability: [Float], V: Int) -> Dataset {
    var offsets: [Int64] = [0], items: [Int32] = []
    for p in prefixes { items += p; offsets.append(Int64(items.count)) }
    return Dataset(
        itemIds: (0..<V).map { $0 == 0 ? "<pad>" : "i\($0)" }, itemCounts: [Int64](repeating: 1, count: V),
        userIds: ["u"], userSplit: [0], pairUser: [Int32](repeating: 0, count: labels.count),
        prefixOffsets: offsets, prefixItems: items, label: labels,
        timestamp: [Int64](repeating: 0, count: labels.count), reliability: reliability, episodes: [:],
        maxSeqLen: 50, kSupport: 1, qQuery: 1, source: "test")
}

final class WeightingTests: XCTestCase {
    let d = tinyDataset(prefixes: [[1], [2], [3], [4]], labels: [2, 3, 4, 1], reliability: [0.5, 0.1, 1, 0.25], V: 5)

    func testSchemes() {
        let pairs: [Int64] = [0, 1, 2, 3]
        XCTAssertEqual(SupportWeighting(scheme: .uniform).weights(pairs, in: d), [1, 1, 1, 1])
        XCTAssertEqual(SupportWeighting(scheme: .reliability).weights(pairs, in: d), [0.5, 0.1, 1, 0.25])
        let exp = SupportWeighting(scheme: .recency, recencyKind: .exponential, lambda: 0.5).weights(pairs, in: d)
        for (i, w) in exp.enumerated() {
            XCTAssertEqual(Double(w), Foundation.exp(-0.5 * Double(3 - i)), accuracy: 1e-6)
        }
        XCTAssertEqual(
            SupportWeighting(scheme: .recency, recencyKind: .linear).weights(pairs, in: d), [0.25, 0.5, 0.75, 1])
        let sm = SupportWeighting(scheme: .recency, recencyKind: .softmax, temperature: 2).weights(pairs, in: d)
        XCTAssertEqual(Double(sm.reduce(0, +)), 1, accuracy: 1e-6)
        XCTAssertEqual(Double(sm[3] / sm[2]), Foundation.exp(0.5), accuracy: 1e-5)
        let both = SupportWeighting(scheme: .recencyReliability, recencyKind: .linear).weights(pairs, in: d)
        XCTAssertEqual(both, [0.125, 0.05, 0.75, 0.25])
    }
}

final class InnerLoopTests: XCTestCase {
    func testAdaptationLowersSupportLossAndRespectsFrozenRanges() {
        let model = GRU4Rec(dims: ModelDims(V: 8, E: 3, H: 4))
        var rng = SeededGenerator(seed: 3)
        let theta = model.initialParameters(rng: &rng)
        let support = PackedBatch(prefixes: [[1, 2], [3], [4, 5, 6]], labels: [3, 7, 2])
        let adapted = FloatBuffer(count: theta.count), g = FloatBuffer(count: theta.count)
        let emb = model.layout["embedding.weight"].range
        let losses = InnerLoop(steps: 20, rate: .scalar(0.5), frozen: [emb])
            .adapt(model: model, from: theta, into: adapted, grads: g, support: support)
        XCTAssertLessThan(losses.last!, losses.first! * 0.7)
        for i in emb { XCTAssertEqual(adapted[i], theta[i]) }
        XCTAssertNotEqual(adapted[model.layout["fc.bias"].offset + 3], theta[model.layout["fc.bias"].offset + 3])
        // Per-element rates: zero rate on fc.bias leaves it untouched.
        let rates = FloatBuffer(count: theta.count)
        for i in 0..<rates.count { rates[i] = 0.5 }
        for i in model.layout["fc.bias"].range { rates[i] = 0 }
        InnerLoop(steps: 3, rate: .perElement(rates)).adapt(
            model: model, from: theta, into: adapted, grads: g, support: support)
        for i in model.layout["fc.bias"].range { XCTAssertEqual(adapted[i], theta[i]) }
        XCTAssertNotEqual(adapted[emb.lowerBound + 3], theta[emb.lowerBound + 3])
    }
}

final class SamplingTests: XCTestCase {
    func testBatchesDependOnSeedAndIterationOnly() {
        // 6 users with 1..6 train episodes each.
        var user: [Int32] = []
        for u in 0..<6 { user += [Int32](repeating: Int32(u), count: u + 1) }
        var d = tinyDataset(prefixes: [[1]], labels: [2], reliability: [1], V: 5)
        d.episodes[.train] = Episodes(
            k: 1, q: 1, support: [Int64](repeating: 0, count: user.count),
            query: [Int64](repeating: 0, count: user.count), user: user)
        let s = MetaBatchSampler(dataset: d, seed: 7, batchSize: 4)
        let again = MetaBatchSampler(dataset: d, seed: 7, batchSize: 4)
        XCTAssertEqual(s.batch(iteration: 12), again.batch(iteration: 12))
        XCTAssertNotEqual(s.batch(iteration: 12), s.batch(iteration: 13))
        XCTAssertNotEqual(
            s.batch(iteration: 12), MetaBatchSampler(dataset: d, seed: 8, batchSize: 4).batch(iteration: 12))
        for t in 0..<50 {
            let b = s.batch(iteration: t)
            XCTAssertEqual(b.count, 4)
            XCTAssertEqual(Set(b.map { user[$0] }).count, 4, "users must be distinct")
        }
        // Every episode of every user is reachable.
        var seen = Set<Int>()
        for t in 0..<400 { seen.formUnion(s.batch(iteration: t)) }
        XCTAssertEqual(seen.count, user.count)
        XCTAssertEqual(MetaBatchSampler(dataset: d, seed: 7, batchSize: 32).batchSize, 6)
    }
}

final class SparseSweepTests: XCTestCase {
    /// FOMAML with sparse embedding sweeps gives the bits of full sweeps, over a
    /// sequence of tasks with different items (rows left over from one task must
    /// be restored for the next) and a change of θ in between, with and without
    /// frozen embeddings.
    func testSparseSweepsHaveTheBitsOfFullSweeps() {
        let dims = ModelDims(V: 40, E: 4, H: 5)
        var rng = SeededGenerator(seed: 11)
        func batch(_ n: Int) -> PackedBatch {
            let prefixes = (0..<n).map { i in (0...i).map { _ in Int32(1 + rng.below(dims.V - 1)) } }
            return PackedBatch(
                prefixes: prefixes, labels: prefixes.map { _ in Int32(1 + rng.below(dims.V - 1)) },
                weights: (0..<n).map { Float($0 + 1) })
        }
        let tasks = (0..<6).map { _ in MetaTask(support: batch(3), query: batch(4)) }
        for frozen in [false, true] {
            let layout = ParameterLayout(dims)
            let algorithm = MetaAlgorithm(
                kind: .fomaml, innerSteps: 3, innerLR: 0.3,
                frozen: frozen ? [layout["embedding.weight"].range] : [])
            var results: [[UInt32]] = []
            for sparse in [false, true] {
                let model = GRU4Rec(dims: dims)
                var init0 = SeededGenerator(seed: 5)
                let theta = model.initialParameters(rng: &init0)
                let learner = MetaLearner(model: model)
                learner.sparseEmbeddingSweeps = sparse
                var bits: [UInt32] = []
                for (i, t) in tasks.enumerated() {
                    if i == 3 { // new weights, as a worker installs them
                        for j in 0..<theta.count { theta[j] *= 0.9 }
                        learner.weightsChanged()
                    }
                    let g = FloatBuffer(count: theta.count)
                    let loss = learner.accumulate(
                        theta: theta, alpha: nil, task: t, algorithm: algorithm, gradTheta: g, gradAlpha: nil)
                    bits += g.array.map(\.bitPattern) + [loss.bitPattern]
                }
                results.append(bits)
            }
            XCTAssertEqual(results[0], results[1], "frozen: \(frozen)")
        }
    }
}

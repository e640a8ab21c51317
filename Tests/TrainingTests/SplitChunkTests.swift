import XCTest
import Configuration
import Core
import Data
import Kernels
@testable import Training

/// A chunk split into pieces (its first half summed, then single tasks) and
/// re-joined by the coordinator gives the weights of the chunk sent whole, bit
/// for bit, for every algorithm: what lets the coordinator end a phase on
/// single tasks without breaking "same bits whatever the number of workers".
final class SplitChunkTests: XCTestCase {
    func testSplitPlansGiveTheWeightsOfWholeChunks() throws {
        let dir = NSTemporaryDirectory() + "mt-split-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = SynthOptions(); o.users = 120; o.courses = 40; o.groups = 4; o.seed = 5
        _ = try Synth.write(to: dir + "/e.csv", options: o)
        let base = ["model.embedding_dim=8", "model.hidden_dim=12", "maml.meta_batch_size=10", "maml.chunk_size=4",
                    "maml.inner_steps=2", "maml.clip_norm=0.05", "weighting.scheme=reliability"]
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: try Config.load(path: nil, overrides: base))
        let variants = [["maml.algorithm=fomaml"],
                        ["maml.algorithm=maml", "maml.residual_lambda=0.1"],
                        ["maml.algorithm=metasgd", "maml.second_order=true"]]
        for (k, variant) in variants.enumerated() {
            let config = try Config.load(path: nil, overrides: base + variant)
            var weights: [[Float]] = []
            for split in [0, 1, 2, 3] {
                let trainer = try MetaTrainer(config: config, dataset: d, run: try RunDirectory(dir + "/r\(k)-\(split)", logName: "c.log"),
                                              resume: false)
                let computer = UnitComputer(config: config, dataset: d)
                for t in 1...2 {
                    try computer.install(theta: UnsafeRawBufferPointer(trainer.theta.buffer),
                                         alpha: trainer.alpha.map { UnsafeRawBufferPointer($0.buffer) } ?? UnsafeRawBufferPointer(start: nil, count: 0))
                    let plan = trainer.trainPlan(iteration: t, split: split)
                    // Whole chunks, or the first half summed and then single tasks; every task once.
                    XCTAssertEqual(plan.chunkUnits.flatMap { $0 }.sorted(), Array(plan.units.indices))
                    XCTAssertEqual(plan.chunkUnits.flatMap { $0.flatMap { plan.units[$0] } }, trainer.trainUnits(iteration: t).flatMap { $0 })
                    XCTAssertEqual(plan.chunkUnits.filter { $0.count > 1 }.count, min(split, 2))
                    XCTAssertEqual(plan.dispatchOrder.sorted(), Array(plan.units.indices))
                    // Each unit computed on its own (copies: the computer reuses its buffers).
                    let results = plan.units.map { u -> (FloatBuffer, FloatBuffer?, Double, Int) in
                        let r = computer.train(episodes: u)
                        return (r.gradTheta.copy(), r.gradAlpha?.copy(), r.lossSum, r.tasks)
                    }
                    // The coordinator's gradient is the reduction tree over chunk sums (pieces re-joined in task
                    // order first), not the chunk-order fold.
                    let chunkSums: [[Float]] = plan.chunkUnits.map { pieces in
                        var s = results[pieces[0]].0.array
                        for p in pieces.dropFirst() { let g = results[p].0.array; for i in s.indices { s[i] += g[i] } }
                        return s
                    }
                    func tree(_ r: Range<Int>, _ i: Int) -> Float {
                        if r.count == 1 { return chunkSums[r.lowerBound][i] }
                        let (a, b) = ReductionTree.children(r)
                        return tree(a, i) + tree(b, i)
                    }
                    let expected = (0..<chunkSums[0].count).map { tree(0..<chunkSums.count, $0) }
                    // The buffers must outlive the call that reads them through raw pointers.
                    _ = try withExtendedLifetime(results) {
                        try trainer.applyTrain(results.map {
                            MetaTrainer.UnitSums(gradTheta: UnsafeRawBufferPointer($0.0.buffer),
                                                 gradAlpha: $0.1.map { UnsafeRawBufferPointer($0.buffer) } ?? UnsafeRawBufferPointer(start: nil, count: 0),
                                                 lossSum: $0.2, tasks: $0.3)
                        }, plan: plan, iteration: t)
                    }
                    XCTAssertEqual(trainer.gradTheta.array.map(\.bitPattern), expected.map(\.bitPattern), "tree reduction")
                }
                weights.append(trainer.theta.array + (trainer.alpha?.array ?? []))
            }
            let n = weights[0].count
            for (split, w) in weights.enumerated().dropFirst() {
                let differ = (0..<n).filter { w[$0].bitPattern != weights[0][$0].bitPattern }
                XCTAssertEqual(differ.count, 0, "\(variant), split \(split): \(differ.count) of \(n) values differ, first at \(differ.first ?? -1)")
            }
            XCTAssertNotEqual(weights[0], try MetaTrainer(config: config, dataset: d, run: try RunDirectory(dir + "/fresh\(k)", logName: "c.log"),
                                                          resume: false).theta.array, "the steps moved the weights")
        }
    }
}

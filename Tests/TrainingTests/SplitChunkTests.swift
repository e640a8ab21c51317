import Coordination
import Core
import Datasets
import ExperimentConfig
import Kernels
import Wire
import XCTest

@testable import Training

/// Every way of handing a meta-batch out gives the same bits, for every
/// algorithm: chunks whole or cut into pieces (the first half summed, then
/// single tasks) and re-joined, blocks of the reduction tree summed by one
/// worker, or blocks that a host agent cuts up again and pre-reduces. That is
/// what "same bits whatever the number of workers and hosts" rests on.
final class SplitChunkTests: XCTestCase {
    func unitSums(_ r: (FloatBuffer, FloatBuffer?, Double, Int)) -> UnitSums {
        UnitSums(
            gradTheta: UnsafeRawBufferPointer(r.0.buffer),
            gradAlpha: r.1.map { UnsafeRawBufferPointer($0.buffer) } ?? UnsafeRawBufferPointer(start: nil, count: 0),
            lossSum: r.2, tasks: r.3)
    }

    /// A block through a host agent's own machine, as `HostAgent` runs it: four
    /// processes join its inner run, the block comes with its weights, the machine
    /// cuts it and hands its pieces out, each piece is computed here, and the
    /// machine's `reduce` is summed as the shell sums it.
    func viaAgentMachine(_ leaves: [[Int]], trainer: MetaTrainer, computer: UnitComputer, reducer: PlanReducer) throws
        -> (FloatBuffer, FloatBuffer?, Double, Int)
    {
        let n = trainer.layout.count, metasgd = trainer.alpha != nil, cost = trainer.cost
        var face = WorkerMachine(name: "agent", datasetFingerprint: "fp", coordinatorTimeout: 1000)
        face.procs = 4
        var agent = AgentMachine(worker: face, innerRunPrefix: "inner")
        var inbox = agent.onStart(now: 0)
        inbox += agent.onMessage(
            Envelope(runId: "run", message: .welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        var innerRun = "", joined = false
        var out: (FloatBuffer, FloatBuffer?, Double, Int)?
        let block = WorkUnit(id: 7, kind: .train, version: 0, leaves: leaves)
        let weights = Weights(
            version: 0, theta: Floats(trainer.theta.array), alpha: trainer.alpha.map { Floats($0.array) } ?? [])
        for _ in 0..<10_000 where out == nil {
            if inbox.isEmpty {
                guard !joined, !innerRun.isEmpty else { break }
                joined = true
                for p in 0..<4 {
                    var process = WorkerMachine(name: "p\(p)", datasetFingerprint: "fp")
                    for case .send(let hello) in process.onStart(now: 0) {
                        inbox += agent.onProcessMessage(
                            Envelope(runId: "", message: hello), from: PeerID([UInt8(p)]), now: 0)
                    }
                    inbox += agent.onProcessMessage(
                        Envelope(runId: innerRun, message: .ready), from: PeerID([UInt8(p)]), now: 0)
                }
                inbox += agent.onMessage(Envelope(runId: "run", message: .work(block)), now: 0)
                inbox += agent.onMessage(Envelope(runId: "run", message: .weights(weights)), now: 0)
                continue
            }
            switch inbox.removeFirst() {
            case .configure:
                inbox += agent.onConfigured(
                    .init(
                        heartbeatInterval: 1, silence: 1000, theta: n, alpha: metasgd ? n : 0,
                        cost: { cost.cost($0, split: .train) }), now: 0)
            case .innerRun(let id):
                innerRun = id
            case .sendDown(let peer, .work(let v)):
                let r = computer.train(leaves: v.leaves)
                let result = TrainResult(
                    unitId: v.id, version: v.version, gradTheta: Floats(r.gradTheta.array),
                    gradAlpha: r.gradAlpha.map { Floats($0.array) } ?? [], lossSum: r.lossSum, tasks: r.tasks)
                inbox += agent.onProcessMessage(
                    Envelope(runId: innerRun, message: .trainResult(result)), from: peer, now: 0)
            case .reduce(let b):
                XCTAssertEqual(b.unit, block)
                XCTAssertEqual(
                    b.plan, TrainPlan.split(leaves, split: 3, cost: { cost.cost($0, split: .train) }),
                    "the block is cut for its four live processes")
                let g = FloatBuffer(count: n), ga = metasgd ? FloatBuffer(count: n) : nil
                let sums = try withExtendedLifetime(b.results) {
                    try reducer.reduce(
                        b.results.map(UnitSums.init(viewing:)), plan: b.plan, gradTheta: g, gradAlpha: ga)
                }
                out = (g, ga, sums.lossSum, sums.tasks)
            case .exit(_, let reason):
                throw MetatrainError("the agent exited: \(reason)")
            default:
                break
            }
        }
        guard let out else { throw MetatrainError("the agent machine never summed block \(leaves)") }
        return out
    }

    /// Finite results can still overflow when they are added: such a step is never taken.
    func testANonFiniteSumIsNeverApplied() throws {
        let dir = NSTemporaryDirectory() + "mt-nonfinite-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = SynthOptions(); o.users = 60; o.courses = 20; o.seed = 5
        _ = try Synth.write(to: dir + "/e.csv", options: o)
        let config = try Config.load(
            path: nil,
            overrides: [
                "model.embedding_dim=4", "model.hidden_dim=6", "maml.meta_batch_size=8",
                "maml.chunk_size=4"
            ])
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: config)
        let trainer = try MetaTrainer(
            config: config, dataset: d, run: try RunDirectory(dir + "/r", logName: "c.log"), resume: false)
        let before = trainer.theta.array
        let plan = trainer.trainPlan(iteration: 1, blocks: 2)
        XCTAssertEqual(plan.units.count, 2)
        let huge = (0..<2).map { _ in FloatBuffer(count: trainer.layout.count) }
        for h in huge { for i in 0..<h.count { h.ptr[i] = 3e38 } }
        XCTAssertThrowsError(
            try withExtendedLifetime(huge) {
                try trainer.applyTrain(huge.map { unitSums(($0, nil, 1, 4)) }, plan: plan, iteration: 1)
            }
        ) { error in
            XCTAssertTrue(error is NonFiniteGradient, "\(error)")
            XCTAssertTrue(
                "\(error)".hasPrefix("iteration 1: the summed meta-gradient is not finite (units of episodes ["),
                "\(error)")
        }
        XCTAssertEqual(trainer.theta.array, before, "the weights did not move")
        XCTAssertEqual(trainer.iteration, 0)
    }

    /// Guided partitions: nodes of the tree, big first, halving towards the end.
    func testGuidedPartitionsAreNodesBigFirst() {
        XCTAssertEqual(ReductionTree(leaves: 8).guidedPartition(into: 4), [0..<4, 4..<6, 6..<7, 7..<8])
        XCTAssertEqual(ReductionTree(leaves: 8).guidedPartition(into: 1), [0..<8])
        XCTAssertEqual(ReductionTree(leaves: 6).guidedPartition(into: 3), [0..<4, 4..<5, 5..<6])
        XCTAssertEqual(ReductionTree(leaves: 2).guidedPartition(into: 8), [0..<1, 1..<2])
        for n in 1...70 {
            let tree = ReductionTree(leaves: n)
            for k in 1...20 {
                let p = tree.guidedPartition(into: k)
                XCTAssertTrue(tree.isPartition(p), "n \(n), k \(k)")
                XCTAssertEqual(p.count, min(k, n), "n \(n), k \(k)")
                XCTAssertEqual(p.map(\.count), p.map(\.count).sorted(by: >), "n \(n), k \(k): biggest first")
            }
        }
    }

    func testSplitPlansGiveTheWeightsOfWholeChunks() throws {
        let dir = NSTemporaryDirectory() + "mt-split-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = SynthOptions(); o.users = 120; o.courses = 40; o.groups = 4; o.seed = 5
        _ = try Synth.write(to: dir + "/e.csv", options: o)
        let base = [
            "model.embedding_dim=8", "model.hidden_dim=12", "maml.meta_batch_size=10", "maml.chunk_size=4",
            "maml.inner_steps=2", "maml.clip_norm=0.05", "weighting.scheme=reliability"
        ]
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: try Config.load(path: nil, overrides: base))
        let variants = [
            ["maml.algorithm=fomaml"],
            ["maml.algorithm=maml", "maml.residual_lambda=0.1"],
            ["maml.algorithm=metasgd", "maml.second_order=true"]
        ]
        for (k, variant) in variants.enumerated() {
            let config = try Config.load(path: nil, overrides: base + variant)
            var weights: [[Float]] = []
            // Every chunk whole or the cheapest cut into pieces; blocks of the tree for 1–6 hosts;
            // and blocks that a host agent splits again and pre-reduces over the block's subtree.
            let plans: [(String, (MetaTrainer, Int) -> TrainPlan, Bool)] =
                [0, 1, 2, 3].map { s in ("split \(s)", { $0.splitPlan(iteration: $1, split: s) }, false) }
                + [1, 2, 4, 6].map { k in ("\(k) blocks", { $0.trainPlan(iteration: $1, blocks: k) }, false) }
                + [2, 4].map { k in ("\(k) blocks via agents", { $0.trainPlan(iteration: $1, blocks: k) }, true) }
            for (name, makePlan, viaAgent) in plans {
                let trainer = try MetaTrainer(
                    config: config, dataset: d, run: try RunDirectory(dir + "/r\(k)-\(name)", logName: "c.log"),
                    resume: false)
                let computer = UnitComputer(config: config, dataset: d)
                for t in 1...2 {
                    try computer.install(
                        theta: UnsafeRawBufferPointer(trainer.theta.buffer),
                        alpha: trainer.alpha.map { UnsafeRawBufferPointer($0.buffer) }
                            ?? UnsafeRawBufferPointer(start: nil, count: 0))
                    let plan = makePlan(trainer, t)
                    let chunks = trainer.trainUnits(iteration: t)
                    // The parts partition the tree, every unit is in one part, and every task is computed once, in order.
                    XCTAssertTrue(ReductionTree(leaves: chunks.count).isPartition(plan.parts.map(\.node)), name)
                    XCTAssertEqual(plan.parts.flatMap(\.units).sorted(), Array(plan.units.indices), name)
                    XCTAssertEqual(
                        plan.parts.flatMap { $0.units.flatMap { plan.units[$0].flatMap { $0 } } },
                        chunks.flatMap { $0 }, name)
                    XCTAssertEqual(plan.dispatchOrder.sorted(), Array(plan.units.indices), name)
                    if name.hasPrefix("split") {
                        XCTAssertEqual(plan.parts.filter { $0.units.count > 1 }.count, min(Int(name.dropFirst(6))!, 2))
                    }
                    // Each unit computed on its own (copies: the computer reuses its buffers); a host agent
                    // computes a block's leaves (the cheapest cut into pieces) and sums them over the block's subtree.
                    let reducer = PlanReducer(count: trainer.layout.count)
                    let results = try plan.units.map { u -> (FloatBuffer, FloatBuffer?, Double, Int) in
                        guard viaAgent else {
                            let r = computer.train(leaves: u)
                            return (r.gradTheta.copy(), r.gradAlpha?.copy(), r.lossSum, r.tasks)
                        }
                        return try viaAgentMachine(u, trainer: trainer, computer: computer, reducer: reducer)
                    }
                    // The coordinator's gradient is the reduction tree over chunk sums, not the chunk-order fold.
                    let chunkSums: [[Float]] = chunks.indices.map { c in
                        let r = computer.train(episodes: chunks[c])
                        return r.gradTheta.array
                    }
                    func tree(_ r: Range<Int>, _ i: Int) -> Float {
                        if r.count == 1 { return chunkSums[r.lowerBound][i] }
                        let (a, b) = ReductionTree.children(r)
                        return tree(a, i) + tree(b, i)
                    }
                    let expected = (0..<chunkSums[0].count).map { tree(0..<chunkSums.count, $0) }
                    // The buffers must outlive the call that reads them through raw pointers.
                    _ = try withExtendedLifetime(results) {
                        try trainer.applyTrain(results.map(unitSums), plan: plan, iteration: t)
                    }
                    XCTAssertEqual(
                        trainer.gradTheta.array.map(\.bitPattern), expected.map(\.bitPattern), "tree reduction, \(name)"
                    )
                }
                weights.append(trainer.theta.array + (trainer.alpha?.array ?? []))
            }
            let n = weights[0].count
            for (split, w) in weights.enumerated().dropFirst() {
                let differ = (0..<n).filter { w[$0].bitPattern != weights[0][$0].bitPattern }
                XCTAssertEqual(
                    differ.count, 0,
                    "\(variant), \(plans[split].0): \(differ.count) of \(n) values differ, first at \(differ.first ?? -1)"
                )
            }
            XCTAssertNotEqual(
                weights[0],
                try MetaTrainer(
                    config: config, dataset: d, run: try RunDirectory(dir + "/fresh\(k)", logName: "c.log"),
                    resume: false
                ).theta.array, "the steps moved the weights")
        }
    }
}

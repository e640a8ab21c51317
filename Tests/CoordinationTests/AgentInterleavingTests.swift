import Wire
import XCTest

@testable import Coordination

/// A host agent between a coordinator and two compute processes, with every
/// order of delivery explored: the agent's `AgentMachine` and the processes'
/// `WorkerMachine`s are the real machines; a model of the coordinator answers
/// what the agent sends, and models of the shells carry out directives (the
/// processes compute a result from the weights they installed, the agent's
/// shell sums a block as its plan says).
///
/// Each connection keeps its order (coordinator → agent, agent → each process,
/// each process → agent, broadcasts to each), connections interleave freely,
/// broadcasts may be lost, machines may tick, and where a test allows it a
/// process dies mid-block (and is started again), the agent must join again, or
/// the coordinator restarts. States already seen are not explored twice, and a
/// search stops after `Limits.states` distinct states (deepest first), so it is
/// bounded rather than complete on the longer scenarios. Every
/// path must end with the coordinator's last block summed, and every block's
/// result must be the sum of each of its tasks computed exactly once on the
/// weights of its version of the run that sent it.
final class AgentInterleavingTests: XCTestCase {
    /// The weights of version `v` of run `run` (distinct for every pair).
    static func weights(run: Int, version: Int) -> Weights { JoinInterleavingTests.weights(run: run, version: version) }

    /// A task's loss on the weights `w`: a different number for every (episode, run, version).
    static func loss(episode e: Int, on w: Floats) -> Double { Double(e) * 10_000 + Double(w[0]) * 100 + Double(w[1]) }

    /// The coordinator's run, as the agent sees it: each version is a phase of `blocks`,
    /// handed to the agent all at once (it says it has two processes).
    struct CoordinatorModel: CustomStringConvertible {
        var run: Int
        var runId: String { "run-\(run)" }
        var config: String
        var version: Int
        var lastVersion: Int
        /// The leaves of each block of a phase (episodes of version v are offset by 100·v).
        var blocks: [[[Int]]] = [[[1, 2], [3], [4, 5, 6]], [[7, 8]]]
        var knowsAgent = false
        var todo: [WorkUnit] = []
        var outstanding: [WorkUnit] = []
        var finished = false
        /// Blocks given back (`unit_failed`): computed elsewhere in this model.
        var givenBack: [Int] = []
        var nextId = 0

        var description: String {
            "c(\(run),\(version),\(knowsAgent),\(todo.map(\.id)),\(outstanding.map(\.id)),\(finished),\(givenBack))"
        }

        mutating func newPhase() {
            todo = blocks.map { leaves in
                nextId += 1
                return WorkUnit(
                    id: run * 1000 + nextId, kind: .train, version: version,
                    leaves: leaves.map { $0.map { $0 + 100 * version } })
            }
        }
    }

    struct Process {
        var name: String
        var peer: PeerID
        var machine: WorkerMachine
        var dealer: [Envelope] = [] // from the agent, in order
        var sub: [Envelope] = [] // the agent's broadcasts, in order
        var toAgent: [Envelope] = [] // to the agent, in order
        var config: String?
        var theta: Floats?
    }

    struct World {
        var agent: AgentMachine
        var coordinator: CoordinatorModel
        var dealer: [Envelope] = [] // coordinator → agent
        var sub: [Envelope] = [] // coordinator's broadcasts
        var processes: [Process] = []
        var innerRun = ""
        var agentWeights: Weights?
        var agentConfig: String?
        var now = 0.0
        var restarts = 0
        /// A process that takes a unit holding this episode dies (as on a bug it hits).
        var poison: Int?
        var exited: String?
        // Choices used on this path (bounded so the search ends).
        var drops = 0, kills = 0, rejoins = 0, quiet = 0, graces = 0
        var history: [String] = []

        /// The state, for recognising one seen before (history aside).
        var key: String {
            var w = self
            w.history = []
            return String(describing: w)
        }

        // MARK: the coordinator model

        mutating func coordinatorReceives(_ m: Message) throws {
            var c = coordinator
            defer { coordinator = c }
            func send(_ m: Message) { dealer.append(Envelope(runId: c.runId, message: m)) }
            func dispatch() {
                guard c.knowsAgent, !c.finished else { return }
                for u in c.todo { send(.work(u)) }
                c.outstanding += c.todo
                c.todo = []
            }
            func phaseDone() {
                guard c.todo.isEmpty, c.outstanding.isEmpty else { return }
                if c.version == c.lastVersion {
                    c.finished = true
                } else {
                    c.version += 1
                    c.newPhase()
                    sub.append(
                        Envelope(
                            runId: c.runId,
                            message: .weights(AgentInterleavingTests.weights(run: c.run, version: c.version))))
                }
            }
            switch m {
            case .hello(let h):
                guard h.procs == 2 else { throw Failure("hello claims \(h.procs) processes") }
                c.knowsAgent = true
                c.todo = c.outstanding + c.todo // a re-joined worker's units are lost: re-queued
                c.outstanding = []
                send(.welcome(Welcome(configJSON: c.config, version: c.version)))
            case _ where !c.knowsAgent:
                if case .goodbye = m { break }
                send(.refuse(.unknownWorker, detail: "send hello first"))
            case .ready:
                c.todo = c.outstanding + c.todo
                c.outstanding = []
                dispatch()
            case .fetchWeights:
                send(.weights(AgentInterleavingTests.weights(run: c.run, version: c.version)))
            case .unitFailed(let id, _):
                if let i = c.outstanding.firstIndex(where: { $0.id == id }) {
                    c.givenBack.append(id)
                    c.outstanding.remove(at: i)
                    phaseDone()
                }
            case .trainResult(let r):
                guard let i = c.outstanding.firstIndex(where: { $0.id == r.unitId }) else { break }
                let u = c.outstanding[i]
                guard r.version == u.version else { break }
                let w = AgentInterleavingTests.weights(run: c.run, version: u.version).theta
                let expected = u.episodes.reduce(0.0) { $0 + AgentInterleavingTests.loss(episode: $1, on: w) }
                guard r.tasks == u.episodes.count, r.lossSum == expected else {
                    throw Failure(
                        "block \(u.id) (version \(u.version)): \(r.tasks) tasks, loss \(r.lossSum); expected \(u.episodes.count), \(expected): \(history)"
                    )
                }
                c.outstanding.remove(at: i)
                phaseDone()
                dispatch()
            default:
                break
            }
        }

        // MARK: the agent's shell

        mutating func execute(_ directives: [AgentMachine.Directive]) throws {
            for d in directives where exited == nil {
                switch d {
                case .sendUp(let m):
                    try coordinatorReceives(m)
                case .configure(let json):
                    agentConfig = json
                    try execute(
                        agent.onConfigured(
                            .init(heartbeatInterval: 1, silence: 3, theta: 2, alpha: 0, cost: { $0.count }), now: now))
                case .sendDown(let peer, let m):
                    if let i = processes.firstIndex(where: { $0.peer == peer }) {
                        processes[i].dealer.append(Envelope(runId: innerRun, message: m))
                    }
                case .sendWeightsDown(let peer):
                    if let i = processes.firstIndex(where: { $0.peer == peer }), let w = agentWeights {
                        processes[i].dealer.append(Envelope(runId: innerRun, message: .weights(w)))
                    }
                case .innerRun(let id):
                    innerRun = id
                case .forgetDown(let peer):
                    // The link lets go of a process's files: never one the inner run still counts on.
                    if agent.knowsProcess(peer) { throw Failure("forgot live process \(peer): \(history)") }
                case .publish(let w, let live):
                    agentWeights = w
                    for i in processes.indices where live.contains(processes[i].peer) {
                        processes[i].sub.append(Envelope(runId: innerRun, message: .weights(w)))
                    }
                case .startProcesses:
                    guard processes.isEmpty else { throw Failure("processes started twice: \(history)") }
                    for i in 0..<2 { try startProcess(slot: i, restart: 0) }
                case .reduce(let block):
                    try execute(agent.onReduced(try reduce(block), now: now))
                case .exit(_, let reason):
                    exited = reason
                case .computing, .computed, .joined, .log, .notice:
                    break
                }
            }
        }

        /// What HostAgent's reduce gives, in numbers this model can check: every task of the block once, in order.
        func reduce(_ b: AgentMachine.Block) throws -> TrainResult {
            let planned = b.plan.parts.flatMap { $0.units.flatMap { b.plan.units[$0].flatMap { $0 } } }
            guard planned == b.unit.episodes, b.results.count == b.plan.units.count else {
                throw Failure("block \(b.unit.id): plan covers \(planned), block has \(b.unit.episodes): \(history)")
            }
            return TrainResult(
                unitId: b.unit.id, version: b.unit.version, gradTheta: [0, 0], gradAlpha: [],
                lossSum: b.results.reduce(0) { $0 + $1.lossSum }, tasks: b.results.reduce(0) { $0 + $1.tasks })
        }

        // MARK: the processes' shells

        mutating func startProcess(slot: Int, restart: Int) throws {
            let name = "p\(slot)" + (restart == 0 ? "" : ".\(restart)")
            var p = Process(
                name: name, peer: PeerID([UInt8(slot), UInt8(restart)]),
                machine: WorkerMachine(name: name, datasetFingerprint: "fp", coordinatorTimeout: 1000))
            let out = p.machine.onStart(now: now)
            processes.append(p)
            try executeProcess(processes.count - 1, out)
        }

        mutating func executeProcess(_ i: Int, _ directives: [WorkerMachine.Directive]) throws {
            for d in directives {
                switch d {
                case .send(let m):
                    processes[i].toAgent.append(Envelope(runId: processes[i].machine.runId, message: m))
                case .configure(let json):
                    processes[i].config = json; processes[i].theta = nil
                case .compute(let u, let install):
                    if let w = install { processes[i].theta = w.theta }
                    guard processes[i].config == agentConfig, let theta = processes[i].theta else {
                        throw Failure(
                            "process \(processes[i].name) computes \(u.id) without its configuration or weights: \(history)"
                        )
                    }
                    if let e = poison, u.episodes.contains(e) {
                        try kill(i, crashed: true)
                        return
                    }
                    let r = TrainResult(
                        unitId: u.id, version: u.version, gradTheta: [0, 0], gradAlpha: [],
                        lossSum: u.episodes.reduce(0.0) { $0 + AgentInterleavingTests.loss(episode: $1, on: theta) },
                        tasks: u.episodes.count)
                    try executeProcess(i, processes[i].machine.onComputed(.trainResult(r), now: now))
                case .exit(_, let reason):
                    throw Failure("process \(processes[i].name) exited: \(reason): \(history)")
                case .log:
                    break
                }
            }
        }

        /// A process dies; the supervisor tells the agent and starts it again.
        mutating func kill(_ i: Int, crashed: Bool) throws {
            let p = processes.remove(at: i)
            try execute(agent.onProcessGone(name: p.name, reason: "killed", crashed: crashed, now: now))
            let slot = Int(p.peer.bytes[0]), restart = Int(p.peer.bytes[1]) + 1
            try startProcess(slot: slot, restart: restart)
        }
    }

    typealias Failure = JoinInterleavingTests.Failure

    struct Limits { var drops = 1, kills = 0, rejoins = 0, quiet = 1, graces = 2, depth = 120, states = 20_000 }

    final class Search {
        var seen = Set<String>()
        var ends = 0
        var blockBeforeWeights = 0
        let limits: Limits
        init(_ limits: Limits) { self.limits = limits }

        func explore(_ world: World) throws {
            if let reason = world.exited { throw Failure("agent exited (\(reason)): \(world.history)") }
            if world.coordinator.finished { ends += 1; return }
            guard world.history.count < limits.depth else {
                throw Failure("no end after \(limits.depth) steps: \(world.history)")
            }
            guard seen.count < limits.states, seen.insert(world.key).inserted else { return }
            var moved = false
            func step(_ label: String, _ change: (inout World) throws -> Void) throws {
                var w = world
                w.history.append(label)
                try change(&w)
                moved = true
                try explore(w)
            }
            if let e = world.dealer.first {
                try step("up:\(e.message.short)") { w in
                    w.dealer.removeFirst(); w.now += 0.01
                    if case .work = e.message, w.agentWeights?.version != e.message.workVersion {
                        self.blockBeforeWeights += 1
                    }
                    try w.execute(w.agent.onMessage(e, now: w.now))
                }
            }
            if let e = world.sub.first {
                try step("upsub:\(e.message.short)") { w in
                    w.sub.removeFirst(); w.now += 0.01
                    try w.execute(w.agent.onMessage(e, now: w.now))
                }
                if world.drops < limits.drops {
                    try step("lost:\(e.message.short)") { w in
                        w.sub.removeFirst(); w.drops += 1
                    }
                }
            }
            for (i, p) in world.processes.enumerated() {
                if let e = p.dealer.first {
                    try step("\(p.name)<-\(e.message.short)") { w in
                        w.processes[i].dealer.removeFirst(); w.now += 0.01
                        try w.executeProcess(i, w.processes[i].machine.onMessage(e, now: w.now))
                    }
                }
                if let e = p.sub.first {
                    try step("\(p.name)<-sub:\(e.message.short)") { w in
                        w.processes[i].sub.removeFirst(); w.now += 0.01
                        try w.executeProcess(i, w.processes[i].machine.onMessage(e, now: w.now))
                    }
                    if world.drops < limits.drops {
                        try step("\(p.name)-lost:\(e.message.short)") { w in
                            w.processes[i].sub.removeFirst(); w.drops += 1
                        }
                    }
                }
                if let e = p.toAgent.first {
                    try step("\(p.name)->\(e.message.short)") { w in
                        w.processes[i].toAgent.removeFirst(); w.now += 0.01
                        try w.execute(w.agent.onProcessMessage(e, from: p.peer, now: w.now))
                    }
                }
                // The fetch retry: only while no reply is on its way (else it would retry forever).
                if let t = p.machine.wakeAt, !p.dealer.contains(where: { $0.message.isWeights }),
                    world.graces < limits.graces
                {
                    try step("\(p.name):grace") { w in
                        w.graces += 1
                        w.now = max(w.now, t)
                        try w.executeProcess(i, w.processes[i].machine.onTick(now: w.now))
                    }
                }
                if world.kills < limits.kills, world.agent.unitsHeld > 0 {
                    try step("kill \(p.name)") { w in
                        w.kills += 1
                        try w.kill(i, crashed: false)
                    }
                }
            }
            if let t = world.agent.wakeAt, !world.dealer.contains(where: { $0.message.isWeights }),
                world.graces < limits.graces
            {
                try step("agent:grace") { w in
                    w.graces += 1
                    w.now = max(w.now, t)
                    try w.execute(w.agent.onTick(now: w.now))
                }
            }
            if world.quiet < limits.quiet {
                // A quiet spell: everyone heartbeats (or says hello again).
                try step("quiet") { w in
                    w.quiet += 1
                    w.now += 1.1
                    try w.execute(w.agent.onTick(now: w.now))
                    for i in w.processes.indices { try w.executeProcess(i, w.processes[i].machine.onTick(now: w.now)) }
                }
            }
            if world.rejoins < limits.rejoins, world.agent.up.weightsVersion >= 0 {
                try step("rejoin-needed") { w in
                    w.rejoins += 1
                    try w.execute(w.agent.onRejoinNeeded("shared memory unreadable", now: w.now))
                }
            }
            if !moved, world.graces >= limits.graces,
                let t = (world.processes.compactMap(\.machine.wakeAt) + [world.agent.wakeAt].compactMap { $0 }).min()
            {
                // Nothing else can happen: time passes until the next timer (retries are never used up).
                try step("time") { w in
                    w.now = max(w.now, t)
                    try w.execute(w.agent.onTick(now: w.now))
                    for i in w.processes.indices { try w.executeProcess(i, w.processes[i].machine.onTick(now: w.now)) }
                }
            }
            if !moved {
                throw Failure(
                    "stuck: the coordinator waits for \(world.coordinator.outstanding.map(\.id)) and has \(world.coordinator.todo.map(\.id)) to send, "
                        + "the agent holds \(world.agent.unitsHeld): \(world.history)")
            }
        }
    }

    func freshAgent() -> AgentMachine {
        var face = WorkerMachine(name: "agent", datasetFingerprint: "fp", coordinatorTimeout: 1000)
        face.procs = 2
        return AgentMachine(worker: face, innerRunPrefix: "inner")
    }

    func world(run: Int = 1, version: Int = 0, lastVersion: Int = 1) throws -> World {
        var c = CoordinatorModel(run: run, config: "{a}", version: version, lastVersion: lastVersion)
        c.newPhase()
        var w = World(agent: freshAgent(), coordinator: c)
        try w.execute(w.agent.onStart(now: 0))
        return w
    }

    /// A fresh agent joins, starts its processes, and computes two phases of blocks,
    /// with blocks that may come before their weights and lost broadcasts on both sides.
    func testJoinAndTwoPhasesInEveryOrder() throws {
        let search = Search(Limits(drops: 1, quiet: 0))
        try search.explore(try world())
        XCTAssertGreaterThan(search.seen.count, 1000, "the search should cover many states")
        XCTAssertGreaterThan(search.ends, 10)
        XCTAssertGreaterThan(search.blockBeforeWeights, 0, "some orders bring a block before its weights")
    }

    /// A process dies while it holds part of a block (the supervisor starts it
    /// again), at any point of the run; the other process or the new one computes its part.
    func testAProcessDyingMidBlockInEveryOrder() throws {
        let search = Search(Limits(drops: 0, kills: 1, quiet: 0))
        try search.explore(try world(lastVersion: 0))
        XCTAssertGreaterThan(search.seen.count, 1000)
        XCTAssertGreaterThan(search.ends, 10)
    }

    /// The agent must join again (its link cannot read the coordinator's memory) at any point:
    /// the coordinator re-queues what it held, and every block still ends summed once.
    func testRejoinInEveryOrder() throws {
        let search = Search(Limits(drops: 0, rejoins: 1, quiet: 1))
        try search.explore(try world(lastVersion: 0))
        XCTAssertGreaterThan(search.seen.count, 1000)
        XCTAssertGreaterThan(search.ends, 10)
    }

    /// The agent finished run 1 at version 1; a resumed coordinator (run 2) starts
    /// again at version 0, with the same configuration or another, and the agent
    /// learns of it from a broadcast or a refusal. Its processes join a new inner
    /// run (weights versions within a run only grow) and compute run 2's blocks.
    func testACoordinatorRestartInEveryOrder() throws {
        var ends = 0
        for config in ["{a}", "{b}"] {
            for (viaBroadcast, viaRefusal) in [(true, false), (false, true)] {
                var w = try world(lastVersion: 1)
                try runToTheEnd(&w)
                XCTAssertTrue(w.coordinator.finished)
                let innerBefore = w.innerRun
                var c = CoordinatorModel(run: 2, config: config, version: 0, lastVersion: 0)
                c.newPhase()
                w.coordinator = c
                w.history = []
                if viaBroadcast {
                    w.sub.append(Envelope(runId: "run-2", message: .weights(Self.weights(run: 2, version: 0))))
                }
                if viaRefusal {
                    w.dealer.append(
                        Envelope(runId: "run-2", message: .refuse(.unknownWorker, detail: "send hello first")))
                }
                let search = Search(Limits(drops: 0, quiet: 1, states: 5_000))
                try search.explore(w)
                XCTAssertGreaterThan(search.seen.count, 100)
                ends += search.ends
                // Along one path: the processes serve a new inner run.
                try runToTheEnd(&w)
                XCTAssertNotEqual(w.innerRun, innerBefore)
            }
        }
        XCTAssertGreaterThan(ends, 10)
    }

    /// A block holding an episode that crashes every process that takes it: the
    /// processes crash twice on its piece, the agent gives that block back (then
    /// says ready, so the coordinator re-queues the rest), its processes join a
    /// new inner run, and the other blocks are still computed on this host.
    func testABlockThatCrashesItsProcessesIsGivenBack() throws {
        var w = try world(lastVersion: 0)
        w.poison = 2
        try runToTheEnd(&w)
        XCTAssertTrue(w.coordinator.finished)
        XCTAssertEqual(w.coordinator.givenBack, [1001], "the block holding episode 2 came back")
        XCTAssertEqual(w.innerRun, "inner-2", "the processes started afresh in a new inner run")
        let search = Search(Limits(drops: 0, quiet: 0))
        var start = try world(lastVersion: 0)
        start.poison = 2
        try search.explore(start)
        XCTAssertGreaterThan(search.ends, 10)
    }

    /// Delivers the first message of the first non-empty queue until the coordinator
    /// finishes (one order among those the search explores).
    func runToTheEnd(_ w: inout World, limit: Int = 500) throws {
        for _ in 0..<limit {
            if w.coordinator.finished { return }
            w.now += 0.01
            if let e = w.dealer.first {
                w.dealer.removeFirst(); try w.execute(w.agent.onMessage(e, now: w.now)); continue
            }
            if let e = w.sub.first { w.sub.removeFirst(); try w.execute(w.agent.onMessage(e, now: w.now)); continue }
            var moved = false
            for i in w.processes.indices {
                if let e = w.processes[i].dealer.first {
                    w.processes[i].dealer.removeFirst(); w.now += 0.01
                    try w.executeProcess(i, w.processes[i].machine.onMessage(e, now: w.now)); moved = true; break
                }
                if let e = w.processes[i].sub.first {
                    w.processes[i].sub.removeFirst(); w.now += 0.01
                    try w.executeProcess(i, w.processes[i].machine.onMessage(e, now: w.now)); moved = true; break
                }
                if let e = w.processes[i].toAgent.first {
                    w.processes[i].toAgent.removeFirst(); w.now += 0.01
                    try w.execute(w.agent.onProcessMessage(e, from: w.processes[i].peer, now: w.now)); moved = true
                    break
                }
            }
            if moved { continue }
            w.now += 1.1
            try w.execute(w.agent.onTick(now: w.now))
            for i in w.processes.indices { try w.executeProcess(i, w.processes[i].machine.onTick(now: w.now)) }
        }
        if !w.coordinator.finished { throw Failure("no end: \(w.history)") }
    }
}

extension Message {
    var isWeights: Bool {
        if case .weights = self { return true }
        return false
    }

    /// The version of a work message (nil for others).
    var workVersion: Int? {
        if case .work(let u) = self { return u.version }
        return nil
    }
}

import Wire
import XCTest

@testable import Coordination

/// Every order in which a welcome, weight broadcasts, fetch replies and work can
/// reach a worker around a join and a re-join, explored exhaustively.
///
/// A small model of the coordinator answers what the WorkerMachine sends (hello,
/// ready, fetch, results) the way CoordinatorMachine and its shell do; a model of
/// the shell carries out the machine's directives on a pretend unit computer.
/// Messages on one connection keep their order (ROUTER→DEALER for welcome, work
/// and fetch replies; PUB→SUB for broadcasts), but the two connections interleave
/// freely, a broadcast may be lost (a subscriber that joined late, a full queue),
/// the worker may tick (fetch after the grace, hello again) and the shell may ask
/// to join again. The search tries every choice at every step and checks that
/// each path ends with the coordinator's last unit computed, and that every unit
/// was computed on exactly its version's weights of the run that sent it.
final class JoinInterleavingTests: XCTestCase {
    /// The weights of version `v` of run `run`: distinct for every (run, version), so a mix-up shows.
    static func weights(run: Int, version: Int) -> Weights {
        Weights(version: version, theta: [Float(run), Float(version)], alpha: [])
    }

    /// One coordinator run as the worker sees it.
    struct CoordinatorModel {
        var run: Int
        var runId: String { "run-\(run)" }
        var config: String
        var version: Int
        var lastVersion: Int
        var knowsWorker = false
        var workerReady = false
        var outstanding: WorkUnit?
        var finished = false
        var nextUnit = 0

        mutating func unit() -> WorkUnit {
            nextUnit += 1
            return WorkUnit(id: run * 1000 + nextUnit, kind: .train, version: version, episodes: [nextUnit])
        }
    }

    struct World {
        var worker: WorkerMachine
        var coordinator: CoordinatorModel
        var dealer: [Envelope] = [] // to the worker over ROUTER/DEALER, in order
        var sub: [Envelope] = [] // broadcasts, in order
        var now = 0.0
        // The shell's unit computer.
        var computerConfig: String?
        var computerTheta: Floats?
        var computed: [WorkUnit] = []
        var exited: String?
        // Choices used on this path (bounded so the search ends).
        var drops = 0, longTicks = 0, rejoins = 0, graces = 0
        var history: [String] = []

        /// The coordinator model's answer to one message from the worker.
        mutating func coordinatorReceives(_ m: Message) {
            var c = coordinator
            func send(_ m: Message) { dealer.append(Envelope(runId: c.runId, message: m)) }
            func dispatch() {
                if c.knowsWorker, c.workerReady, c.outstanding == nil, !c.finished {
                    let u = c.unit()
                    c.outstanding = u
                    c.workerReady = false
                    send(.work(u))
                }
            }
            switch m {
            case .hello:
                c.knowsWorker = true
                c.workerReady = false
                c.outstanding = nil // a re-joined worker's units are lost: re-queued
                send(.welcome(Welcome(configJSON: c.config, version: c.version)))
            case _ where !c.knowsWorker:
                if case .goodbye = m { break }
                send(.refuse(.unknownWorker, detail: "send hello first"))
            case .ready:
                c.outstanding = nil
                c.workerReady = true
                dispatch()
            case .fetchWeights:
                dealer.append(
                    Envelope(
                        runId: c.runId, message: .weights(JoinInterleavingTests.weights(run: c.run, version: c.version))
                    ))
            case .trainResult(let r):
                c.workerReady = true
                if r.unitId == c.outstanding?.id {
                    c.outstanding = nil
                    if r.version == c.version {
                        if c.version == c.lastVersion {
                            c.finished = true
                        } else {
                            c.version += 1
                            sub.append(
                                Envelope(
                                    runId: c.runId,
                                    message: .weights(JoinInterleavingTests.weights(run: c.run, version: c.version))))
                        }
                    }
                }
                dispatch()
            default:
                break
            }
            coordinator = c
        }

        /// Carries out the worker machine's directives as WorkerShell does.
        mutating func execute(_ directives: [WorkerMachine.Directive]) throws {
            for d in directives where exited == nil {
                switch d {
                case .send(let m):
                    coordinatorReceives(m)
                case .configure(let json):
                    computerConfig = json
                    computerTheta = nil
                case .compute(let u, let install):
                    if let w = install { computerTheta = w.theta }
                    let run = u.id / 1000
                    guard run == coordinator.run else {
                        throw Failure(
                            "computed unit \(u.id) of run \(run) while run \(coordinator.run) is on: \(history)")
                    }
                    guard computerConfig == coordinator.config else {
                        throw Failure(
                            "unit \(u.id) computed with config \(computerConfig ?? "none"), run's is \(coordinator.config): \(history)"
                        )
                    }
                    let expected = JoinInterleavingTests.weights(run: run, version: u.version).theta
                    guard computerTheta == expected else {
                        throw Failure(
                            "unit \(u.id) (version \(u.version)) computed on \(computerTheta.map { "\($0)" } ?? "no weights"), expected \(expected): \(history)"
                        )
                    }
                    computed.append(u)
                    try execute(
                        worker.onComputed(
                            .trainResult(
                                TrainResult(
                                    unitId: u.id, version: u.version, gradTheta: [0], gradAlpha: [],
                                    lossSum: 0, tasks: 1)), now: now))
                case .exit(_, let reason):
                    exited = reason
                case .log:
                    break
                }
            }
        }
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    struct Limits { var drops = 2, longTicks = 1, rejoins = 1, graces = 0, depth = 80 }

    /// Explores every path from `world`; returns the number of complete paths.
    func explore(_ world: World, _ limits: Limits) throws -> Int {
        if let reason = world.exited { throw Failure("worker exited (\(reason)): \(world.history)") }
        if world.coordinator.finished { return 1 }
        guard world.history.count < limits.depth else {
            throw Failure("no end after \(limits.depth) steps: \(world.history)")
        }
        var paths = 0
        var moved = false
        func step(_ label: String, _ change: (inout World) throws -> Void) throws {
            var w = world
            w.history.append(label)
            try change(&w)
            moved = true
            paths += try explore(w, limits)
        }
        if let e = world.dealer.first {
            try step("dealer:\(e.runId):\(e.message.short)") { w in
                w.dealer.removeFirst()
                w.now += 0.01
                try w.execute(w.worker.onMessage(e, now: w.now))
            }
        }
        if let e = world.sub.first {
            try step("sub:\(e.runId):\(e.message.short)") { w in
                w.sub.removeFirst()
                w.now += 0.01
                try w.execute(w.worker.onMessage(e, now: w.now))
            }
            if world.drops < limits.drops {
                try step("lost:\(e.message.short)") { w in
                    w.sub.removeFirst(); w.drops += 1
                }
            }
        }
        // A fetch's reply on its way may be overtaken by the retry timer too (a few times per path).
        let replyOnItsWay = world.dealer.contains {
            if case .weights = $0.message { return true }; return false
        }
        if let t = world.worker.wakeAt, !replyOnItsWay || world.graces < limits.graces {
            // The grace ends without a broadcast (or the fetch's reply is late): the worker fetches.
            try step("grace") { w in
                if replyOnItsWay { w.graces += 1 }
                w.now = max(w.now, t)
                try w.execute(w.worker.onTick(now: w.now))
            }
        }
        if world.longTicks < limits.longTicks {
            // A quiet spell: a joining worker says hello again, a joined one heartbeats.
            try step("quiet") { w in
                w.longTicks += 1
                w.now += w.worker.heartbeatInterval + 0.1
                try w.execute(w.worker.onTick(now: w.now))
            }
        }
        if world.rejoins < limits.rejoins, world.worker.weightsVersion >= 0 {
            try step("rejoin-needed") { w in
                w.rejoins += 1
                try w.execute(w.worker.onRejoinNeeded("shared memory unreadable", now: w.now))
            }
        }
        if !moved {
            throw Failure(
                "stuck: the coordinator waits for unit \(world.coordinator.outstanding.map { "\($0.id)" } ?? "none") "
                    + "(version \(world.coordinator.version)), worker holds \(world.worker.weightsVersion): \(world.history)"
            )
        }
        return paths
    }

    func freshWorker() -> WorkerMachine { WorkerMachine(name: "w", datasetFingerprint: "fp", coordinatorTimeout: 1000) }

    /// A new worker joins a run at version 2 while broadcasts of versions 1 and 2
    /// (sent before the coordinator got to its hello) may overtake the welcome.
    func testFreshJoinInEveryOrder() throws {
        var paths = 0
        for early in [[], [2], [1, 2]] {
            var w = World(
                worker: freshWorker(), coordinator: CoordinatorModel(run: 1, config: "{a}", version: 2, lastVersion: 4))
            w.sub = early.map { Envelope(runId: "run-1", message: .weights(Self.weights(run: 1, version: $0))) }
            try w.execute(w.worker.onStart(now: 0))
            paths += try explore(w, Limits())
        }
        XCTAssertGreaterThan(paths, 1000, "the search should cover many orders")
    }

    /// A worker that joined run 1 and holds its version 3 meets a resumed
    /// coordinator (run 2) at version 2, with the same configuration or another,
    /// while run 1's last broadcast may still be on its way. The worker learns of
    /// the new run from a broadcast or from a refusal, in either order.
    func testRejoinARestartedCoordinatorInEveryOrder() throws {
        var paths = 0
        for config in ["{a}", "{b}"] {
            for (viaBroadcast, viaRefusal) in [(true, false), (false, true), (true, true)] {
                var w = World(
                    worker: freshWorker(),
                    coordinator: CoordinatorModel(run: 1, config: "{a}", version: 3, lastVersion: 3))
                try w.execute(w.worker.onStart(now: 0))
                try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0)) // welcome
                try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0)) // work of version 3
                try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0)) // fetch reply: computes it
                XCTAssertTrue(w.coordinator.finished)
                XCTAssertEqual(w.computed.map(\.version), [3])
                // Run 2 takes over the endpoint: it does not know the worker yet.
                w.coordinator = CoordinatorModel(run: 2, config: config, version: 2, lastVersion: 4)
                w.computed = []
                w.sub = [Envelope(runId: "run-1", message: .weights(Self.weights(run: 1, version: 3)))]
                if viaBroadcast {
                    w.sub.append(Envelope(runId: "run-2", message: .weights(Self.weights(run: 2, version: 2))))
                }
                if viaRefusal {
                    w.dealer.append(
                        Envelope(runId: "run-2", message: .refuse(.unknownWorker, detail: "send hello first")))
                }
                paths += try explore(w, Limits(drops: 1))
            }
        }
        XCTAssertGreaterThan(paths, 1000)
    }

    /// The same run lost track of the worker (it was dropped for silence) while
    /// the worker held version 2 and version 3's broadcast was on its way.
    func testRejoinTheSameRunInEveryOrder() throws {
        var w = World(
            worker: freshWorker(), coordinator: CoordinatorModel(run: 1, config: "{a}", version: 2, lastVersion: 4))
        try w.execute(w.worker.onStart(now: 0))
        try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0)) // welcome at version 2
        try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0)) // work of version 2
        // The fetch reply: computes it, version 3 broadcast.
        try w.execute(w.worker.onMessage(w.dealer.removeFirst(), now: 0))
        XCTAssertEqual(w.computed.map(\.version), [2])
        w.coordinator.knowsWorker = false
        w.coordinator.outstanding = nil
        w.dealer = [Envelope(runId: "run-1", message: .refuse(.unknownWorker, detail: "send hello first"))]
        XCTAssertGreaterThan(try explore(w, Limits()), 100)
        // A fetch's reply may also come after the retry timer went off: the worker fetches again.
        XCTAssertGreaterThan(try explore(w, Limits(drops: 1, graces: 1)), 100)
    }

    /// The race behind the crash "unit N scheduled without its weights": a
    /// broadcast before the welcome. The worker drops it, the welcome makes it
    /// fetch, and its first compute installs exactly the fetched weights.
    func testBroadcastBeforeWelcomeIsDroppedAndFetched() throws {
        var m = freshWorker()
        _ = m.onStart(now: 0)
        let early = Self.weights(run: 1, version: 0)
        XCTAssertEqual(
            m.onMessage(Envelope(runId: "run-1", message: .weights(early)), now: 0),
            [.log("dropped weights version 0 that came before welcome")])
        let welcome = m.onMessage(
            Envelope(runId: "run-1", message: .welcome(Welcome(configJSON: "{a}", version: 0))), now: 0)
        XCTAssertEqual(welcome.first, .configure(configJSON: "{a}"))
        XCTAssertEqual(Array(welcome.suffix(2)), [.send(.ready), .send(.fetchWeights)])
        let u = WorkUnit(id: 1, kind: .train, version: 0, episodes: [1])
        XCTAssertEqual(m.onMessage(Envelope(runId: "run-1", message: .work(u)), now: 0), [])
        XCTAssertEqual(
            m.onMessage(Envelope(runId: "run-1", message: .weights(early)), now: 0), [.compute(u, install: early)])
        _ = m.onComputed(.ready, now: 0)
        let u2 = WorkUnit(id: 2, kind: .train, version: 0, episodes: [2])
        XCTAssertEqual(
            m.onMessage(Envelope(runId: "run-1", message: .work(u2)), now: 0), [.compute(u2, install: nil)],
            "the computer already holds version 0")
    }
}

extension Message {
    /// A short label for a search path.
    var short: String {
        switch self {
        case .welcome(let w): return "welcome(v\(w.version),\(w.configJSON))"
        case .weights(let w): return "weights(v\(w.version))"
        case .work(let u): return "work(\(u.id),v\(u.version))"
        case .refuse: return "refuse"
        default: return typeName
        }
    }
}

import Wire

/// A host agent's protocol logic (`worker --procs N`) as a value-type state
/// machine. Towards the coordinator it is one worker (a `WorkerMachine` that
/// says it has N processes); towards its N compute processes it is a
/// coordinator (a `CoordinatorMachine` of an inner run). It takes each weights
/// version once and republishes it to its processes, cuts each block into its
/// leaves (the cheapest cut into pieces when several processes are live, so
/// that the block ends on single tasks), and when every inner result of a
/// block is in, asks for the block's sum over its subtree (`reduce`, the same
/// `PlanReducer` as the coordinator's) and sends one result per block. Blocks
/// that arrive while one runs join the same inner phase, so the processes
/// never wait between them; a block of another version waits until the
/// running ones are done.
///
/// Like the machines it composes, it never touches sockets, clocks, files or
/// floats: every `on…` method takes the time and returns directives, which the
/// shell (`HostAgent`) carries out; the arithmetic of `reduce` and the copy of
/// weights into the processes' shared memory are the shell's.
public struct AgentMachine: Sendable {
    public enum Directive: Equatable, Sendable {
        /// Send a message to the coordinator (under `runId`).
        case sendUp(Message)
        /// A run with this configuration: the shell sizes its buffers and frames, then calls `onConfigured`.
        case configure(configJSON: String)
        /// Send a message, or the weights last published, to one process.
        case sendDown(PeerID, Message)
        case sendWeightsDown(PeerID)
        /// A process is no longer one of the inner run's: its link lets go of what it keeps for it.
        case forgetDown(PeerID)
        /// The processes' run is now this one (the link stamps it on what it sends them).
        case innerRun(String)
        /// Copy these weights into the processes' buffers and publish them to the live processes.
        case publish(Weights, live: [PeerID])
        /// Start the compute processes (once, after the first configuration).
        case startProcesses
        /// Every inner result of a train block is in: sum them over the plan and call `onReduced`.
        case reduce(Block)
        /// A coordinator's unit was taken on, and its result was sent (for traces).
        case computing(unitId: Int)
        case computed(unitId: Int)
        /// Joined the coordinator's run (said once per run, for a person who started the agent).
        case joined(runId: String)
        case exit(code: Int32, reason: String)
        case log(String)
        /// A line said whatever the verbosity (a process gone, a unit given back).
        case notice(String)
    }

    /// A train block whose inner results are all in, in the plan's unit order.
    public struct Block: Equatable, Sendable {
        public var unit: WorkUnit
        public var plan: TrainPlan
        public var results: [TrainResult]
    }

    /// A unit being computed: its inner units are [first, first + count) of the inner phase.
    struct Job: Sendable {
        var unit: WorkUnit
        var plan: TrainPlan?
        var first: Int
        var count: Int
        var results: [Int: CoordinatorMachine.UnitResult] = [:]
    }

    /// What a configuration means to the agent (the shell reads the configuration).
    public struct Configured: Sendable {
        public var heartbeatInterval: Double
        public var silence: Double
        /// θ's and α's sizes (α: 0 unless Meta-SGD).
        public var theta: Int, alpha: Int
        /// The estimated cost of a leaf (train episodes), to cut the cheapest into pieces.
        public var cost: @Sendable ([Int]) -> Int
        public init(
            heartbeatInterval: Double, silence: Double, theta: Int, alpha: Int,
            cost: @escaping @Sendable ([Int]) -> Int
        ) {
            self.heartbeatInterval = heartbeatInterval; self.silence = silence
            self.theta = theta; self.alpha = alpha; self.cost = cost
        }
    }

    /// Towards the coordinator.
    public private(set) var up: WorkerMachine
    /// Towards the processes (nil until the first configuration: processes start once it is known).
    public private(set) var down: CoordinatorMachine?
    /// Prefix of the inner runs' ids (unique per agent, e.g. with its pid).
    let innerRunPrefix: String
    private var runs = 0
    private var configured: Configured?
    /// A configuration was handed to the shell and `onConfigured` has not come yet.
    private var awaitingConfiguration = false
    private var innerConfig = ""
    /// The coordinator's run the inner run serves.
    private var innerServes = ""
    private var processesStarted = false
    private var announcedRun: String?
    /// Units the coordinator gave us, waiting for the running inner phase (with the weights to install first, if any).
    private var queue: [(unit: WorkUnit, install: Weights?)] = []
    private var jobs: [Job] = []
    public private(set) var exited: (code: Int32, reason: String)?

    /// `worker` is the agent's face towards the coordinator (its name, procs, hardware and limits set).
    public init(worker: WorkerMachine, innerRunPrefix: String) {
        up = worker; self.innerRunPrefix = innerRunPrefix
    }

    /// The coordinator's run (what the shell stamps on messages it sends up).
    public var runId: String { up.runId }
    public var wakeAt: Double? { up.wakeAt }
    /// Units of the coordinator's taken on and not yet sent back.
    public var unitsHeld: Int { queue.count + jobs.count }
    /// Whether a peer is one of the inner run's live processes.
    public func knowsProcess(_ peer: PeerID) -> Bool { down?.knows(peer) ?? false }

    // MARK: towards the coordinator

    public mutating func onStart(now: Double) -> [Directive] { fromUp(up.onStart(now: now), now) }

    public mutating func onMessage(_ e: Envelope, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        var out = fromUp(up.onMessage(e, now: now), now)
        if case .welcome = e.message, up.runId == e.runId, announcedRun != e.runId, exited == nil {
            announcedRun = e.runId
            out.append(.joined(runId: e.runId))
        }
        return out + pump(now)
    }

    public mutating func onUndecodable(_ error: WireError, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        return fromUp(up.onUndecodable(error), now)
    }

    /// The link heard the coordinator of `runId` without a message to hand on (see `WorkerMachine.onHeard`).
    public mutating func onHeard(runId: String, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        return fromUp(up.onHeard(runId: runId, now: now), now) + pump(now)
    }

    /// The link cannot go on with what the coordinator agreed to: join again.
    public mutating func onRejoinNeeded(_ reason: String, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        return fromUp(up.onRejoinNeeded(reason, now: now), now) + pump(now)
    }

    /// The agent goes (interrupted, its parent gone, no process left): goodbye, then exit with `code`.
    public mutating func onLeaving(_ reason: String, code: Int32, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        let out = fromUp(up.onLeaving(reason, now: now), now)
        guard exited == nil else { return out }
        exited = (code, reason)
        return out + [.exit(code: code, reason: reason)]
    }

    /// The shell took the configuration a `configure` directive asked for: a fresh inner run
    /// (the processes join it again by themselves), and the processes started the first time.
    public mutating func onConfigured(_ c: Configured, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        configured = c
        awaitingConfiguration = false
        up.heartbeatInterval = c.heartbeatInterval
        up.livenessTimeout = c.silence
        var out = newInnerRun()
        if !processesStarted {
            processesStarted = true
            out.append(.startProcesses)
        }
        return out + pump(now)
    }

    /// The shell summed a block (`reduce`): its result goes to the coordinator.
    public mutating func onReduced(_ r: TrainResult, now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        return [.computed(unitId: r.unitId)] + fromUp(up.onComputed(.trainResult(r), now: now), now) + pump(now)
    }

    // MARK: towards the processes

    public mutating func onProcessMessage(_ e: Envelope, from peer: PeerID, now: Double) -> [Directive] {
        guard exited == nil, down != nil else { return [] }
        return fromDown(down!.onMessage(e, from: peer, now: now), now) + pump(now)
    }

    public mutating func onProcessUndecodable(_ error: WireError, from peer: PeerID, now: Double) -> [Directive] {
        guard exited == nil, down != nil else { return [] }
        return fromDown(down!.onUndecodable(error, from: peer, now: now), now) + pump(now)
    }

    /// A process ended (the shell's supervisor starts it again).
    public mutating func onProcessGone(name: String, reason: String, crashed: Bool, now: Double) -> [Directive] {
        guard exited == nil, down != nil else { return [] }
        var out: [Directive] = []
        for d in down!.onWorkerGone(name: name, reason: reason, crashed: crashed) {
            // What happened to a process is said whatever the verbosity.
            switch d {
            case .log(let line): out.append(.notice(line))
            case .dropped(let peer, let line): out += [.notice(line), .forgetDown(peer)]
            default: out += fromDown([d], now)
            }
        }
        return out + pump(now)
    }

    public mutating func onTick(now: Double) -> [Directive] {
        guard exited == nil else { return [] }
        var out = fromUp(up.onTick(now: now), now)
        if down != nil, exited == nil { out += fromDown(down!.onTick(now: now), now) }
        return out + pump(now)
    }

    /// Tells the processes the run is over.
    public func shutdown(reason: String) -> [Directive] {
        (down?.shutdown(reason: reason) ?? []).compactMap {
            if case .send(let p, let m) = $0 { return .sendDown(p, m) }
            return nil
        }
    }

    // MARK: inside

    mutating func fromUp(_ directives: [WorkerMachine.Directive], _ now: Double) -> [Directive] {
        var out: [Directive] = []
        for d in directives where exited == nil {
            switch d {
            case .send(let m):
                out.append(.sendUp(m))
            case .configure(let json):
                // Nothing of the old run is computed any more; units that follow wait for `onConfigured`.
                queue = []; jobs = []
                innerConfig = json
                awaitingConfiguration = true
                out.append(.configure(configJSON: json))
            case .compute(let u, let install):
                out.append(.computing(unitId: u.id))
                queue.append((u, install))
            case .exit(let code, let reason):
                exited = (code, reason)
                out.append(.exit(code: code, reason: reason))
            case .log(let s):
                out.append(.log(s))
            }
        }
        return out
    }

    mutating func fromDown(_ directives: [CoordinatorMachine.Directive], _ now: Double) -> [Directive] {
        var out: [Directive] = []
        for d in directives where exited == nil {
            switch d {
            case .send(let peer, let m): out.append(.sendDown(peer, m))
            case .sendWeights(let peer): out.append(.sendWeightsDown(peer))
            case .unitResult(let index, let r): out += collect(index, r, now)
            case .phaseComplete: break // each unit was sent on as its last result came in
            case .log(let s): out.append(.log(s))
            case .dropped(let peer, let line): out += [.log(line), .forgetDown(peer)]
            case .waitingForWorkers: break
            case .fail(let reason): out.append(.log("internal: " + reason))
            case .unitFailed(let index, let reason): out += giveUp(index, reason, now)
            }
        }
        return out
    }

    /// A fresh inner run: weights versions within a run only grow, so a
    /// coordinator's new run (a restart with `--resume` starts again at an
    /// older version) gets a new inner run too. The processes notice the new
    /// run id, forget what they hold and join it by themselves.
    mutating func newInnerRun() -> [Directive] {
        // The old run's processes join the new one afresh (with new files): nothing of theirs is kept.
        let old = down?.liveWorkerIDs ?? []
        runs += 1
        let runId = "\(innerRunPrefix)-\(runs)"
        innerServes = up.runId
        var settings = CoordinatorMachine.Settings(
            runId: runId, datasetFingerprint: up.datasetFingerprint, configJSON: innerConfig,
            workerTimeout: configured?.silence ?? 3, waitingNoticeInterval: 1e9)
        // Its own processes' results: sizes and counts are checked here, values by the coordinator.
        settings.checkFinite = false
        if let c = configured { settings.gradientCounts = (c.theta, c.alpha) }
        down = CoordinatorMachine(settings: settings, version: -1)
        return old.map { .forgetDown($0) } + [.innerRun(runId)]
    }

    /// Starts queued units: into the running inner phase when they are of its
    /// version and kind, or as a new phase (after publishing their weights) once it is done.
    mutating func pump(_ now: Double) -> [Directive] {
        var out: [Directive] = []
        while exited == nil, !awaitingConfiguration, down != nil, let (u, install) = queue.first {
            if let running = jobs.first {
                guard install == nil, u.version == down!.version, u.kind == running.unit.kind else { break }
            } else if let w = install {
                if innerServes != up.runId || w.version <= down!.version {
                    out.append(
                        .log(
                            "the coordinator's run is now \(up.runId) at version \(w.version); the processes join a new inner run"
                        ))
                    out += newInnerRun()
                }
                down!.onPublished(version: w.version)
                out.append(.publish(w, live: down!.liveWorkerIDs))
            }
            queue.removeFirst()
            guard u.version == down!.version else {
                out.append(
                    .log("internal: unit \(u.id) for version \(u.version) while holding \(down!.version); skipped"))
                continue
            }
            out += start(u, now)
        }
        return out
    }

    /// Hands a unit's inner units to the processes: a train block's leaves (the
    /// cheapest cut into pieces when several processes are live), an eval unit as it is.
    mutating func start(_ u: WorkUnit, _ now: Double) -> [Directive] {
        var plan: TrainPlan?
        let units: [[[Int]]], order: [Int]?
        switch u.kind {
        case .train:
            let cost = configured?.cost ?? { $0.count }
            let p = TrainPlan.split(u.leaves, split: max(0, down!.liveProcs - 1), cost: cost)
            plan = p; units = p.units; order = p.dispatchOrder
        case .eval:
            units = [u.leaves]; order = nil
        }
        let running = !jobs.isEmpty
        jobs.append(Job(unit: u, plan: plan, first: down!.phaseUnits, count: units.count))
        if running { return fromDown(down!.addUnits(units, dispatchOrder: order), now) }
        return fromDown(
            down!.startPhase(.init(kind: u.kind, version: u.version, units: units, dispatchOrder: order)), now)
    }

    /// Files an inner result; when a unit has every one, its result goes on: an
    /// eval unit's as it is, a train block's once the shell has summed it.
    mutating func collect(_ index: Int, _ r: CoordinatorMachine.UnitResult, _ now: Double) -> [Directive] {
        guard let j = jobs.firstIndex(where: { index >= $0.first && index < $0.first + $0.count }) else { return [] }
        jobs[j].results[index - jobs[j].first] = r
        guard jobs[j].results.count == jobs[j].count else { return [] }
        let job = jobs.remove(at: j)
        let results = (0..<job.count).map { job.results[$0]! }
        switch (job.unit.kind, job.plan) {
        case (.train, let plan?):
            var sums: [TrainResult] = []
            for case .train(let t) in results { sums.append(t) }
            guard sums.count == results.count else { return [.log("internal: an eval result in a train block")] }
            return [.reduce(Block(unit: job.unit, plan: plan, results: sums))]
        default:
            guard case .eval(let e) = results[0] else { return [.log("internal: a train result for an eval unit")] }
            let message = Message.evalResult(
                EvalResult(
                    unitId: job.unit.id, version: job.unit.version, sums: e.sums, queries: e.queries, losses: e.losses))
            return [.computed(unitId: job.unit.id)] + fromUp(up.onComputed(message, now: now), now)
        }
    }

    /// An inner unit crashed two of our processes: the coordinator gets its
    /// block back (and, through `ready`, every other one we hold), and the
    /// processes start afresh in a new inner run, so that the crashing unit is
    /// not handed out again here.
    mutating func giveUp(_ index: Int, _ reason: String, _ now: Double) -> [Directive] {
        let job = jobs.first { index >= $0.first && index < $0.first + $0.count }
        var out: [Directive] = [.notice("giving back unit \(job?.unit.id ?? -1): " + reason)]
        jobs = []; queue = []
        out += newInnerRun()
        if let job { out += fromUp(up.onGaveUp(unitId: job.unit.id, reason: reason, now: now), now) }
        return out
    }
}

import Coordination
import Core
import Datasets
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import Storage
import Training
import Transport
import Wire

/// One connection per host: `worker --procs N`. Towards the coordinator the
/// agent is one worker (a `WorkerMachine` over a `WorkerLink`) that says it
/// has N processes; towards its N compute processes (plain `worker`s it
/// starts and restarts) it is a coordinator (a `CoordinatorMachine` over a
/// `CoordinatorLink` on a private ipc:// endpoint, payloads through shared
/// memory). It takes each weights version once and republishes it to its
/// processes, splits each block into its leaves (the cheapest cut into
/// pieces, so that the block ends on single tasks), adds the processes'
/// results over the block's subtree (the same `PlanReducer` as the
/// coordinator's), and sends one result per block. Blocks that arrive while
/// one runs join the same inner phase, so the processes never wait between
/// them; a block of another version waits until the running ones are done.
public final class HostAgent {
    let endpoint: String
    let dataPath: String
    let name: String
    let procs: Int
    let protocolVersion: UInt16
    let stop: StopFlag
    let log: (String) -> Void
    /// Lines said whatever the verbosity: a process that died and was started again.
    public var notice: (String) -> Void = { _ in }
    /// Lines for a person who started this agent by hand: joining a run, and why it cannot get in.
    public var announce: (String) -> Void = { _ in }
    public var coordinatorTimeout = 120.0
    /// Exit when this process is no longer our parent (an agent started by `train`).
    public var exitWithParent: pid_t?
    /// Offer the coordinator a shared-memory file for results (used if it is on this machine).
    public var sharedMemory = true
    /// Records this process's timeline when set; `traceDir` also makes each process write its own.
    public var trace: Trace?
    public var traceDir: String?
    /// CURVE keys towards the coordinator (nil: none); its own processes connect on a private ipc:// endpoint without.
    public var curve: CurveClientKeys?
    public private(set) var exitReason = ""

    private var up: WorkerLink!
    private var upMachine: WorkerMachine!
    private var down: CoordinatorLink!
    private var downMachine: CoordinatorMachine?
    private var children: LocalWorkers?
    private var innerEndpoint = ""
    private var dataset: Dataset!
    private var cost: UnitCost?
    private var reducer: PlanReducer?
    /// This agent's copy of the weights its processes compute on, and the block sums it sends.
    private var theta: FloatBuffer?, alpha: FloatBuffer?
    private var gradTheta: FloatBuffer?, gradAlpha: FloatBuffer?
    private var runs = 0
    private var exitCode: Int32?
    private var advice: JoinAdvice!
    private var announcedRun: String?

    /// Units the coordinator gave us, waiting for the running inner phase (with the weights to install first, if any).
    private var queue: [(unit: WorkUnit, install: Weights?)] = []
    /// A unit being computed: its inner units are [first, first + count) of the inner phase.
    struct Job {
        var unit: WorkUnit
        var plan: TrainPlan?
        var first: Int
        var count: Int
        var results: [Int: CoordinatorMachine.UnitResult] = [:]
    }
    private var jobs: [Job] = []

    public init(
        endpoint: String, dataPath: String, name: String, procs: Int,
        protocolVersion: UInt16 = Envelope.protocolVersion,
        stop: StopFlag, log: @escaping (String) -> Void
    ) {
        self.endpoint = endpoint; self.dataPath = dataPath; self.name = name; self.procs = procs
        self.protocolVersion = protocolVersion; self.stop = stop; self.log = log
    }

    public func run() throws -> Int32 {
        keepLargeBuffersMapped()
        dataset = try DatasetFile.read(dataPath)
        let ctx = ZMQContext()
        up = WorkerLink(endpoint: endpoint, sharedMemory: sharedMemory, protocolVersion: protocolVersion, log: log)
        up.curve = curve
        advice = JoinAdvice(endpoint: endpoint, publicKey: curve?.pair.publicKey)
        try up.connect(ctx)
        innerEndpoint = "ipc://" + NSTemporaryDirectory() + "metatrain-agent-\(getpid()).sock"
        down = CoordinatorLink(endpoint: innerEndpoint, log: log)
        try down.bind(ctx)
        defer {
            up.close(); down.close()
            let path = String(innerEndpoint.dropFirst("ipc://".count))
            unlink(path); unlink(path + ".pub")
        }
        upMachine = WorkerMachine(
            name: name, datasetFingerprint: dataset.fingerprint, coordinatorTimeout: coordinatorTimeout)
        upMachine.hardware = Hardware(cpuModel: cpuModelName(), blasCore: BLAS.coreName)
        upMachine.procs = procs
        upMachine.episodeLimits = (dataset.episodes(.train).count, dataset.episodes(.val).count)
        do {
            let code = try loop()
            stopChildren(exitReason)
            return code
        } catch {
            try? executeUp(upMachine.onLeaving("\(error)", now: monotonicNow()))
            stopChildren("host agent failed: \(error)")
            throw error
        }
    }

    func loop() throws -> Int32 {
        try executeUp(upMachine.onStart(now: monotonicNow()))
        var lastTick = monotonicNow()
        while exitCode == nil {
            if stop.isSet {
                exitReason = "interrupted"
                try executeUp(upMachine.onLeaving(exitReason, now: monotonicNow()))
                return 130
            }
            let wait =
                upMachine.wakeAt.map { max(0, min(100, Int((($0 - monotonicNow()) * 1000).rounded(.up)))) } ?? 100
            _ = try zmqPoll(up.sockets + down.sockets, timeoutMs: wait)
            for incoming in try up.receive(timeoutMs: 0) where exitCode == nil {
                switch incoming {
                case .message(let e):
                    trace?.received(e.message)
                    try executeUp(upMachine.onMessage(e, now: monotonicNow()))
                    if case .welcome = e.message, upMachine.runId == e.runId, announcedRun != e.runId {
                        announcedRun = e.runId
                        announce("joined run \(e.runId) as \(name) (\(procs) processes)")
                    }
                    if let reason = up.takeRejoinReason() {
                        try executeUp(upMachine.onRejoinNeeded(reason, now: monotonicNow()))
                    }
                case .undecodable(let e):
                    try executeUp(upMachine.onUndecodable(e))
                }
            }
            for (peer, incoming) in try down.receive(timeoutMs: 0) where exitCode == nil {
                guard downMachine != nil else { continue } // processes start once the configuration is known
                switch incoming {
                case .message(let e): try executeDown(downMachine!.onMessage(e, from: peer, now: monotonicNow()))
                case .undecodable(let e):
                    try executeDown(downMachine!.onUndecodable(e, from: peer, now: monotonicNow()))
                }
            }
            if exitCode == nil { try pump() }
            let now = monotonicNow()
            if exitCode == nil, now - lastTick >= 0.5 || upMachine.wakeAt.map({ now >= $0 }) == true {
                lastTick = now
                if let parent = exitWithParent, getppid() != parent {
                    exitReason = "parent process \(parent) exited"
                    try executeUp(upMachine.onLeaving(exitReason, now: now))
                    return 1
                }
                for line in advice.lines(for: up.connectionEvents(), now: now) { announce(line) }
                try executeUp(upMachine.onTick(now: now))
                if downMachine != nil {
                    try executeDown(downMachine!.onTick(now: now))
                    down.forget(except: { self.downMachine!.knows($0) })
                    for (child, reason, crashed) in children?.ended.take() ?? [] {
                        for d in downMachine!.onWorkerGone(name: child, reason: reason, crashed: crashed) {
                            if case .log(let line) = d { notice(line) } else { try executeDown([d]) }
                        }
                        if let line = children?.restart(child) { notice(line) }
                    }
                    if let why = children?.allGone {
                        // Nothing computes here any more: leave, so that the coordinator re-queues our blocks at once.
                        exitReason = why
                        try executeUp(upMachine.onLeaving(why, now: now))
                        return 1
                    }
                }
            }
        }
        return exitCode!
    }

    // MARK: towards the coordinator

    func executeUp(_ directives: [WorkerMachine.Directive]) throws {
        for d in directives where exitCode == nil {
            switch d {
            case .send(let m):
                let sent = try up.send(m, runId: upMachine.runId)
                trace?.sent(sent)
            case .configure(let json):
                try configure(json)
            case .compute(let u, let install):
                trace?.mark(.compute, u.id)
                queue.append((u, install))
            case .exit(let code, let reason):
                exitReason = reason
                exitCode = code
            case .log(let s):
                log(s)
            }
        }
    }

    /// A run with a new configuration: fresh buffers, a fresh inner run (the
    /// processes join it again by themselves), and the processes started the first time.
    func configure(_ json: String) throws {
        let config = try Config.parse(json, origin: "coordinator's config")
        upMachine.follow(config.cluster)
        innerSilence = config.cluster.silenceS
        let payload = ModelPayload(config: config, items: dataset.nItems)
        let n = payload.theta, metasgd = payload.alpha > 0
        cost = UnitCost(dataset: dataset, config: config)
        reducer = PlanReducer(count: n)
        theta = FloatBuffer(count: n); alpha = metasgd ? FloatBuffer(count: n) : nil
        try up.limitFrames(toModelOf: payload.floats)
        gradTheta = FloatBuffer(count: n); gradAlpha = metasgd ? FloatBuffer(count: n) : nil
        queue = []; jobs = []
        innerConfig = json
        newInnerRun()
        if children == nil {
            let traceDir = self.traceDir
            let workers = LocalWorkers(
                data: dataPath,
                name: { slot, restart in
                    "\(self.name)-\(slot)" + (restart == 0 ? "" : ".\(restart)")
                },
                extra: { slot in
                    ["--procs", "1"] + (traceDir.map { ["--trace", $0 + "/worker-\(slot).jsonl"] } ?? [])
                })
            children = workers
            workers.startAll(procs, endpoint: down.boundEndpoint)
        }
    }

    /// The configuration of the inner run, and the coordinator's run it serves.
    private var innerConfig = ""
    private var innerServes = ""
    private var innerSilence = 3.0

    /// A fresh inner run: weights versions within a run only grow, so a
    /// coordinator's new run (a restart with `--resume` starts again at an
    /// older version) gets a new inner run too. The processes notice the new
    /// run id, forget what they hold and join it by themselves.
    func newInnerRun() {
        runs += 1
        let runId = "agent-\(getpid())-\(runs)"
        down.setRun(runId)
        innerServes = upMachine.runId
        var settings = CoordinatorMachine.Settings(
            runId: runId, datasetFingerprint: dataset.fingerprint, configJSON: innerConfig,
            workerTimeout: innerSilence, waitingNoticeInterval: 1e9)
        // Its own processes' results: sizes and counts are checked here, values by the coordinator.
        settings.checkFinite = false
        if let theta { settings.gradientCounts = (theta.count, alpha?.count ?? 0) }
        downMachine = CoordinatorMachine(settings: settings, version: -1)
    }

    /// Starts queued units: into the running inner phase when they are of its
    /// version and kind, or as a new phase (after installing their weights) once it is done.
    func pump() throws {
        guard downMachine != nil else { return }
        while let (u, install) = queue.first {
            if let running = jobs.first {
                guard install == nil, u.version == downMachine!.version, u.kind == running.unit.kind else { return }
            } else if let w = install {
                if innerServes != upMachine.runId || w.version <= downMachine!.version {
                    log(
                        "the coordinator's run is now \(upMachine.runId) at version \(w.version); the processes join a new inner run"
                    )
                    newInnerRun()
                }
                try publish(w)
            }
            queue.removeFirst()
            guard u.version == downMachine!.version else {
                log("internal: unit \(u.id) for version \(u.version) while holding \(downMachine!.version); skipped")
                continue
            }
            try start(u)
        }
    }

    /// Copies weights in and publishes them to the processes.
    func publish(_ w: Weights) throws {
        guard let theta, w.theta.count == theta.count, w.alpha.count == (alpha?.count ?? 0) else {
            throw MetatrainError(
                "weights of \(w.theta.count)+\(w.alpha.count) floats do not fit this model (\(theta?.count ?? 0) parameters)"
            )
        }
        w.theta.copy(to: theta.ptr)
        if let alpha { w.alpha.copy(to: alpha.ptr) }
        down.setWeights(
            Weights(version: w.version, theta: Floats(viewing: theta), alpha: alpha.map { Floats(viewing: $0) } ?? []))
        downMachine!.onPublished(version: w.version)
        down.publish(live: downMachine!.liveWorkerIDs)
    }

    /// Hands a unit's inner units to the processes: a train block's leaves (the
    /// cheapest cut into pieces when several processes are live), an eval unit as it is.
    func start(_ u: WorkUnit) throws {
        var plan: TrainPlan?
        let units: [[[Int]]], order: [Int]?
        switch u.kind {
        case .train:
            let c = cost!
            let p = TrainPlan.split(
                u.leaves, split: max(0, downMachine!.liveProcs - 1), cost: { c.cost($0, split: .train) })
            plan = p; units = p.units; order = p.dispatchOrder
        case .eval:
            units = [u.leaves]; order = nil
        }
        let running = !jobs.isEmpty
        jobs.append(Job(unit: u, plan: plan, first: downMachine!.phaseUnits, count: units.count))
        if running {
            try executeDown(downMachine!.addUnits(units, dispatchOrder: order))
        } else {
            try executeDown(
                downMachine!.startPhase(.init(kind: u.kind, version: u.version, units: units, dispatchOrder: order)))
        }
    }

    // MARK: towards the processes

    func executeDown(_ directives: [CoordinatorMachine.Directive]) throws {
        for d in directives where exitCode == nil {
            switch d {
            case .send(let peer, let m): down.send(peer, m)
            case .sendWeights(let peer): down.sendWeights(peer)
            case .unitResult(let index, let r): try collect(index, r)
            case .phaseComplete: break // each unit was sent on as its last result came in
            case .log(let s): log(s)
            case .waitingForWorkers: break
            case .fail(let reason): log("internal: " + reason)
            case .unitFailed(let index, let reason): try giveUp(index, reason)
            }
        }
    }

    /// Files an inner result; when a unit has every one, sends the unit's result.
    func collect(_ index: Int, _ r: CoordinatorMachine.UnitResult) throws {
        guard let j = jobs.firstIndex(where: { index >= $0.first && index < $0.first + $0.count }) else { return }
        jobs[j].results[index - jobs[j].first] = r
        guard jobs[j].results.count == jobs[j].count else { return }
        let job = jobs.remove(at: j)
        let results = (0..<job.count).map { job.results[$0]! }
        let message: Message
        switch job.unit.kind {
        case .train:
            let sums = try results.map { r -> TrainResult in
                guard case .train(let t) = r else { throw MetatrainError("internal: an eval result in a train block") }
                return t
            }
            // Read where the processes wrote them (the results keep their frames and files alive).
            let total = try withExtendedLifetime(sums) {
                try reducer!.reduce(
                    sums.map(UnitSums.init(viewing:)), plan: job.plan!, gradTheta: gradTheta!, gradAlpha: gradAlpha)
            }
            message = .trainResult(
                TrainResult(
                    unitId: job.unit.id, version: job.unit.version, gradTheta: Floats(viewing: gradTheta!),
                    gradAlpha: gradAlpha.map { Floats(viewing: $0) } ?? [],
                    lossSum: total.lossSum, tasks: total.tasks))
        case .eval:
            guard case .eval(let e) = results[0] else {
                throw MetatrainError("internal: a train result for an eval unit")
            }
            message = .evalResult(
                EvalResult(
                    unitId: job.unit.id, version: job.unit.version, sums: e.sums, queries: e.queries, losses: e.losses))
        }
        trace?.mark(.computed, job.unit.id)
        try executeUp(upMachine.onComputed(message, now: monotonicNow()))
    }

    /// An inner unit crashed two of our processes: the coordinator gets its
    /// block back (and, through `ready`, every other one we hold), and the
    /// processes start afresh in a new inner run, so that the crashing unit is
    /// not handed out again here.
    func giveUp(_ index: Int, _ reason: String) throws {
        let job = jobs.first { index >= $0.first && index < $0.first + $0.count }
        notice("giving back unit \(job?.unit.id ?? -1): " + reason)
        jobs = []; queue = []
        newInnerRun()
        if let job { try executeUp(upMachine.onGaveUp(unitId: job.unit.id, reason: reason, now: monotonicNow())) }
    }

    /// Tells the processes the run is over and waits for them (none may outlive the agent).
    func stopChildren(_ reason: String) {
        if let m = downMachine {
            for d in m.shutdown(reason: reason) { if case .send(let p, let msg) = d { down.send(p, msg) } }
            down.publishShutdown(reason)
            Thread.sleep(forTimeInterval: 0.2)
        }
        children?.reap()
    }
}

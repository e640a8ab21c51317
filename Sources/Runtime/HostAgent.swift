import Coordination
import Core
import Datasets
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import Link
import Storage
import Training
import Transport
import Wire

/// One connection per host: `worker --procs N`. The protocol logic is
/// `AgentMachine`'s (a worker towards the coordinator, a coordinator towards
/// its processes); this shell owns what it cannot: the link towards the
/// coordinator (a `WorkerLink`), the private link towards its N compute
/// processes (a `CoordinatorLink` on an ipc:// endpoint, payloads through
/// shared memory), the processes themselves (plain `worker`s it starts and
/// restarts), the weights buffers it republishes and the block reduce's
/// arithmetic.
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
    /// Why the agent left (its machine keeps it).
    public var exitReason: String { machine?.exited?.reason ?? "" }

    private var up: WorkerLink!
    private var down: CoordinatorLink!
    private var machine: AgentMachine!
    private var children: LocalWorkers?
    private var innerEndpoint = ""
    private var dataset: Dataset!
    private var reducer: PlanReducer?
    /// This agent's copy of the weights its processes compute on, and the block sums it sends.
    private var theta: FloatBuffer?, alpha: FloatBuffer?
    private var gradTheta: FloatBuffer?, gradAlpha: FloatBuffer?

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
        try up.connect(ctx)
        innerEndpoint = "ipc://" + NSTemporaryDirectory() + "metatrain-agent-\(getpid()).sock"
        down = CoordinatorLink(endpoint: innerEndpoint, log: log)
        try down.bind(ctx)
        defer {
            up.close(); down.close()
            let path = String(innerEndpoint.dropFirst("ipc://".count))
            unlink(path); unlink(path + ".pub")
        }
        var face = WorkerMachine(
            name: name, datasetFingerprint: dataset.fingerprint, coordinatorTimeout: coordinatorTimeout)
        face.hardware = Hardware(cpuModel: cpuModelName(), blasCore: BLAS.coreName)
        face.procs = procs
        face.episodeLimits = (dataset.episodes(.train).count, dataset.episodes(.val).count)
        machine = AgentMachine(worker: face, innerRunPrefix: "agent-\(getpid())")
        do {
            let code = try loop()
            stopChildren(exitReason)
            return code
        } catch {
            try? execute(machine.onLeaving("\(error)", code: 1, now: monotonicNow()))
            stopChildren("host agent failed: \(error)")
            throw error
        }
    }

    func loop() throws -> Int32 {
        try execute(machine.onStart(now: monotonicNow()))
        let loop = UpLoop(link: up, stop: stop, exitWithParent: exitWithParent, others: down.sockets, notice: announce)
        try loop.run(
            UpLoop.Shell(
                exited: { self.machine.exited != nil },
                wakeAt: { self.machine.wakeAt },
                leave: { reason, code in
                    try self.execute(self.machine.onLeaving(reason, code: code, now: monotonicNow()))
                },
                onOthers: { _, _ in
                    for (peer, incoming) in try self.down.receive(timeoutMs: 0) where self.machine.exited == nil {
                        switch incoming {
                        case .message(let e):
                            try self.execute(self.machine.onProcessMessage(e, from: peer, now: monotonicNow()))
                        case .undecodable(let e):
                            try self.execute(self.machine.onProcessUndecodable(e, from: peer, now: monotonicNow()))
                        }
                    }
                },
                onEvent: { event, now in
                    switch event {
                    case .message(let e):
                        self.trace?.received(e.message)
                        try self.execute(self.machine.onMessage(e, now: now))
                    case .undecodable(let e): try self.execute(self.machine.onUndecodable(e, now: now))
                    case .heard(let runId): try self.execute(self.machine.onHeard(runId: runId, now: now))
                    case .rejoinNeeded(let runId, let reason):
                        try self.execute(self.machine.onHeard(runId: runId, now: now))
                        try self.execute(self.machine.onRejoinNeeded(reason, now: now))
                    }
                },
                onTick: { now in try self.tick(now) }))
        return machine.exited?.code ?? 1
    }

    /// The agent's own timers: the machine's, and its processes that ended.
    func tick(_ now: Double) throws {
        try execute(machine.onTick(now: now))
        for (child, reason, crashed) in children?.ended.take() ?? [] {
            try execute(machine.onProcessGone(name: child, reason: reason, crashed: crashed, now: now))
            if let line = children?.restart(child) { notice(line) }
        }
        if let why = children?.allGone {
            // Nothing computes here any more: leave, so that the coordinator re-queues our blocks at once.
            try execute(machine.onLeaving(why, code: 1, now: now))
        }
    }

    /// Carries out the machine's directives.
    func execute(_ directives: [AgentMachine.Directive]) throws {
        for d in directives {
            switch d {
            case .sendUp(let m):
                let sent = try up.send(m, runId: machine.runId)
                trace?.sent(sent)
            case .configure(let json):
                try execute(machine.onConfigured(try configure(json), now: monotonicNow()))
            case .sendDown(let peer, let m): down.send(peer, m)
            case .sendWeightsDown(let peer): down.sendWeights(peer)
            case .forgetDown(let peer): down.forget(peer)
            case .innerRun(let runId): down.setRun(runId)
            case .publish(let w, let live): try publish(w, to: live)
            case .startProcesses: startProcesses()
            case .reduce(let block): try execute(machine.onReduced(try reduce(block), now: monotonicNow()))
            case .computing(let id): trace?.mark(.compute, id)
            case .computed(let id): trace?.mark(.computed, id)
            case .joined(let runId): announce("joined run \(runId) as \(name) (\(procs) processes)")
            case .exit: break // the loop ends on `machine.exited`
            case .log(let s): log(s)
            case .notice(let s): notice(s)
            }
        }
    }

    /// A run with a new configuration: fresh buffers sized for its model.
    func configure(_ json: String) throws -> AgentMachine.Configured {
        let config = try Config.parse(json, origin: "coordinator's config")
        let payload = ModelPayload(config: config, items: dataset.nItems)
        let n = payload.theta, metasgd = payload.alpha > 0
        let cost = UnitCost(dataset: dataset, config: config)
        reducer = PlanReducer(count: n)
        theta = FloatBuffer(count: n); alpha = metasgd ? FloatBuffer(count: n) : nil
        try up.limitFrames(toModelOf: payload.floats)
        gradTheta = FloatBuffer(count: n); gradAlpha = metasgd ? FloatBuffer(count: n) : nil
        return AgentMachine.Configured(
            heartbeatInterval: config.cluster.heartbeatS, silence: config.cluster.silenceS, theta: n,
            alpha: payload.alpha, cost: { cost.cost($0, split: .train) })
    }

    /// The compute processes, started once (they join each new inner run by themselves).
    func startProcesses() {
        guard children == nil else { return }
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

    /// Copies weights in and publishes them to the processes.
    func publish(_ w: Weights, to live: [PeerID]) throws {
        guard let theta, w.theta.count == theta.count, w.alpha.count == (alpha?.count ?? 0) else {
            throw MetatrainError(
                "weights of \(w.theta.count)+\(w.alpha.count) floats do not fit this model (\(theta?.count ?? 0) parameters)"
            )
        }
        w.theta.copy(to: theta.ptr)
        if let alpha { w.alpha.copy(to: alpha.ptr) }
        down.setWeights(
            Weights(version: w.version, theta: Floats(viewing: theta), alpha: alpha.map { Floats(viewing: $0) } ?? []))
        down.publish(live: live)
    }

    /// A block's sum over its subtree, read where the processes wrote their results
    /// (the results keep their frames and files alive).
    func reduce(_ block: AgentMachine.Block) throws -> TrainResult {
        let total = try withExtendedLifetime(block.results) {
            try reducer!.reduce(
                block.results.map(UnitSums.init(viewing:)), plan: block.plan, gradTheta: gradTheta!,
                gradAlpha: gradAlpha)
        }
        return TrainResult(
            unitId: block.unit.id, version: block.unit.version, gradTheta: Floats(viewing: gradTheta!),
            gradAlpha: gradAlpha.map { Floats(viewing: $0) } ?? [], lossSum: total.lossSum, tasks: total.tasks)
    }

    /// Tells the processes the run is over and waits for them (none may outlive the agent).
    func stopChildren(_ reason: String) {
        if machine.down != nil {
            for d in machine.shutdown(reason: reason) { if case .sendDown(let p, let m) = d { down.send(p, m) } }
            down.publishShutdown(reason)
            Thread.sleep(forTimeInterval: 0.2)
        }
        children?.reap()
    }
}

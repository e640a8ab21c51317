import Coordination
import Core
import Datasets
import ExperimentConfig
import Foundation
import Kernels
import Link
import Storage
import Training
import Transport
import Wire

/// Runs one worker: owns a DEALER (work, results, fetches) and a SUB (weight
/// broadcasts) socket, feeds messages to the WorkerMachine, and computes units
/// with a UnitComputer on the dataset it opened itself. Units are computed on
/// a thread of their own, one at a time, so the worker keeps listening and
/// heartbeating while it computes: a coordinator tells a busy worker from a
/// frozen one in seconds.
public final class WorkerShell {
    let endpoint: String
    let dataPath: String
    let name: String
    let protocolVersion: UInt16
    let stop: StopFlag
    let log: (String) -> Void
    /// Lines said whatever the verbosity: joining a run, and why this worker cannot get in.
    public var notice: (String) -> Void = { _ in }
    public var coordinatorTimeout = 120.0
    /// Exit when this process is no longer our parent (workers started by `train`).
    public var exitWithParent: pid_t?
    /// Fault injection for tests: computing unit N+1 fails (as a real error would), so the worker says goodbye and exits.
    public var failAfterUnits: Int?
    /// Fault injection for tests: unit N+1 never finishes, while the worker goes on heartbeating.
    public var hangAfterUnits: Int?
    /// Testing only: a process that is given a train unit holding this episode crashes (a trap),
    /// as a process would on a unit that hits a bug. Read from METATRAIN_TEST_CRASH_ON_EPISODE,
    /// so that it reaches the processes a host agent starts.
    /// Testing only: every train result has the lowest bit of its first gradient flipped
    /// (METATRAIN_TEST_FLIP_BIT=1), as a host with other kernels or bad memory would send.
    /// Both exist only in builds made for tests (`-Xswiftc -DMETATRAIN_TEST_HOOKS`): in the
    /// binary a user runs, no inherited variable can corrupt a gradient or crash a worker.
    #if METATRAIN_TEST_HOOKS
    static let flipBit = ProcessInfo.processInfo.environment["METATRAIN_TEST_FLIP_BIT"] == "1"
    static let crashOnEpisode = ProcessInfo.processInfo.environment["METATRAIN_TEST_CRASH_ON_EPISODE"].flatMap {
        Int($0)
    }
    #else
    static let flipBit = false
    static let crashOnEpisode: Int? = nil
    #endif
    private var unitsComputed = 0

    private var link: WorkerLink!
    private var machine: WorkerMachine!
    private var dataset: Dataset!
    private var computer: UnitComputer?
    private var exitCode: Int32?
    public private(set) var exitReason = ""
    /// Records this process's timeline when set (`--trace`).
    public var trace: Trace?
    /// Offer the coordinator a shared-memory file for results (used if it is on this machine).
    public var sharedMemory = true
    /// CURVE keys towards the coordinator (nil: none).
    public var curve: CurveClientKeys?

    /// The unit being computed, on `computeQueue` (the machine hands out one at a time:
    /// the units waiting are its); the thread says so on `doneOut` (an inproc pair) when done.
    private var running: ComputeJob?
    private let computeQueue = DispatchQueue(label: "metatrain.compute")
    private var doneIn: ZMQSocket!, doneOut: ZMQSocket!
    private var announcedRun: String?

    public init(
        endpoint: String, dataPath: String, name: String, protocolVersion: UInt16 = Envelope.protocolVersion,
        stop: StopFlag, log: @escaping (String) -> Void
    ) {
        self.endpoint = endpoint; self.dataPath = dataPath; self.name = name; self.protocolVersion = protocolVersion
        self.stop = stop; self.log = log
    }

    public func run() throws -> Int32 {
        keepLargeBuffersMapped()
        BLAS.useSingleThread()
        dataset = try DatasetFile.read(dataPath)
        let ctx = ZMQContext()
        link = WorkerLink(endpoint: endpoint, sharedMemory: sharedMemory, protocolVersion: protocolVersion, log: log)
        link.curve = curve
        try link.connect(ctx)
        let done = "inproc://metatrain-computed-\(ObjectIdentifier(self).hashValue)"
        doneIn = try ZMQSocket(ctx, .pair)
        try doneIn.bind(done)
        doneOut = try ZMQSocket(ctx, .pair)
        try doneOut.connect(done)
        machine = WorkerMachine(
            name: name, datasetFingerprint: dataset.fingerprint, coordinatorTimeout: coordinatorTimeout)
        machine.hardware = Hardware(cpuModel: cpuModelName(), blasCore: BLAS.coreName)
        machine.episodeLimits = (dataset.episodes(.train).count, dataset.episodes(.val).count)
        machine.computeSlots = 1
        defer {
            // A unit still computing finishes before the sockets close and the process exits:
            // exit-time teardown (OpenBLAS's buffers among it) must not pull memory from under it.
            computeQueue.sync {}
            closeSockets()
        }
        do {
            return try loop()
        } catch {
            // Whatever went wrong, the coordinator hears it now rather than after its worker timeout.
            leave(because: "\(error)")
            throw error
        }
    }

    func loop() throws -> Int32 {
        try execute(machine.onStart(now: monotonicNow()))
        let loop = UpLoop(link: link, stop: stop, exitWithParent: exitWithParent, others: [doneIn], notice: notice)
        try loop.run(
            UpLoop.Shell(
                exited: { self.exitCode != nil },
                wakeAt: { self.machine.wakeAt },
                leave: { reason, code in
                    self.exitReason = reason
                    self.leave(because: reason)
                    self.exitCode = code
                },
                onOthers: { ready, _ in
                    guard ready[0] else { return }
                    while try self.doneIn.receive(timeoutMs: 0) != nil {}
                    try self.finishComputing()
                },
                onEvent: { event, now in
                    switch event {
                    case .message(let e):
                        self.trace?.received(e.message)
                        try self.execute(self.machine.onMessage(e, now: now))
                        self.announceJoin(e)
                    case .undecodable(let e): try self.execute(self.machine.onUndecodable(e))
                    case .heard(let runId): try self.execute(self.machine.onHeard(runId: runId, now: now))
                    case .rejoinNeeded(let runId, let reason):
                        try self.execute(self.machine.onHeard(runId: runId, now: now))
                        try self.execute(self.machine.onRejoinNeeded(reason, now: now))
                    }
                },
                onTick: { now in try self.execute(self.machine.onTick(now: now)) }))
        return exitCode!
    }

    /// One line when this worker joins a run (not on every rejoin of the same run).
    func announceJoin(_ e: Envelope) {
        guard case .welcome = e.message, machine.runId == e.runId, announcedRun != e.runId else { return }
        announcedRun = e.runId
        notice("joined run \(e.runId) as \(name) (1 process)")
    }

    /// Says goodbye (the machine does, once, if it still speaks to a coordinator); `closeSockets` lets it leave.
    func leave(because reason: String) {
        try? execute(machine.onLeaving(reason, now: monotonicNow()))
    }

    /// Closes the sockets, giving a goodbye still queued up to a second to leave.
    func closeSockets() { link?.close() }

    func execute(_ directives: [WorkerMachine.Directive]) throws {
        for d in directives where exitCode == nil {
            switch d {
            case .send(let message):
                let sent = try link.send(message, runId: machine.runId)
                trace?.sent(sent)
            case .configure(let json):
                let config = try Config.parse(json, origin: "coordinator's config")
                computer = UnitComputer(config: config, dataset: dataset)
                machine.follow(config.cluster)
                try link.limitFrames(toModelOf: computer!.payload.floats)
            case .compute(let u, let install):
                try startComputing(u, install: install)
            case .exit(let code, let reason):
                exitReason = reason
                exitCode = code
            case .log(let s):
                log(s)
            }
        }
    }

    /// Starts `u` on the compute thread (the machine's one slot: nothing else runs there).
    func startComputing(_ u: WorkUnit, install: Weights?) throws {
        guard running == nil else { throw MetatrainError("internal: unit \(u.id) handed out while another computes") }
        guard let computer else { throw MetatrainError("internal: unit \(u.id) scheduled before the configuration") }
        if let failAfterUnits, unitsComputed >= failAfterUnits {
            throw MetatrainError("injected failure computing unit \(u.id) (--fail-after-units \(failAfterUnits))")
        }
        if u.kind == .train, let e = WorkerShell.crashOnEpisode, u.episodes.contains(e) {
            fatalError("injected crash computing unit \(u.id) (METATRAIN_TEST_CRASH_ON_EPISODE=\(e))")
        }
        unitsComputed += 1
        trace?.mark(.compute, u.id)
        let job = ComputeJob(unit: u)
        running = job
        if let hangAfterUnits, unitsComputed > hangAfterUnits {
            log("injected hang computing unit \(u.id) (--hang-after-units \(hangAfterUnits))")
            return
        }
        // The computer and the pair's sending end are the compute thread's alone until it says it is done.
        let handoff = ComputeHandoff(computer: computer, done: doneOut)
        computeQueue.async {
            job.finish(Result { try WorkerShell.compute(u, install: install, on: handoff.computer) })
            try? handoff.done.send([[1]])
        }
    }

    /// The running unit is done: its result goes to the machine (and out), which hands out the next.
    func finishComputing() throws {
        guard let job = running, let result = job.result else { return }
        running = nil
        trace?.mark(.computed, job.unit.id)
        try execute(machine.onComputed(try result.get(), now: monotonicNow()))
    }

    /// Computes `u` on `computer`, first installing `install` (the machine says when the computer lacks the unit's weights).
    static func compute(_ u: WorkUnit, install: Weights?, on computer: UnitComputer) throws -> Message {
        if let w = install {
            try w.theta.withUnsafeBytes { t in
                try w.alpha.withUnsafeBytes { a in try computer.install(theta: t, alpha: a) }
            }
        }
        switch u.kind {
        case .train:
            // Views of the computer's gradient buffers: encoded (copied) before the next unit overwrites them.
            let r = computer.train(leaves: u.leaves)
            if flipBit, r.gradTheta.count > 0 { r.gradTheta[0] = Float(bitPattern: r.gradTheta[0].bitPattern ^ 1) }
            return .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: Floats(viewing: r.gradTheta),
                    gradAlpha: r.gradAlpha.map { Floats(viewing: $0) } ?? [], lossSum: r.lossSum, tasks: r.tasks))
        case .eval:
            let per = computer.eval(episodes: u.episodes)
            return .evalResult(
                EvalResult(
                    unitId: u.id, version: u.version, sums: per.flatMap { $0.0.sums },
                    queries: per.map { $0.0.queries }, losses: per.map { Double($0.1) }))
        }
    }
}

/// One unit on the compute thread; the main thread reads its result once the thread says it is done.
final class ComputeJob: @unchecked Sendable {
    let unit: WorkUnit
    private let lock = NSLock()
    private var value: Result<Message, Error>?
    init(unit: WorkUnit) { self.unit = unit }
    var result: Result<Message, Error>? { lock.lock(); defer { lock.unlock() }; return value }
    func finish(_ r: Result<Message, Error>) { lock.lock(); value = r; lock.unlock() }
}

/// What the main thread lends the compute thread for one unit.
struct ComputeHandoff: @unchecked Sendable {
    let computer: UnitComputer
    let done: ZMQSocket
}

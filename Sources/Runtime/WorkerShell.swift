import Configuration
import Coordination
import Core
import Data
import Foundation
import Kernels
import Storage
import Training
import Transport
import Wire

/// Runs one worker: owns a DEALER (work, results, fetches) and a SUB (weight
/// broadcasts) socket, feeds messages to the WorkerMachine, and computes units
/// with a UnitComputer on the dataset it opened itself.
public final class WorkerShell {
    let endpoint: String
    let dataPath: String
    let name: String
    let protocolVersion: UInt16
    let stop: StopFlag
    let log: (String) -> Void
    public var coordinatorTimeout = 120.0
    /// Exit when this process is no longer our parent (workers started by `train`).
    public var exitWithParent: pid_t?
    /// Fault injection for tests: computing unit N+1 fails (as a real error would), so the worker says goodbye and exits.
    public var failAfterUnits: Int?
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

    public init(endpoint: String, dataPath: String, name: String, protocolVersion: UInt16 = Envelope.protocolVersion,
                stop: StopFlag, log: @escaping (String) -> Void) {
        self.endpoint = endpoint; self.dataPath = dataPath; self.name = name; self.protocolVersion = protocolVersion
        self.stop = stop; self.log = log
    }

    public func run() throws -> Int32 {
        keepLargeBuffersMapped()
        BLAS.useSingleThread()
        dataset = try DatasetFile.read(dataPath)
        let ctx = ZMQContext()
        link = WorkerLink(endpoint: endpoint, sharedMemory: sharedMemory, protocolVersion: protocolVersion, log: log)
        try link.connect(ctx)
        machine = WorkerMachine(name: name, datasetFingerprint: dataset.fingerprint, coordinatorTimeout: coordinatorTimeout)
        machine.hardware = Hardware(cpuModel: cpuModelName(), blasCore: BLAS.coreName)
        machine.episodeLimits = (dataset.episodes(.train).count, dataset.episodes(.val).count)
        defer { closeSockets() }
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
        var lastTick = monotonicNow()
        while exitCode == nil {
            if stop.isSet {
                exitReason = "interrupted"
                leave(because: exitReason)
                return 130
            }
            // Wake for the machine's own deadline (a pending fetch) if it comes before the next poll ends.
            let wait = machine.wakeAt.map { max(0, min(100, Int((($0 - monotonicNow()) * 1000).rounded(.up)))) } ?? 100
            for incoming in try link.receive(timeoutMs: wait) where exitCode == nil {
                switch incoming {
                case .message(let e):
                    trace?.received(e.message)
                    try execute(machine.onMessage(e, now: monotonicNow()))
                    if let reason = link.takeRejoinReason() { try execute(machine.onRejoinNeeded(reason, now: monotonicNow())) }
                case .undecodable(let e):
                    try execute(machine.onUndecodable(e))
                }
            }
            let now = monotonicNow()
            if exitCode == nil, now - lastTick >= 0.5 || machine.wakeAt.map({ now >= $0 }) == true {
                lastTick = now
                if let parent = exitWithParent, getppid() != parent {
                    exitReason = "parent process \(parent) exited"
                    leave(because: exitReason)
                    return 1
                }
                try execute(machine.onTick(now: now))
            }
        }
        return exitCode!
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
            case .compute(let u, let install):
                try execute(machine.onComputed(try compute(u, install: install), now: monotonicNow()))
            case .exit(let code, let reason):
                exitReason = reason
                exitCode = code
            case .log(let s):
                log(s)
            }
        }
    }

    /// Computes `u`, first installing `install` (the machine says when the computer lacks the unit's weights).
    func compute(_ u: WorkUnit, install: Weights?) throws -> Message {
        guard let computer else { throw MetatrainError("internal: unit \(u.id) scheduled before the configuration") }
        if let failAfterUnits, unitsComputed >= failAfterUnits {
            throw MetatrainError("injected failure computing unit \(u.id) (--fail-after-units \(failAfterUnits))")
        }
        unitsComputed += 1
        trace?.mark(.compute, u.id)
        defer { trace?.mark(.computed, u.id) }
        if let w = install {
            try w.theta.withUnsafeBytes { t in try w.alpha.withUnsafeBytes { a in try computer.install(theta: t, alpha: a) } }
        }
        switch u.kind {
        case .train:
            // Views of the computer's gradient buffers: encoded (copied) before the next unit overwrites them.
            let r = computer.train(leaves: u.leaves)
            return .trainResult(TrainResult(unitId: u.id, version: u.version, gradTheta: Floats(viewing: r.gradTheta),
                                            gradAlpha: r.gradAlpha.map { Floats(viewing: $0) } ?? [], lossSum: r.lossSum, tasks: r.tasks))
        case .eval:
            let per = computer.eval(episodes: u.episodes)
            return .evalResult(EvalResult(unitId: u.id, version: u.version, sums: per.flatMap { $0.0.sums },
                                          queries: per.map { $0.0.queries }, losses: per.map { Double($0.1) }))
        }
    }
}

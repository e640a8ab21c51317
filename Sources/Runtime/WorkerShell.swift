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

    private var dealer: ZMQSocket!
    private var sub: ZMQSocket!
    private var machine: WorkerMachine!
    private var dataset: Dataset!
    private var computer: UnitComputer?
    private var exitCode: Int32?
    public private(set) var exitReason = ""
    /// Records this process's timeline when set (`--trace`).
    public var trace: Trace?
    /// Offer the coordinator a shared-memory file for results (used if it is on this machine).
    public var sharedMemory = true
    private var arena: SharedArena?
    private var arenaAccepted = false   // some coordinator mapped `arena`: a new hello needs a new one
    private var resultsShared = false   // the current coordinator reads results from `arena`
    private var weightsView: SharedView?   // the current coordinator's file, where broadcasts may leave weights
    private var rejoinReason: String?      // set when the transport needs the coordinator to admit us again

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
        dealer = try ZMQSocket(ctx, .dealer)
        sub = try ZMQSocket(ctx, .sub)
        do {
            try dealer.connect(endpoint)
            try sub.connect(try publishEndpoint(for: endpoint))
            try sub.subscribe()
        } catch let e as TransportError { throw MetatrainError("cannot connect to \(endpoint): \(e)") }
        machine = WorkerMachine(name: name, datasetFingerprint: dataset.fingerprint, coordinatorTimeout: coordinatorTimeout)
        machine.hardware = Hardware(cpuModel: cpuModelName(), blasCore: BLAS.coreName)
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
            let ready = try zmqPoll([dealer, sub], timeoutMs: wait)
            for (socket, isReady) in zip([dealer!, sub!], ready) where isReady && exitCode == nil {
                while exitCode == nil, let frames = try socket.receiveFrames(timeoutMs: 0) {
                    guard frames.count == 1 else { log("dropped a message of \(frames.count) frames"); continue }
                    do {
                        // Decoded in place: weights stay in the received frame until installed.
                        let e = try Envelope.decode(ByteBlock(view: frames[0].bytes, owner: frames[0]))
                        trace?.received(e.message)
                        try execute(machine.onMessage(transported(e), now: monotonicNow()))
                        if let reason = rejoinReason {
                            rejoinReason = nil
                            try execute(machine.onRejoinNeeded(reason, now: monotonicNow()))
                        }
                    } catch let e as WireError {
                        try execute(machine.onUndecodable(e))
                    }
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

    /// Closes the sockets, giving a goodbye still queued up to a second to leave
    /// (the process may exit right after, before any deinit would run).
    func closeSockets() {
        dealer?.setLinger(milliseconds: 1000)
        dealer = nil; sub = nil
    }

    func execute(_ directives: [WorkerMachine.Directive]) throws {
        for d in directives where exitCode == nil {
            switch d {
            case .send(let message):
                let m = transported(message)
                // Encoded straight into the outgoing ZeroMQ message (one copy of a 1.5 MB gradient, unless shared).
                let e = Envelope(runId: machine.runId, message: m, protocolVersion: protocolVersion)
                let frame = OutgoingFrame(count: e.encodedCount)
                e.encode(into: frame.mutableBytes)
                try dealer.send([], frame)
                trace?.sent(m)
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

    /// The transport's part of a received message: a welcome says whether the
    /// coordinator maps our file and offers its own; a broadcast may point into
    /// it. A broadcast we cannot read (another run's file, or none mapped) still
    /// tells the machine that the coordinator spoke, and which run it runs: it
    /// goes on as a heartbeat with the broadcast's run id, so a worker that has
    /// to join a restarted coordinator notices at once, and the unit waiting for
    /// these weights fetches them inline.
    ///
    /// A coordinator that maps our file but whose own file we cannot open (e.g.
    /// it runs as another user) would put every broadcast where we cannot read
    /// it, and we would fetch the weights every iteration. So we give up shared
    /// memory and say hello again without an offer: the coordinator then sends
    /// us everything through the socket.
    func transported(_ e: Envelope) -> Envelope {
        switch e.message {
        case .welcome(let w):
            resultsShared = w.sharedMemory != nil && arena != nil
            weightsView = nil
            if resultsShared, let offer = w.sharedMemory {
                arenaAccepted = true
                do { weightsView = try SharedView(offer) } catch {
                    sharedMemory = false
                    arena = nil; arenaAccepted = false; resultsShared = false
                    rejoinReason = "cannot read the coordinator's shared memory (\(error)); results and weights go through the socket"
                    var out = e
                    out.message = .heartbeat
                    return out
                }
            }
            return e
        case .weights(let w) where w.shared != nil:
            var out = e
            do {
                guard let view = weightsView, e.runId == machine.runId else {
                    throw SharedMemoryError("not in a shared-memory file this worker maps")
                }
                var resolved = w
                (resolved.theta, resolved.alpha) = try view.floats(w.shared!)
                resolved.shared = nil
                out.message = .weights(resolved)
            } catch {
                log("cannot read weights \(w.version) of run \(e.runId): \(error)")
                out.message = .heartbeat
            }
            return out
        default:
            return e
        }
    }

    /// The transport's part of a sent message: a hello offers a shared-memory file,
    /// and a train result leaves its gradients there when the coordinator mapped it.
    func transported(_ m: Message) -> Message {
        switch m {
        case .hello(var h) where sharedMemory:
            if arena == nil || arenaAccepted {
                // A new coordinator (or one that forgot us) gets a new file: the old one is mapped by the old run.
                arena = nil; arenaAccepted = false; resultsShared = false
                do { arena = try SharedArena(name: "metatrain-results") } catch {
                    log("results go through the socket: \(error)")
                    sharedMemory = false
                }
            }
            h.sharedMemory = arena?.offer
            return .hello(h)
        case .trainResult(var r) where resultsShared:
            guard let space = arena!.allocate(bytes: 4 * (r.gradTheta.count + r.gradAlpha.count), version: r.version) else { return m }
            r.shared = SharedArena.put(r.gradTheta, r.gradAlpha, into: space)
            r.gradTheta = []; r.gradAlpha = []
            return .trainResult(r)
        default:
            return m
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
            let r = computer.train(episodes: u.episodes)
            return .trainResult(TrainResult(unitId: u.id, version: u.version, gradTheta: Floats(viewing: r.gradTheta),
                                            gradAlpha: r.gradAlpha.map { Floats(viewing: $0) } ?? [], lossSum: r.lossSum, tasks: r.tasks))
        case .eval:
            let per = computer.eval(episodes: u.episodes)
            return .evalResult(EvalResult(unitId: u.id, version: u.version, sums: per.flatMap { $0.0.sums },
                                          queries: per.map { $0.0.queries }, losses: per.map { Double($0.1) }))
        }
    }
}

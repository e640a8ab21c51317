import Configuration
import Coordination
import Core
import Evaluation
import Foundation
import Kernels
import Training
import Transport
import Wire

/// Runs the coordinator: owns the ROUTER (work) and PUB (weights) sockets and a
/// timer, feeds messages to the CoordinatorMachine, and carries out its
/// directives with the MetaTrainer's math between phases.
public final class CoordinatorShell {
    public let trainer: MetaTrainer
    public let requestedEndpoint: String
    public var workerTimeout = 60.0
    let stop: StopFlag
    let progress: ProgressSink?
    /// The endpoint workers connect to, once bound.
    public private(set) var boundEndpoint = ""
    /// Called once the sockets are bound (e.g. to start local workers).
    public var onBound: ((String) -> Void)?
    /// Worker processes whoever started them saw end (`train`'s local workers).
    public var endedWorkers: EndedWorkers?
    /// Called on the coordinator's thread after an ended worker was dropped (e.g. to
    /// start it again); returns a line for the log, if any.
    public var onWorkerEnded: ((String) -> String?)?

    private var router: ZMQSocket!
    private var pub: ZMQSocket!
    private var machine: CoordinatorMachine!
    private var runId = ""
    /// The published weights encoded inline, made on first need (fetch replies, workers without shared memory).
    private var weightsFrame: OutgoingFrame?
    /// Where local workers read published weights (nil: every broadcast is inline).
    private var weightsArena: SharedArena?
    private enum Next { case train(Int), eval(Int), finish }
    private var next = Next.finish
    private var plan: MetaTrainer.TrainPlan?
    private var pendingLine: [(String, JSON)] = []
    private var started = 0.0, startIteration = 0
    private var lastHR10: Double?
    /// Seconds the coordinator itself spent per iteration on reduce, Adam and broadcast (for bench).
    public private(set) var coordinatorSeconds: [Double] = []
    private var plainEvery = 1
    /// Records this process's timeline when set (`--trace`).
    public var trace: Trace?
    /// Workers' shared-memory files we mapped, by peer, with the path each hello offered.
    private var shared: [PeerID: (path: String, view: SharedView)] = [:]

    public init(trainer: MetaTrainer, endpoint: String, stop: StopFlag, progress: ProgressSink?) {
        self.trainer = trainer; self.requestedEndpoint = endpoint; self.stop = stop; self.progress = progress
    }

    func say(_ s: String) { trainer.run.log(s); progress?.log(s) }

    /// Binds ROUTER at the endpoint and PUB next to it. Port 0 picks a free pair of ports.
    func bind(_ ctx: ZMQContext) throws {
        if requestedEndpoint.hasPrefix("tcp://"), requestedEndpoint.hasSuffix(":0") {
            let host = String(requestedEndpoint.dropLast(2))
            for _ in 0..<50 {
                let r = try ZMQSocket(ctx, .router)
                try r.bind(host + ":*")
                let ep = r.lastEndpoint
                let p = try ZMQSocket(ctx, .pub)
                if (try? p.bind(try publishEndpoint(for: ep))) != nil {
                    router = r; pub = p; boundEndpoint = ep
                    return
                }
            }
            throw MetatrainError("\(requestedEndpoint): could not find two free adjacent ports")
        }
        router = try ZMQSocket(ctx, .router)
        pub = try ZMQSocket(ctx, .pub)
        do {
            try router.bind(requestedEndpoint)
            try pub.bind(try publishEndpoint(for: requestedEndpoint))
        } catch let e as TransportError { throw MetatrainError("cannot bind \(requestedEndpoint): \(e)") }
        boundEndpoint = router.lastEndpoint
    }

    /// Runs to the end of training (0), or until interrupted (130).
    public func run() throws -> Int32 {
        keepLargeBuffersMapped()
        do { weightsArena = try SharedArena(name: "metatrain-weights") } catch {
            say("weights go through the socket: \(error)")
        }
        let ctx = ZMQContext()
        try bind(ctx)
        runId = "\(trainer.config.seed)-\(getpid())-\(Int(Date().timeIntervalSince1970))"
        machine = CoordinatorMachine(settings: .init(runId: runId, datasetFingerprint: trainer.dataset.fingerprint,
                                                     configJSON: trainer.config.json, workerTimeout: workerTimeout),
                                     version: trainer.iteration)
        publishWeights()
        say("coordinator: run \(runId), \(trainer.config.maml.algorithm.rawValue), \(trainer.iterations) iterations of \(trainer.metaBatchSize) tasks, listening on \(boundEndpoint) (weights on \(try publishEndpoint(for: boundEndpoint)))")
        onBound?(boundEndpoint)
        next = trainer.finished ? .finish : .train(trainer.iteration + 1)
        started = monotonicNow(); startIteration = trainer.iteration
        plainEvery = max(1, trainer.iterations / 20)
        var lastTick = monotonicNow()
        while true {
            if stop.isSet {
                say("interrupted at iteration \(trainer.iteration); stopping workers")
                // Checkpoint the last completed iteration, unless its validation is still
                // outstanding (a resume from there would skip it and diverge).
                var validated = true
                if case .eval = next { validated = false }
                if validated && trainer.iteration > 0 && !trainer.checkpointDue(trainer.iteration) {
                    try trainer.writePeriodicCheckpoint()
                }
                shutdownWorkers("coordinator interrupted")
                return 130
            }
            if !machine.inPhase {
                switch next {
                case .train(let t):
                    // With several workers, end the phase on single tasks (the plan never changes the bits).
                    let p = trainer.trainPlan(iteration: t, split: machine.liveWorkers - 1)
                    plan = p
                    trace?.mark(.phase, trainer.iteration)
                    try execute(machine.startPhase(.init(kind: .train, version: trainer.iteration, units: p.units,
                                                         dispatchOrder: p.dispatchOrder)))
                case .eval:
                    let units = trainer.evalUnits()
                    trace?.mark(.phase, trainer.iteration)
                    try execute(machine.startPhase(.init(kind: .eval, version: trainer.iteration, units: units,
                                                         dispatchOrder: trainer.dispatchOrder(units, split: .val))))
                case .finish:
                    try trainer.writeFinal()
                    say(trainer.stoppedEarly
                        ? "early stop at iteration \(trainer.iteration): no val HR@10 improvement in \(trainer.config.eval.patience) evaluations; wrote final.h5"
                        : "finished \(trainer.iteration) iterations; wrote final.h5")
                    shutdownWorkers("training finished")
                    return 0
                }
                continue
            }
            if try zmqPoll([router], timeoutMs: 100)[0] {
                while let frames = try router.receiveFrames(timeoutMs: 0) { try receive(frames) }
            }
            for (name, reason) in endedWorkers?.take() ?? [] where !stop.isSet {
                try execute(machine.onWorkerGone(name: name, reason: reason))
                if let line = onWorkerEnded?(name) { say(line) }
            }
            let now = monotonicNow()
            if now - lastTick >= 1 {
                lastTick = now
                try execute(machine.onTick(now: now))
                for peer in shared.keys where !machine.knows(peer) { shared[peer] = nil }   // dropped workers
                if let since = machine.withoutWorkersSince, progress?.isTerminal == true {
                    progress?.update("iteration \(trainer.iteration)/\(trainer.iterations)  waiting for workers \(formatDuration(now - since))  (metatrain worker --connect \(boundEndpoint))")
                }
            }
        }
    }

    func receive(_ frames: [Frame]) throws {
        guard frames.count == 2 else {
            progress?.log("dropped a message of \(frames.count) frames")
            return
        }
        let peer = PeerID(Array(frames[0].bytes))
        do {
            // Decoded in place: a result's gradients stay in its frame until the reduce reads them.
            var e = try Envelope.decode(ByteBlock(view: frames[1].bytes, owner: frames[1]))
            trace?.received(e.message)
            switch e.message {
            case .hello(let h): mapShared(h, from: peer)
            case .trainResult(let r):
                if let p = r.shared {
                    // The gradients are read where the worker wrote them.
                    guard let s = shared[peer] else { throw WireError.invalid("train result in shared memory that was never offered") }
                    do {
                        var resolved = r
                        (resolved.gradTheta, resolved.gradAlpha) = try s.view.floats(p)
                        resolved.shared = nil
                        e.message = .trainResult(resolved)
                    } catch {
                        throw WireError.invalid("train result for unit \(r.unitId): \(error)")
                    }
                }
            default: break
            }
            try execute(machine.onMessage(e, from: peer, now: monotonicNow()))
        } catch let e as WireError {
            try execute(machine.onUndecodable(e, from: peer))
        }
    }

    /// Maps the shared-memory file a hello offers, if it is on this machine
    /// (a repeated hello offering the same file keeps the mapping).
    func mapShared(_ h: Hello, from peer: PeerID) {
        guard let offer = h.sharedMemory else {
            if shared.removeValue(forKey: peer) != nil {
                say("worker \(h.workerName): results and weights through the socket from now on (its new hello offers no shared memory)")
            }
            return
        }
        if shared[peer]?.path == offer.path { return }
        do {
            shared[peer] = (offer.path, try SharedView(offer))
            say("worker \(h.workerName): results through shared memory (\(offer.path))")
        } catch {
            shared[peer] = nil
            say("worker \(h.workerName): results through the socket (shared memory: \(error))")
        }
    }

    func send(_ peer: PeerID, _ bytes: [UInt8]) {
        do { try router.send([peer.bytes, bytes]) } catch { say("could not send to \(peer): \(error)") }
    }

    func execute(_ directives: [CoordinatorMachine.Directive]) throws {
        for d in directives {
            switch d {
            case .send(let peer, var m):
                switch m {
                case .welcome(var w):
                    w.sharedMemory = shared[peer] != nil ? weightsArena?.offer : nil
                    m = .welcome(w)
                case .refuse: shared[peer] = nil
                default: break
                }
                send(peer, Envelope(runId: runId, message: m).encode())
                if case .work(let u) = m { trace?.mark(.send, u.id) }
            case .sendWeights(let peer):
                // Always inline: a worker fetches when it missed a broadcast or could not read one.
                do { try router.send([peer.bytes], inlineWeights()) } catch { say("could not send weights to \(peer): \(error)") }
            case .log(let s): say(s)
            case .waitingForWorkers(let seconds):
                say("no worker connected" + (seconds >= 1 ? " for \(formatDuration(seconds))" : "")
                    + "; waiting for workers (metatrain worker --connect \(boundEndpoint) --data DATASET)")
            case .phaseComplete(let r): try complete(r)
            }
        }
    }

    /// Views of θ and α (empty unless Meta-SGD) as the trainer holds them.
    func currentWeights() -> (Floats, Floats) {
        (Floats(viewing: trainer.theta), trainer.alpha.map { Floats(viewing: $0) } ?? [])
    }

    /// The current weights as one inline ZeroMQ message, encoded once per
    /// version and shared by the broadcast and every fetch reply without copying.
    func inlineWeights() -> OutgoingFrame {
        if let f = weightsFrame { return f }
        let (theta, alpha) = currentWeights()
        let e = Envelope(runId: runId, message: .weights(Weights(version: trainer.iteration, theta: theta, alpha: alpha)))
        let frame = OutgoingFrame(count: e.encodedCount)
        e.encode(into: frame.mutableBytes)
        weightsFrame = frame
        return frame
    }

    /// Broadcasts the current weights. When every live worker reads our shared
    /// memory, they go into slot (version mod 2) and the broadcast says where:
    /// a slot is rewritten two versions later, after every unit that could read
    /// it has finished (see docs/PROTOCOL.md). Otherwise the broadcast carries them.
    func publishWeights() {
        weightsFrame = nil
        let v = trainer.iteration
        let local = shared.keys.filter { machine.knows($0) }.count
        let (theta, alpha) = currentWeights()
        if let arena = weightsArena, machine.liveWorkers > 0, local == machine.liveWorkers,
           let space = arena.slot(v & 1, bytes: 4 * (theta.count + alpha.count)) {
            let payload = SharedArena.put(theta, alpha, into: space)
            try? pub.send([Envelope(runId: runId, message: .weights(Weights(version: v, theta: [], alpha: [], shared: payload))).encode()])
        } else {
            try? pub.send([], inlineWeights())
        }
        trace?.mark(.published, v)
    }

    func complete(_ r: CoordinatorMachine.PhaseResults) throws {
        switch r.phase.kind {
        case .train:
            let results = try r.results.map { u -> TrainResult in
                guard case .train(let t) = u else { throw MetatrainError("train phase got an eval result") }
                return t
            }
            guard let plan else { throw MetatrainError("internal: a train phase completed without its plan") }
            let t = trainer.iteration + 1
            let c0 = monotonicNow()
            // The gradients are read where they landed (the results keep their frames alive).
            let (loss, norm) = try withExtendedLifetime(results) {
                try trainer.applyTrain(results.map { x in
                    MetaTrainer.UnitSums(gradTheta: UnsafeRawBufferPointer(start: x.gradTheta.baseAddress, count: 4 * x.gradTheta.count),
                                         gradAlpha: UnsafeRawBufferPointer(start: x.gradAlpha.baseAddress, count: 4 * x.gradAlpha.count),
                                         lossSum: x.lossSum, tasks: x.tasks)
                }, plan: plan, iteration: t)
            }
            machine.onPublished(version: trainer.iteration)
            publishWeights()
            let c1 = monotonicNow()
            coordinatorSeconds.append(c1 - c0)
            let elapsed = monotonicNow() - started
            let rate = Double(t - startIteration) / max(elapsed, 1e-9)
            pendingLine = [("iteration", .int(t)), ("meta_loss", .number(loss)), ("grad_norm", .number(norm)),
                           ("workers", .int(machine.liveWorkers)), ("iter_per_s", .number(rate))]
            let eta = Double(trainer.iterations - t) / max(rate, 1e-9)
            let line = String(format: "iter %d/%d  %.2f it/s  ETA %@  meta-loss %.4f  val HR@10 %@  workers %d",
                              t, trainer.iterations, rate, formatDuration(eta), loss,
                              lastHR10.map { String(format: "%.4f", $0) } ?? "-", machine.liveWorkers)
            if progress?.isTerminal == true { progress?.update(line) } else if t % plainEvery == 0 { say(line) }
            if trainer.evalDue(t) { next = .eval(t); return }
            try finishIteration(t)
        case .eval:
            var per: [(MetricSums, Float)] = []
            for u in r.results {
                guard case .eval(let e) = u else { throw MetatrainError("eval phase got a train result") }
                for i in 0..<e.queries.count {
                    var s = MetricSums()
                    s.sums = Array(e.sums[(6 * i)..<(6 * i + 6)])
                    s.queries = e.queries[i]
                    per.append((s, Float(e.losses[i])))
                }
            }
            let v = try trainer.applyEval(per)
            lastHR10 = v.hr10
            pendingLine += [("val_hr@10", .number(v.hr10)), ("val_ndcg@10", .number(v.ndcg10)), ("val_mrr", .number(v.mrr)),
                            ("val_loss", .number(v.loss))]
            say(String(format: "iteration %d: val HR@10 %.4f  NDCG@10 %.4f  MRR %.4f  loss %.4f%@", trainer.iteration,
                       v.hr10, v.ndcg10, v.mrr, v.loss, v.improved ? "  (best, saved best.h5)" : ""))
            try finishIteration(trainer.iteration)
        }
    }

    func finishIteration(_ t: Int) throws {
        try trainer.run.appendMetrics(.object(pendingLine))
        pendingLine = []
        if trainer.checkpointDue(t) { try trainer.writePeriodicCheckpoint() }
        next = trainer.finished ? .finish : .train(t + 1)
    }

    func shutdownWorkers(_ reason: String) {
        for d in machine.shutdown(reason: reason) { if case .send(let p, let m) = d { send(p, Envelope(runId: runId, message: m).encode()) } }
        try? pub.send([Envelope(runId: runId, message: .shutdown(reason: reason)).encode()])
        Thread.sleep(forTimeInterval: 0.3)   // let the frames leave before the sockets close
    }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite else { return "-" }
    let t = Int(s)
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

import Coordination
import Core
import Evaluation
import ExperimentConfig
import Foundation
import Kernels
import Link
import Training
import Transport
import Wire

/// Runs the coordinator: owns the ROUTER (work) and PUB (weights) sockets and a
/// timer, feeds messages to the CoordinatorMachine, and carries out its
/// directives with the MetaTrainer's math between phases.
public final class CoordinatorShell {
    public let trainer: MetaTrainer
    public let requestedEndpoint: String
    /// CURVE keys and the workers' keys let in (nil: none).
    public var curve: CurveServerKeys?
    /// Silence after which a worker is dropped (nil: the run's cluster.heartbeat_s × cluster.liveness).
    public var workerTimeout: Double?
    let stop: StopFlag
    let progress: ProgressSink?
    /// The endpoint workers connect to, once bound.
    public var boundEndpoint: String { link?.boundEndpoint ?? "" }
    /// Called once the sockets are bound (e.g. to start local workers).
    public var onBound: ((String) -> Void)?
    /// Worker processes whoever started them saw end (`train`'s local workers).
    public var endedWorkers: EndedWorkers?
    /// Why the local workers (`train`'s) can no longer run, once none may start again: the run stops.
    public var localWorkersGone: (() -> String?)?
    /// Called on the coordinator's thread after an ended worker was dropped (e.g. to
    /// start it again); returns a line for the log, if any.
    public var onWorkerEnded: ((String) -> String?)?

    private var link: CoordinatorLink!
    private var machine: CoordinatorMachine!
    private enum Next { case train(Int), eval(Int), finish }
    private var next = Next.finish
    private var plan: TrainPlan?
    private var pendingLine: [(String, JSON)] = []
    private var started = 0.0, startIteration = 0
    private var recent: [(Int, Double)] = [] // (iteration, time) of the last iterations, for the rate
    private var lastHR10: Double?
    /// Seconds the coordinator itself spent per iteration on reduce, Adam and broadcast (for bench).
    public private(set) var coordinatorSeconds: [Double] = []
    private var plainEvery = 1
    /// Records this process's timeline when set (`--trace`).
    public var trace: Trace?
    /// The command that continues this run, with maml.iterations set to the given
    /// count if any (said whenever the run stops); nil: none is said.
    public var resumeCommand: ((_ iterations: Int?) -> String)?
    /// Spot checks (`--verify F`): the fraction of units computed twice and compared.
    public var verifyFraction = 0.0
    private var verifiedBefore = 0, mismatchesBefore = 0

    public init(trainer: MetaTrainer, endpoint: String, stop: StopFlag, progress: ProgressSink?) {
        self.trainer = trainer; self.requestedEndpoint = endpoint; self.stop = stop; self.progress = progress
    }

    func say(_ s: String) { trainer.run.log(s); progress?.log(s) }

    /// The command a worker joins with, key flags included when this coordinator requires keys.
    var workerCommand: String {
        "metatrain worker --connect \(boundEndpoint) --data DATASET"
            + (curve == nil ? "" : " --key WORKER.secret --coordinator-key COORDINATOR.pub")
    }

    /// Runs to the end of training (0), or until interrupted (130).
    public func run() throws -> Int32 {
        keepLargeBuffersMapped()
        let ctx = ZMQContext()
        link = CoordinatorLink(endpoint: requestedEndpoint, log: { [weak self] in self?.say($0) })
        // The largest honest frame is a result or the weights inline: θ and α, and a few headers.
        link.maxMessageSize = Envelope.frameLimit(floats: trainer.payload.floats)
        link.curve = curve
        try link.bind(ctx)
        // The run id's one owner is the machine; the link stamps it on what it sends.
        var settings = CoordinatorMachine.Settings(
            runId: "\(trainer.config.seed)-\(getpid())-\(Int(Date().timeIntervalSince1970))",
            datasetFingerprint: trainer.dataset.fingerprint,
            configJSON: trainer.config.json,
            workerTimeout: workerTimeout ?? trainer.config.cluster.silenceS)
        settings.gradientCounts = (trainer.payload.theta, trainer.payload.alpha)
        settings.verifyFraction = verifyFraction
        settings.verifySeed = trainer.config.seed
        machine = CoordinatorMachine(settings: settings, version: trainer.iteration)
        link.setRun(machine.settings.runId)
        publishWeights()
        say(
            "coordinator: run \(machine.settings.runId), \(trainer.config.maml.algorithm.rawValue), \(trainer.iterations) iterations of \(trainer.metaBatchSize) tasks, listening on \(boundEndpoint) (weights on \(try publishEndpoint(for: boundEndpoint)))"
        )
        onBound?(boundEndpoint)
        next = trainer.finished ? .finish : .train(trainer.iteration + 1)
        started = monotonicNow(); startIteration = trainer.iteration
        plainEvery = max(1, trainer.iterations / 20)
        var lastTick = monotonicNow()
        while true {
            if stop.isSet {
                // Checkpoint the last completed iteration, unless its validation is still
                // outstanding (a resume from there would skip it and diverge).
                var validated = true
                if case .eval = next { validated = false }
                if validated && trainer.iteration > 0 && !trainer.checkpointDue(trainer.iteration) {
                    try trainer.writePeriodicCheckpoint()
                }
                say("interrupted at iteration \(trainer.iteration); " + resumeAdvice(verb: "continue"))
                shutdownWorkers("coordinator interrupted")
                return 130
            }
            if !machine.inPhase {
                switch next {
                case .train(let t):
                    // One block for a lone host; with several, at most two per host, big ones first, so
                    // that the phase ends on single chunks (the plan never changes the bits).
                    let hosts = machine.liveWorkers
                    let p = trainer.trainPlan(iteration: t, blocks: hosts > 1 ? 2 * hosts : 1)
                    plan = p
                    trace?.mark(.phase, trainer.iteration)
                    try execute(
                        machine.startPhase(
                            .init(
                                kind: .train, version: trainer.iteration, units: p.units,
                                dispatchOrder: p.dispatchOrder)))
                case .eval:
                    let units = trainer.evalUnits()
                    trace?.mark(.phase, trainer.iteration)
                    try execute(
                        machine.startPhase(
                            .init(
                                kind: .eval, version: trainer.iteration, leaves: units,
                                dispatchOrder: trainer.dispatchOrder(units, split: .val))))
                case .finish:
                    // A finished run is resumable too: its last state is a periodic checkpoint,
                    // so `--resume --set maml.iterations=N` extends it to the bits of an N-iteration run.
                    if trainer.iteration > 0 && !trainer.checkpointDue(trainer.iteration) {
                        try trainer.writePeriodicCheckpoint()
                    }
                    try trainer.writeFinal()
                    say(
                        (trainer.stoppedEarly
                            ? "early stop at iteration \(trainer.iteration): no val HR@10 improvement in \(trainer.config.eval.patience) evaluations; wrote final.h5"
                            : "finished \(trainer.iteration) iterations; wrote final.h5")
                            + (trainer.stoppedEarly ? "" : "; " + resumeAdvice(verb: "train further", extend: true)))
                    shutdownWorkers("training finished")
                    return 0
                }
                continue
            }
            for (peer, incoming) in try link.receive(timeoutMs: 100) {
                switch incoming {
                case .message(let e):
                    trace?.received(e.message)
                    try execute(machine.onMessage(e, from: peer, now: monotonicNow()))
                case .undecodable(let e):
                    try execute(machine.onUndecodable(e, from: peer, now: monotonicNow()))
                }
            }
            for (name, reason, crashed) in endedWorkers?.take() ?? [] where !stop.isSet {
                try execute(machine.onWorkerGone(name: name, reason: reason, crashed: crashed))
                if let line = onWorkerEnded?(name) { say(line) }
                if let why = localWorkersGone?(), machine.liveWorkers == 0 { try stop(failing: why) }
            }
            let now = monotonicNow()
            if now - lastTick >= 1 {
                lastTick = now
                try execute(machine.onTick(now: now))
                if let since = machine.withoutWorkersSince, progress?.isTerminal == true {
                    progress?.update(
                        "iteration \(trainer.iteration)/\(trainer.iterations)  waiting for workers \(formatDuration(now - since))  (\(workerCommand))"
                    )
                }
            }
        }
    }

    func execute(_ directives: [CoordinatorMachine.Directive]) throws {
        for d in directives {
            switch d {
            case .send(let peer, let m):
                link.send(peer, m)
                if case .work(let u) = m { trace?.mark(.send, u.id) }
            case .sendWeights(let peer):
                link.sendWeights(peer)
            case .unitResult: break // the reduce reads every result at the end of the phase
            case .log(let s): say(s)
            case .dropped(let peer, let line):
                say(line)
                link.forget(peer)
            case .waitingForWorkers(let seconds):
                say(
                    "no worker connected" + (seconds >= 1 ? " for \(formatDuration(seconds))" : "")
                        + "; waiting for workers (\(workerCommand))")
            case .phaseComplete(let r): try complete(r)
            case .fail(let reason), .unitFailed(_, let reason): try stop(failing: reason)
            }
        }
    }

    /// Broadcasts the current weights (θ and α, empty unless Meta-SGD, as views of the trainer's buffers).
    func publishWeights() {
        link.setWeights(
            Weights(
                version: trainer.iteration, theta: Floats(viewing: trainer.theta),
                alpha: trainer.alpha.map { Floats(viewing: $0) } ?? []))
        link.publish(live: machine.liveWorkerIDs)
        trace?.mark(.published, trainer.iteration)
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
            let step = Result {
                try withExtendedLifetime(results) {
                    try trainer.applyTrain(results.map(UnitSums.init(viewing:)), plan: plan, iteration: t)
                }
            }
            if case .failure(let e as NonFiniteGradient) = step { try stop(failing: e.description) }
            let (loss, norm) = try step.get()
            machine.onPublished(version: trainer.iteration)
            publishWeights()
            let c1 = monotonicNow()
            coordinatorSeconds.append(c1 - c0)
            // The rate over the last (up to) 20 iterations, so that it follows the run rather than its start.
            let now = monotonicNow()
            recent.append((t, now))
            if recent.count > 21 { recent.removeFirst(recent.count - 21) }
            let first = recent.count > 1 ? recent[0] : (startIteration, started)
            let rate = Double(t - first.0) / max(now - first.1, 1e-9)
            // Compute processes (a host agent's --procs count each) on distinct machines, not connections.
            let hosts = link.hosts(of: machine.liveWorkerIDs)
            pendingLine = [
                ("iteration", .int(t)), ("meta_loss", .number(loss)), ("grad_norm", .number(norm)),
                ("processes", .int(machine.liveProcs)), ("hosts", .int(hosts)), ("iter_per_s", .number(rate)),
                ("time", .number((Date().timeIntervalSince1970 * 1000).rounded() / 1000))
            ]
            let eta = Double(trainer.iterations - t) / max(rate, 1e-9)
            let procs = machine.liveProcs
            let line = String(
                format: "iter %d/%d  %.1f it/s  %@ ETA %@  loss %.4f  HR@10 %@  %d process%@ on %d host%@",
                t, trainer.iterations, rate, formatDuration(now - started), formatDuration(eta), loss,
                lastHR10.map { String(format: "%.4f", $0) } ?? "-", procs, procs == 1 ? "" : "es", hosts,
                hosts == 1 ? "" : "s")
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
            pendingLine += [
                ("val_hr@10", .number(v.hr10)), ("val_ndcg@10", .number(v.ndcg10)), ("val_mrr", .number(v.mrr)),
                ("val_loss", .number(v.loss))
            ]
            say(
                String(
                    format: "iteration %d: val HR@10 %.4f  NDCG@10 %.4f  MRR %.4f  loss %.4f%@", trainer.iteration,
                    v.hr10, v.ndcg10, v.mrr, v.loss, v.improved ? "  (best, saved best.h5)" : ""))
            try finishIteration(trainer.iteration)
        }
    }

    func finishIteration(_ t: Int) throws {
        if verifyFraction > 0 {
            // Spot checks of this iteration's units (and its validation's).
            pendingLine += [
                ("verified", .int(machine.verified - verifiedBefore)),
                ("mismatches", .int(machine.mismatches - mismatchesBefore))
            ]
            (verifiedBefore, mismatchesBefore) = (machine.verified, machine.mismatches)
        }
        try trainer.run.appendMetrics(.object(pendingLine))
        pendingLine = []
        if trainer.checkpointDue(t) { try trainer.writePeriodicCheckpoint() }
        next = trainer.finished ? .finish : .train(t + 1)
    }

    /// The run cannot go on: keeps the last good state (a periodic checkpoint of
    /// the last completed iteration, to resume from once the cause is fixed),
    /// stops the workers and ends with the reason.
    func stop(failing reason: String) throws -> Never {
        trainer.run.log("error: " + reason) // the console gets it as the command's error
        if trainer.iteration > 0 && !trainer.checkpointDue(trainer.iteration) {
            try trainer.writePeriodicCheckpoint()
        }
        say(resumeAdvice(verb: "once the cause is fixed, continue", kept: true))
        shutdownWorkers("the run stopped: \(reason)")
        throw MetatrainError(reason)
    }

    /// "the newest checkpoint is checkpoints/iter-N.h5 (iteration N); VERB with: COMMAND", or
    /// what to do when there is no checkpoint yet.
    func resumeAdvice(verb: String, extend: Bool = false, kept: Bool = false) -> String {
        guard let latest = try? MetaTrainer.latestCheckpoint(in: trainer.run) else {
            return "no checkpoint was written yet, so there is nothing to resume: start the run again with --overwrite"
        }
        let name = "checkpoints/" + URL(fileURLWithPath: latest).lastPathComponent
        let what = kept ? "kept the last good state: \(name)" : "the newest checkpoint is \(name)"
        guard let resumeCommand else { return what }
        return what + "; \(verb) with: "
            + resumeCommand(extend ? 2 * trainer.iterations : nil)
    }

    func shutdownWorkers(_ reason: String) {
        for d in machine.shutdown(reason: reason) { if case .send(let p, let m) = d { link.send(p, m) } }
        link.publishShutdown(reason)
        Thread.sleep(forTimeInterval: 0.3) // let the frames leave before the sockets close
    }
}

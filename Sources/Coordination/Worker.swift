import Wire

/// A worker's protocol logic as a value-type state machine. It introduces
/// itself, keeps the one record of which weights it holds (of which run and
/// version) and whether the shell's unit computer has them installed, fetches
/// weights it missed (late join, dropped broadcast) before computing, and never
/// computes a unit on the wrong version. The shell owns sockets, the dataset
/// and the math, and keeps no weights of its own: a `compute` directive carries
/// the weights to install whenever the computer does not hold them yet.
///
/// Work and broadcasts travel on different connections, so a unit usually
/// arrives a moment before its weights. The worker then waits up to
/// `broadcastGrace` for the broadcast before it fetches: fetching at once
/// would move every 1.5 MB weight vector twice. Weights that arrive before
/// `welcome` (a broadcast can overtake it) are dropped: until the welcome the
/// worker does not know which run and configuration it computes for, and the
/// welcome makes it fetch what it lacks.
public struct WorkerMachine: Sendable {
    public enum Directive: Equatable, Sendable {
        case send(Message)
        /// Build a new unit computer for this resolved configuration (when it
        /// changes). The new computer holds no weights until a `compute` installs some.
        case configure(configJSON: String)
        /// Compute this unit, then call `onComputed`. When `install` is set the
        /// computer does not hold the unit's weights: install them first. At most
        /// `computeSlots` are out at once; the next comes with an `onComputed`.
        case compute(WorkUnit, install: Weights?)
        case exit(code: Int32, reason: String)
        case log(String)
    }

    enum State: Sendable { case joining, joined, stopped }

    /// Weights of one version of one run: within a run a version's weights never change.
    struct Held: Sendable {
        var runId: String
        var weights: Weights
    }

    public let name: String
    public let datasetFingerprint: String
    /// What this worker computes on, told in every hello.
    public var hardware = Hardware.unknown
    /// Compute processes behind this connection, told in every hello (a host agent's `--procs`).
    public var procs = 1
    /// Train and val episodes in this worker's dataset: a unit that names others is refused,
    /// whoever sent it (nil: not checked).
    public var episodeLimits: (train: Int, val: Int)?
    /// Idle time after which the worker sends a heartbeat (the run's `cluster.heartbeat_s`
    /// once welcomed); heartbeats go on while units are computed.
    public var heartbeatInterval: Double = 1
    /// Silence after which a joined worker presumes the coordinator gone and joins again
    /// (`cluster.heartbeat_s` × `cluster.liveness`), saying hello with backoff.
    public var livenessTimeout: Double = 3
    /// Silence after which the worker gives up on the coordinator and exits.
    public var coordinatorTimeout: Double
    /// How long a unit waits for its weights' broadcast before the worker fetches them.
    public var broadcastGrace: Double = 0.25
    /// How long a unit waits for a fetch's reply before the worker fetches again (a reply
    /// can be lost: sent to a connection that was being replaced, or dropped at a full queue).
    public var fetchRetry: Double = 2

    private var state = State.joining
    public private(set) var runId = ""
    /// The weights this worker holds. Replacing them means the computer no longer holds what we hold.
    private var held: Held? { didSet { computerHoldsHeld = false } }
    /// Whether the shell's computer has `held` installed (a `compute` with `install` did it).
    private var computerHoldsHeld = false
    private var pending: [WorkUnit] = [] // units waiting for their weights, in arrival order
    private var fetchAt: Double? // fetch then, unless the broadcast came
    private var fetchedVersion = -1 // the version the last fetch (in this membership) was sent at
    private var fetchedAt = 0.0 // when it was sent
    /// Units taken on and not yet computed (handed to the shell, or waiting for a slot).
    public var computing: Int { computingRuns.count }
    /// Units the shell computes at once: a worker's one compute thread takes 1 (the
    /// rest wait here, in arrival order); a host agent spreads every unit it holds
    /// over its processes (no limit).
    public var computeSlots = Int.max
    /// Units taken on whose `compute` waits for a slot, each with the weights to install
    /// decided when it was taken on (so a unit computes on what it would have at once).
    private var waitingForSlot: [Directive] = []
    /// `compute` directives out with the shell and not yet answered by `onComputed`: every
    /// unit taken on is either there or waiting for a slot.
    private var inSlots: Int { computingRuns.count - waitingForSlot.count }
    private var configJSON: String?
    private var lastSent = 0.0
    private var lastHeard = 0.0
    /// While joining: the wait before the next hello, doubled each time up to `maxHelloInterval`.
    private var helloInterval = 1.0
    public var maxHelloInterval = 8.0
    /// Units handed to the shell, with the run they were given in: a result
    /// computed for a run that has since gone is dropped, not sent to the next.
    private var computingRuns: [(unitId: Int, run: String)] = []

    public init(name: String, datasetFingerprint: String, coordinatorTimeout: Double = 120) {
        self.name = name; self.datasetFingerprint = datasetFingerprint; self.coordinatorTimeout = coordinatorTimeout
    }

    public var isStopped: Bool { state == .stopped }

    /// The version of the weights held for the current run (−1: none).
    public var weightsVersion: Int {
        guard let h = held, h.runId == runId else { return -1 }
        return h.weights.version
    }

    /// When the shell should call `onTick` next at the latest (a pending fetch), if sooner than its usual tick.
    public var wakeAt: Double? { pending.isEmpty ? nil : fetchAt }

    /// The first message. MUST be the first thing sent.
    public mutating func onStart(now: Double) -> [Directive] {
        lastSent = now; lastHeard = now
        return sent(hello, now)
    }

    public mutating func onMessage(_ e: Envelope, now: Double) -> [Directive] {
        guard state != .stopped else { return [] }
        lastHeard = now
        if state == .joined, e.runId != runId {
            if case .shutdown(let reason) = e.message {
                // The coordinator now on our endpoint is stopping: the run we joined is gone too.
                state = .stopped
                return [.exit(code: 0, reason: reason)]
            }
            // Another run on the same endpoint: the coordinator restarted (e.g. --resume).
            // Forget the old run's weights and pending work and join the new one.
            let old = runId
            held = nil
            return rejoin("coordinator now runs '\(e.runId)' (was '\(old)')", now)
        }
        switch e.message {
        case .welcome(let w):
            var out: [Directive] = []
            runId = e.runId
            if held?.runId != runId { held = nil }
            if configJSON != w.configJSON {
                configJSON = w.configJSON
                held = nil
                out.append(.configure(configJSON: w.configJSON))
            }
            state = .joined
            helloInterval = heartbeatInterval
            out.append(.log("joined run \(e.runId) at weights version \(w.version), holding \(weightsVersion)"))
            out += sent(.ready, now)
            // Joined after that version's broadcast: fetch it now.
            if w.version > weightsVersion && w.version > fetchedVersion {
                fetchedVersion = w.version; fetchedAt = now
                out += sent(.fetchWeights, now)
            }
            return out
        case .refuse(let reason, let detail):
            if reason == .unknownWorker {
                // The coordinator answers every message of a worker it does not know with this, so
                // several can be on their way: the first sends us back to joining, the rest only
                // say that our hello has not been answered yet.
                if state == .joining { return [.log("coordinator does not know this worker yet; hello is on its way")] }
                return rejoin("coordinator lost track of this worker", now)
            }
            state = .stopped
            return [.exit(code: 1, reason: "coordinator refused this worker: \(reason.text): \(detail)")]
        case .shutdown(let reason):
            state = .stopped
            return [.exit(code: 0, reason: reason)]
        case .weights(let w):
            guard state == .joined else {
                return [.log("dropped weights version \(w.version) that came before welcome")]
            }
            return onWeights(w, now: now)
        case .work(let u):
            guard state == .joined else { return [.log("dropped work before welcome")] }
            if let problem = check(u) { return [.log("refused unit \(u.id) from the coordinator: \(problem)")] }
            if u.version == weightsVersion { return take(u) }
            if u.version > weightsVersion {
                pending.append(u)
                // A fetch already on its way brings this version (unless its reply is lost: then
                // fetch again); otherwise give the broadcast a moment.
                if fetchAt == nil {
                    fetchAt = fetchedVersion >= u.version ? fetchedAt + fetchRetry : now + broadcastGrace
                }
                return []
            }
            return [.log("unit \(u.id) is for old version \(u.version); skipping")] + sent(.ready, now)
        case .heartbeat:
            return []
        default:
            return [.log("dropped unexpected '\(e.message.typeName)'")]
        }
    }

    /// Weights of the current run, from a broadcast or a fetch reply.
    mutating func onWeights(_ w: Weights, now: Double) -> [Directive] {
        guard w.version > weightsVersion else { return [] }
        held = Held(runId: runId, weights: w)
        var out: [Directive] = []
        let waiting = pending
        pending = waiting.filter { $0.version > w.version }
        if pending.isEmpty { fetchAt = nil }
        var skipped = false, taken = false
        for u in waiting where u.version <= w.version {
            if u.version == w.version {
                out += take(u)
                taken = true
            } else {
                skipped = true
                out.append(.log("unit \(u.id) became stale (version \(u.version) < \(w.version)); skipping"))
            }
        }
        if skipped && !taken && pending.isEmpty {
            out += sent(.ready, now)
        }
        return out
    }

    /// Why a unit cannot be computed on this worker's dataset, if it cannot.
    func check(_ u: WorkUnit) -> String? {
        guard !u.leaves.isEmpty else { return "a unit of no leaves" }
        guard let limits = episodeLimits else { return nil }
        let n = u.kind == .train ? limits.train : limits.val
        if let bad = u.leaves.lazy.flatMap({ $0 }).first(where: { $0 < 0 || $0 >= n }) {
            return "episode \(bad) is not one of the dataset's \(n) \(u.kind == .train ? "train" : "val") episodes"
        }
        return nil
    }

    /// Takes on `u`: its `compute` now if a slot is free, else when one frees.
    private mutating func take(_ u: WorkUnit) -> [Directive] {
        waitingForSlot.append(compute(u))
        return release()
    }

    /// The waiting `compute`s that free slots take, in arrival order.
    private mutating func release() -> [Directive] {
        var out: [Directive] = []
        while inSlots < computeSlots, !waitingForSlot.isEmpty {
            out.append(waitingForSlot.removeFirst())
        }
        return out
    }

    /// The directive that computes `u` on the held weights (which MUST be of its version),
    /// installing them first if the computer does not hold them.
    private mutating func compute(_ u: WorkUnit) -> Directive {
        precondition(
            held != nil && weightsVersion == u.version,
            "unit \(u.id) for version \(u.version) computed holding \(weightsVersion)")
        computingRuns.append((u.id, runId))
        let install = computerHoldsHeld ? nil : held!.weights
        computerHoldsHeld = true
        return .compute(u, install: install)
    }

    /// The link heard the coordinator of `runId` speak without a message it can hand on (a
    /// broadcast it cannot read): as a heartbeat of that run.
    public mutating func onHeard(runId: String, now: Double) -> [Directive] {
        onMessage(Envelope(runId: runId, message: .heartbeat), now: now)
    }

    /// The link cannot go on with what the coordinator agreed to when it
    /// welcomed us (e.g. it cannot read the coordinator's shared memory): say
    /// hello again, so that the coordinator admits us on the new terms.
    public mutating func onRejoinNeeded(_ reason: String, now: Double) -> [Directive] {
        guard state != .stopped else { return [] }
        return rejoin(reason, now)
    }

    /// The worker is going (an error, an interrupt, its parent gone): it says
    /// goodbye with the reason, so that the coordinator re-queues its units at
    /// once instead of waiting for the worker timeout. Nothing follows.
    public mutating func onLeaving(_ reason: String, now: Double) -> [Directive] {
        guard state != .stopped else { return [] }
        state = .stopped
        pending = []; fetchAt = nil
        return sent(.goodbye(reason: reason), now)
    }

    /// The shell finished a unit; `result` is its trainResult or evalResult.
    public mutating func onComputed(_ result: Message, now: Double) -> [Directive] {
        var unitId: Int?
        switch result {
        case .trainResult(let r): unitId = r.unitId;
        case .evalResult(let r): unitId = r.unitId;
        default: break
        }
        var run = runId
        if let i = computingRuns.firstIndex(where: { $0.unitId == unitId }) ?? computingRuns.indices.first {
            run = computingRuns.remove(at: i).run
        }
        // The next waiting unit goes out after this result: whatever happened meanwhile (a
        // rejoin, another run), a unit taken on is computed, and its result judged, as before.
        guard state == .joined else { return state == .stopped ? [] : release() }
        guard run == runId else {
            return [.log("dropped the result of unit \(unitId ?? -1) of run \(run): the coordinator now runs \(runId)")]
                + release()
        }
        return sent(result, now) + release()
    }

    /// A host agent gives up a unit that crashed its processes twice, and with it
    /// every other unit it holds (it starts its processes' work afresh): the
    /// coordinator hears which unit failed, then `ready`, which re-queues the rest.
    /// The next unit comes with its weights to install.
    public mutating func onGaveUp(unitId: Int, reason: String, now: Double) -> [Directive] {
        let run = computingRuns.first { $0.unitId == unitId }?.run
        computingRuns = []
        waitingForSlot = []
        computerHoldsHeld = false
        guard state == .joined, run == nil || run == runId else { return [] }
        return sent(.unitFailed(unitId: unitId, reason: reason), now) + sent(.ready, now)
    }

    public mutating func onUndecodable(_ error: WireError) -> [Directive] {
        if case .protocolMismatch(let v) = error {
            state = .stopped
            return [
                .exit(
                    code: 1,
                    reason: "coordinator speaks protocol version \(v), this worker speaks \(Envelope.protocolVersion)")
            ]
        }
        return [.log("dropped malformed message: \(error)")]
    }

    public mutating func onTick(now: Double) -> [Directive] {
        guard state != .stopped else { return [] }
        if let u = pending.last, let t = fetchAt, now >= t {
            // The broadcast did not come (dropped, or sent before we subscribed), or a fetch's
            // reply did not: ask for the weights, and again after `fetchRetry` until they come.
            let again = fetchedVersion >= u.version
            fetchAt = now + fetchRetry
            fetchedVersion = u.version; fetchedAt = now
            return [
                .log(
                    "unit \(u.id) needs weights version \(u.version), holding \(weightsVersion); "
                        + (again ? "no reply to the last fetch, fetching again" : "no broadcast came, fetching"))
            ]
                + sent(.fetchWeights, now)
        }
        if now - lastHeard > coordinatorTimeout {
            let reason = "no word from the coordinator for \(Int(now - lastHeard))s"
            // Said in case the coordinator was only frozen: it then re-queues our units at once.
            return onLeaving(reason, now: now) + [.exit(code: 1, reason: reason)]
        }
        if state == .joined && now - lastHeard > livenessTimeout {
            // Missed `liveness` heartbeats: the coordinator died, froze or was restarted. Join again
            // (a coordinator restarted with --resume welcomes us back), saying hello with backoff.
            helloInterval = heartbeatInterval
            return rejoin(
                "no word from the coordinator for \(Int((now - lastHeard) * 10) / 10).\(Int((now - lastHeard) * 10) % 10)s",
                now)
        }
        if state == .joined && now - lastSent > heartbeatInterval {
            return sent(.heartbeat, now)
        }
        if state == .joining && now - lastSent > helloInterval {
            helloInterval = min(maxHelloInterval, 2 * helloInterval)
            return sent(hello, now)
        }
        return []
    }

    private var hello: Message {
        .hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint, hardware: hardware, procs: procs))
    }

    /// Back to joining (the same run or a new one): units waiting for weights are
    /// forgotten (the coordinator re-queues them) and so is any fetch on its way.
    /// Held weights stay: they are tagged with their run, and a welcome to
    /// another run or configuration drops them.
    private mutating func rejoin(_ why: String, _ now: Double) -> [Directive] {
        state = .joining
        pending = []; fetchAt = nil
        fetchedVersion = -1
        return [.log(why + "; joining again")] + sent(hello, now)
    }

    private mutating func sent(_ m: Message, _ now: Double) -> [Directive] {
        lastSent = now
        return [.send(m)]
    }
}

import Wire

/// A worker's protocol logic as a value-type state machine. It introduces
/// itself, keeps track of which weights version it holds, fetches weights it
/// missed (late join, dropped broadcast) before computing, and never computes
/// a unit on the wrong version. The shell owns sockets, the dataset and the math.
///
/// Work and broadcasts travel on different connections, so a unit usually
/// arrives a moment before its weights. The worker then waits up to
/// `broadcastGrace` for the broadcast before it fetches: fetching at once
/// would move every 1.5 MB weight vector twice.
public struct WorkerMachine: Sendable {
    public enum Directive: Equatable, Sendable {
        case send(Message)
        /// Adopt the coordinator's resolved configuration (when it changes); drop any installed weights.
        case configure(configJSON: String)
        case installWeights(Weights)
        /// Compute this unit on the installed weights, then call `onComputed`.
        case compute(WorkUnit)
        case exit(code: Int32, reason: String)
        case log(String)
    }

    enum State: Sendable { case joining, joined, stopped }

    public let name: String
    public let datasetFingerprint: String
    /// Idle time after which the worker sends a heartbeat.
    public var heartbeatInterval: Double = 2
    /// Silence after which the coordinator is presumed gone.
    public var coordinatorTimeout: Double
    /// How long a unit waits for its weights' broadcast before the worker fetches them.
    public var broadcastGrace: Double = 0.25

    private var state = State.joining
    public private(set) var runId = ""
    public private(set) var weightsVersion = -1
    private var pending: [WorkUnit] = []    // units waiting for their weights, in arrival order
    private var fetchAt: Double?            // fetch then, unless the broadcast came
    private var fetchedVersion = -1         // the version the last fetch was sent at
    private var computing = false
    private var configJSON: String?
    private var lastSent = 0.0
    private var lastHeard = 0.0

    public init(name: String, datasetFingerprint: String, coordinatorTimeout: Double = 120) {
        self.name = name; self.datasetFingerprint = datasetFingerprint; self.coordinatorTimeout = coordinatorTimeout
    }

    public var isStopped: Bool { state == .stopped }

    /// When the shell should call `onTick` next at the latest (a pending fetch), if sooner than its usual tick.
    public var wakeAt: Double? { pending.isEmpty ? nil : fetchAt }

    /// The first message. MUST be the first thing sent.
    public mutating func onStart(now: Double) -> [Directive] {
        lastSent = now; lastHeard = now
        return [.send(.hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint)))]
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
            state = .joining
            pending = []; fetchAt = nil
            weightsVersion = -1; fetchedVersion = -1
            return [.log("coordinator now runs '\(e.runId)' (was '\(runId)'); joining again")]
                + sent(.hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint)), now)
        }
        switch e.message {
        case .welcome(let w):
            var out: [Directive] = []
            if configJSON != w.configJSON { configJSON = w.configJSON; out.append(.configure(configJSON: w.configJSON)) }
            state = .joined
            runId = e.runId
            out.append(.log("joined run \(e.runId) at weights version \(w.version)"))
            out += sent(.ready, now)
            // Joined after that version's broadcast: fetch it now.
            if w.version > weightsVersion && w.version > fetchedVersion {
                fetchedVersion = w.version
                out += sent(.fetchWeights, now)
            }
            return out
        case .refuse(let reason):
            if state == .joined, reason.hasPrefix("unknown worker") {
                state = .joining
                pending = []; fetchAt = nil
                return [.log("coordinator lost track of this worker; joining again")]
                    + sent(.hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint)), now)
            }
            state = .stopped
            return [.exit(code: 1, reason: "coordinator refused this worker: \(reason)")]
        case .shutdown(let reason):
            state = .stopped
            return [.exit(code: 0, reason: reason)]
        case .weights(let w):
            return onWeights(w, now: now)
        case .work(let u):
            guard state == .joined else { return [.log("dropped work before welcome")] }
            if u.version == weightsVersion {
                computing = true
                return [.compute(u)]
            }
            if u.version > weightsVersion {
                pending.append(u)
                // A fetch already on its way brings this version; otherwise give the broadcast a moment.
                if fetchAt == nil && fetchedVersion < u.version { fetchAt = now + broadcastGrace }
                return []
            }
            return [.log("unit \(u.id) is for old version \(u.version); skipping")] + sent(.ready, now)
        case .heartbeat:
            return []
        default:
            return [.log("dropped unexpected '\(e.message.typeName)'")]
        }
    }

    mutating func onWeights(_ w: Weights, now: Double) -> [Directive] {
        guard w.version > weightsVersion else { return [] }
        weightsVersion = w.version
        var out: [Directive] = [.installWeights(w)]
        let waiting = pending
        pending = waiting.filter { $0.version > w.version }
        if pending.isEmpty { fetchAt = nil }
        var skipped = false
        for u in waiting where u.version <= w.version {
            if u.version == w.version {
                computing = true
                out.append(.compute(u))
            } else {
                skipped = true
                out.append(.log("unit \(u.id) became stale (version \(u.version) < \(w.version)); skipping"))
            }
        }
        if skipped && !out.contains(where: { if case .compute = $0 { return true }; return false }) && pending.isEmpty {
            out += sent(.ready, now)
        }
        return out
    }

    /// The shell cannot go on with what the coordinator agreed to when it
    /// welcomed us (e.g. it cannot read the coordinator's shared memory): say
    /// hello again, so that the coordinator admits us on the new terms.
    public mutating func onRejoinNeeded(_ reason: String, now: Double) -> [Directive] {
        guard state != .stopped else { return [] }
        state = .joining
        pending = []; fetchAt = nil
        return [.log(reason + "; joining again")]
            + sent(.hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint)), now)
    }

    /// The shell finished a unit; `result` is its trainResult or evalResult.
    public mutating func onComputed(_ result: Message, now: Double) -> [Directive] {
        computing = false
        guard state == .joined else { return [] }
        return sent(result, now)
    }

    public mutating func onUndecodable(_ error: WireError) -> [Directive] {
        if case .protocolMismatch(let v) = error {
            state = .stopped
            return [.exit(code: 1, reason: "coordinator speaks protocol version \(v), this worker speaks \(Envelope.protocolVersion)")]
        }
        return [.log("dropped malformed message: \(error)")]
    }

    public mutating func onTick(now: Double) -> [Directive] {
        guard state != .stopped, !computing else { return [] }
        if let u = pending.last, let t = fetchAt, now >= t {
            // The broadcast did not come (dropped, or sent before we subscribed): ask for the weights.
            fetchAt = nil
            fetchedVersion = u.version
            return [.log("unit \(u.id) needs weights version \(u.version), holding \(weightsVersion); no broadcast came, fetching")]
                + sent(.fetchWeights, now)
        }
        if now - lastHeard > coordinatorTimeout {
            state = .stopped
            return [.exit(code: 1, reason: "no word from the coordinator for \(Int(now - lastHeard))s")]
        }
        if now - lastSent > heartbeatInterval {
            return sent(state == .joined ? .heartbeat : .hello(Hello(workerName: name, datasetFingerprint: datasetFingerprint)), now)
        }
        return []
    }

    private mutating func sent(_ m: Message, _ now: Double) -> [Directive] {
        lastSent = now
        return [.send(m)]
    }
}

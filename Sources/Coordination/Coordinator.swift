import Wire

/// The coordinator's protocol logic as a value-type state machine: it keeps
/// the worker registry, hands out the current phase's units by readiness,
/// checks versions and collects results. It never touches sockets, clocks or
/// files: each `on…` method takes the time as an argument and returns
/// directives for the shell to carry out. The math (reduce, Adam, eval) is
/// the shell's, between phases.
public struct CoordinatorMachine: Sendable {
    public struct Settings: Sendable {
        public var runId: String
        public var datasetFingerprint: String
        public var configJSON: String
        /// A worker silent for longer than this is dropped and its units re-queued.
        public var workerTimeout: Double
        /// Units a worker may hold at once: one it computes, the rest wait in its
        /// socket, so it starts the next unit without a round trip to us. Extra
        /// units go out only while more units are pending than workers are live,
        /// so the end of a phase is still handed to whoever is idle.
        public var unitsPerWorker: Int
        /// While no worker is connected, the coordinator says so once, then at most this often.
        public var waitingNoticeInterval: Double
        /// Floats a train result's Σ∇θ and Σ∇α must hold (nil: not checked).
        public var gradientCounts: (theta: Int, alpha: Int)?
        /// Bad results (wrong unit, counts or sizes, non-finite values) after which a worker is dropped.
        public var badResultsAllowed = 3
        /// A second fetch of the same weights version sooner than this (seconds) is a bad
        /// message; a worker whose reply was lost asks again after 2 s.
        public var fetchRetryMinimum = 1.5
        /// Whether non-finite values make a result bad (a host agent leaves that to the coordinator).
        public var checkFinite = true
        /// A unit held longer than this many times its expected time (measured
        /// seconds per task so far × its tasks), and at least `minUnitDeadline`,
        /// goes out again: a worker that heartbeats but never finishes loses it.
        public var deadlineFactor = 10.0
        public var minUnitDeadline = 5.0
        /// The deadline before any unit time was measured.
        public var firstUnitDeadline = 120.0
        /// Spot checks (`--verify F`): this fraction of units, chosen by a generator seeded by
        /// (`verifySeed`, version, unit index), is computed a second time by another worker and
        /// the two results compared bit for bit. 0: none.
        public var verifyFraction = 0.0
        public var verifySeed: UInt64 = 0
        public init(
            runId: String, datasetFingerprint: String, configJSON: String, workerTimeout: Double = 60,
            unitsPerWorker: Int = 2, waitingNoticeInterval: Double = 30
        ) {
            self.runId = runId; self.datasetFingerprint = datasetFingerprint; self.configJSON = configJSON
            self.workerTimeout = workerTimeout; self.unitsPerWorker = max(1, unitsPerWorker)
            self.waitingNoticeInterval = waitingNoticeInterval
        }
    }

    public enum Directive: Equatable, Sendable {
        /// Send a message to one worker.
        case send(PeerID, Message)
        /// Send the current weights to one worker (the shell owns them).
        case sendWeights(PeerID)
        /// A unit's result was accepted (the first for its unit, on the phase's version).
        case unitResult(index: Int, UnitResult)
        /// Every unit of the phase has a result; results are in unit order.
        case phaseComplete(PhaseResults)
        case log(String)
        /// `peer` is no longer a worker of this run (it left, went silent, misbehaved): say
        /// `line`, and let go of what is kept for it (its link's mapping of its files, its address).
        case dropped(PeerID, line: String)
        /// The run cannot go on (a unit gives non-finite results wherever it is computed):
        /// keep the last good state and stop with this error.
        case fail(String)
        /// Unit `index` of the phase crashed the processes that computed it twice (or failed on two
        /// workers, or on every live one): the coordinator stops the run with this error; a host
        /// agent gives the unit back to its coordinator instead.
        case unitFailed(index: Int, reason: String)
        /// No worker is connected, and has not been for `seconds`: tell the user how to start one.
        /// Given once when the last worker goes (or at the start), then at most every `waitingNoticeInterval`.
        case waitingForWorkers(seconds: Double)
    }

    /// A phase: one meta-iteration's train units or one validation's eval units.
    public struct Phase: Equatable, Sendable {
        public var kind: UnitKind
        public var version: Int
        /// Leaves (episode indices of each) of each unit, in unit order.
        public var units: [[[Int]]]
        /// Order in which units are handed out (default: unit order). Dispatching
        /// the costliest first shortens the idle tail; results are still combined
        /// in unit order, so this never changes the bits.
        public var dispatchOrder: [Int]?
        public init(kind: UnitKind, version: Int, units: [[[Int]]], dispatchOrder: [Int]? = nil) {
            self.kind = kind; self.version = version; self.units = units; self.dispatchOrder = dispatchOrder
        }
        /// A phase whose units have one leaf each.
        public init(kind: UnitKind, version: Int, leaves: [[Int]], dispatchOrder: [Int]? = nil) {
            self.init(kind: kind, version: version, units: leaves.map { [$0] }, dispatchOrder: dispatchOrder)
        }
    }

    public enum UnitResult: Equatable, Sendable { case train(TrainResult), eval(EvalResult) }

    public struct PhaseResults: Equatable, Sendable {
        public var phase: Phase
        public var results: [UnitResult]
    }

    struct Worker: Sendable {
        var name: String
        var lastSeen: Double
        /// Compute processes behind the connection (a host agent's `--procs`).
        var procs = 1
        var ready = false
        var units: [Int] = [] // unit ids in flight, in the order sent
        /// Bad results and bad messages so far (strikes: `badResultsAllowed` drop the worker).
        var bad = 0
        /// Results accepted from this connection: its share of units grows with them, not with
        /// the processes it claims (`share`).
        var proven = 0
        /// Units (ids) it held past their deadline; two drop it.
        var late: Set<Int> = []
        /// It gave a unit back (`unitFailed`): the `ready` that follows may find it holding others.
        var gaveBack = false
        /// The weights version last sent to it in reply to a fetch, and when.
        var fetched: (version: Int, at: Double)?
    }

    public let settings: Settings
    /// The published weights version.
    public private(set) var version: Int
    private(set) var workers: [PeerID: Worker] = [:]
    private var joinOrder: [PeerID] = []
    private var phase: Phase?
    private var firstUnitId = 0
    private var nextUnitId = 0
    private var pending: [Int] = [] // unit indices waiting for a worker
    private var results: [Int: UnitResult] = [:]
    /// Who was given each unit of the phase (by index); only they may hand in its result.
    private var assigned: [Int: Set<PeerID>] = [:]
    /// Workers whose result for a unit (by index) held non-finite values.
    private var nonFinite: [Int: [String]] = [:]
    /// Per unit index: the processes that crashed computing it (what `onWorkerGone` was told).
    private var crashes: [Int: [String]] = [:]
    /// Per unit index: the workers that gave it back as failed (`unitFailed`); it never goes to them again.
    private var failedOn: [Int: Set<PeerID>] = [:]
    /// Per unit index chosen for a spot check: the results so far, with who sent them. The unit
    /// goes out again, to a worker not in the list while there is one, until two results agree.
    private var checking: [Int: [(peer: PeerID, name: String, result: UnitResult)]] = [:]
    /// Spot checks so far: units whose results were compared, and how many of them differed.
    public private(set) var verified = 0, mismatches = 0
    /// The latest time seen by an `on…` call (dispatches in between use it).
    private var clock = 0.0
    /// When each unit in flight was last sent, and the units already sent again for lateness.
    private var sentAt: [Int: Double] = [:]
    /// Per unit index: peers it must not go back to while another peer is live (they held it
    /// past its deadline, or said `ready` while holding it).
    private var avoid: [Int: Set<PeerID>] = [:]
    /// Peers that held a unit past its deadline and have not returned a result since (kept across
    /// a rejoin): once nothing else is pending, their units are copied to idle peers at once.
    private var suspects: Set<PeerID> = []
    /// Measured seconds per task (moving average over accepted results, from send to result).
    public private(set) var taskSeconds: Double?
    /// Since when no worker has been connected (seen by `onTick`), and when we last said so.
    public private(set) var withoutWorkersSince: Double?
    private var lastWaitingNotice: Double?
    /// Lines about a peer's noise (unknown, malformed, foreign), rate-limited per peer and kind.
    private var noise = NoiseLimiter()
    /// The first worker's hardware, and whether a worker on other hardware was warned about.
    private var firstHardware: (name: String, hardware: Hardware)?
    private var warnedHardware = false

    public init(settings: Settings, version: Int) {
        self.settings = settings
        self.version = version
    }

    /// Live connections: plain workers and host agents.
    public var liveWorkers: Int { workers.count }
    /// The live connections, in join order.
    public var liveWorkerIDs: [PeerID] { joinOrder.filter { workers[$0] != nil } }
    /// Compute processes behind the live connections.
    public var liveProcs: Int { workers.values.reduce(0) { $0 + $1.procs } }
    /// Whether `peer` is a live worker.
    public func knows(_ peer: PeerID) -> Bool { workers[peer] != nil }
    public var inPhase: Bool { phase != nil }
    /// Units in the running phase (0 between phases).
    public var phaseUnits: Int { phase?.units.count ?? 0 }

    // MARK: inputs

    /// A decoded message from a worker.
    public mutating func onMessage(_ e: Envelope, from peer: PeerID, now: Double) -> [Directive] {
        clock = max(clock, now)
        if case .hello(let h) = e.message { return onHello(h, from: peer, now: now) }
        if case .goodbye(let reason) = e.message, workers[peer] == nil {
            // Already dropped: nothing to re-queue.
            return noisy(peer, "goodbye", now, [.log("goodbye from unknown peer \(peer): \(bounded(reason))")])
        }
        guard var w = workers[peer] else {
            // Unknown peer (e.g. dropped after a timeout): ask it to introduce itself again, every
            // time (a dropped worker must learn it, however often it was dropped); the log is rate-limited.
            return noisy(
                peer, "unknown", now,
                [.log("message '\(e.message.typeName)' from unknown peer \(peer); asking it to re-join")])
                + [.send(peer, .refuse(.unknownWorker, detail: "send hello first"))]
        }
        if case .goodbye(let reason) = e.message, e.runId.isEmpty {
            // Going before it read our welcome (it knows no run id yet): it goes all the same.
            return [remove(peer, because: "left (\(bounded(reason)))")] + dispatch()
        }
        guard e.runId == settings.runId else {
            return noisy(
                peer, "run", now,
                [
                    .log(
                        "dropped '\(e.message.typeName)' from \(w.name): run id '\(bounded(e.runId))' is not this run's '\(settings.runId)'"
                    )
                ])
        }
        w.lastSeen = now
        workers[peer] = w
        switch e.message {
        case .ready:
            // A worker says ready when it holds nothing: anything we thought it had is lost. Saying so
            // while holding units of the phase (other than right after giving one back) is a bad
            // message, and those units do not go straight back to it.
            let held = inPhaseUnits(of: peer)
            var out: [Directive] = []
            if !held.isEmpty && !workers[peer]!.gaveBack {
                for id in held { avoid[id - firstUnitId, default: []].insert(peer) }
                out = bad(
                    peer, "said ready while holding unit(s) \(held.map(String.init).joined(separator: ","))", now: now)
            }
            if workers[peer] != nil {
                for u in workers[peer]!.units.reversed() { requeue(u) }
                workers[peer]!.units = []
                workers[peer]!.ready = true
                workers[peer]!.gaveBack = false
            }
            return out + dispatch()
        case .heartbeat:
            return [.send(peer, .heartbeat)]
        case .fetchWeights:
            // One reply per version; another only after a real loss (the worker asks again after 2 s).
            if let f = w.fetched, f.version == version, now - f.at < settings.fetchRetryMinimum {
                return bad(
                    peer, "asked for weights version \(version) again after \(((now - f.at) * 10).rounded() / 10)s",
                    now: now)
                    + dispatch()
            }
            workers[peer]!.fetched = (version, now)
            return [.sendWeights(peer)]
        case .trainResult(let r):
            return onResult(.train(r), unitId: r.unitId, version: r.version, from: peer)
        case .evalResult(let r):
            return onResult(.eval(r), unitId: r.unitId, version: r.version, from: peer)
        case .goodbye(let reason):
            return [remove(peer, because: "left (\(bounded(reason)))")] + dispatch()
        case .unitFailed(let unitId, let reason):
            return onUnitFailed(unitId, reason: reason, from: peer)
        default:
            return bad(peer, "sent '\(e.message.typeName)', which workers do not send", now: now) + dispatch()
        }
    }

    /// How many units `peer` holds now (any phase's).
    public func inFlightUnits(of peer: PeerID) -> Int { workers[peer]?.units.count ?? 0 }

    /// The units of the running phase that `peer` holds (ids).
    func inPhaseUnits(of peer: PeerID) -> [Int] {
        guard let p = phase, let w = workers[peer] else { return [] }
        return w.units.filter { $0 >= firstUnitId && $0 < firstUnitId + p.units.count }
    }

    /// `directives` if this peer has not said this kind of thing too often lately
    /// (5 a minute), with a count of what was held back since; nothing otherwise.
    mutating func noisy(_ peer: PeerID, _ kind: String, _ now: Double, _ directives: [Directive]) -> [Directive] {
        guard let held = noise.allow(peer, kind, now: now) else { return [] }
        guard held > 0 else { return directives }
        return directives + [.log("(\(held) more like that from peer \(peer) were not logged)")]
    }

    /// A frame that did not decode: logged and dropped; a peer speaking another
    /// protocol version is told so and never admitted.
    public mutating func onUndecodable(_ error: WireError, from peer: PeerID, now: Double = 0) -> [Directive] {
        let who = workers[peer]?.name ?? "peer \(peer)"
        if case .protocolMismatch(let v) = error {
            return noisy(
                peer, "protocol", now,
                [
                    .log(
                        "refused \(who): it speaks protocol version \(v), this coordinator speaks \(Envelope.protocolVersion)"
                    ),
                    .send(
                        peer,
                        .refuse(
                            .protocolVersion,
                            detail: "worker speaks \(v), coordinator speaks \(Envelope.protocolVersion)"))
                ])
        }
        // An honest worker never sends what does not decode: from a joined one it is a bad message.
        if workers[peer] != nil { return bad(peer, "a malformed message: \(error)", now: now) + dispatch() }
        return noisy(peer, "malformed", now, [.log("dropped malformed message from \(who): \(error)")])
    }

    /// Periodic check: drops workers silent for longer than the timeout and re-queues their units.
    public mutating func onTick(now: Double) -> [Directive] {
        clock = max(clock, now)
        var out: [Directive] = []
        noise.forget(before: now)
        out += overdueUnits(now: now)
        if !checking.isEmpty { out += undecided() }
        for peer in joinOrder {
            guard let w = workers[peer], now - w.lastSeen > settings.workerTimeout else { continue }
            // A worker says nothing while it computes a unit: name the way out if units run that long.
            out.append(
                remove(
                    peer, because: "silent for \(Int(now - w.lastSeen))s",
                    hint: " (if a unit takes longer than \(Int(settings.workerTimeout))s, raise --worker-timeout)"))
        }
        if workers.isEmpty {
            let since = withoutWorkersSince ?? now
            withoutWorkersSince = since
            if lastWaitingNotice.map({ now - $0 >= settings.waitingNoticeInterval }) ?? true {
                lastWaitingNotice = now
                out.append(.waitingForWorkers(seconds: now - since))
            }
        } else {
            withoutWorkersSince = nil; lastWaitingNotice = nil
        }
        return out + dispatch()
    }

    /// A worker process is known to have ended (e.g. `train` saw its local child
    /// exit): it is dropped at once and its units are re-queued, without waiting
    /// for the timeout.
    ///
    /// A process that `crashed` (died of a fault, not killed) is taken to have
    /// crashed on the unit it was computing, the first it holds: a unit on which
    /// two processes crashed stops the run (`unitFailed`) instead of crashing
    /// every process that takes it, for ever.
    public mutating func onWorkerGone(name: String, reason: String, crashed: Bool = false) -> [Directive] {
        var out: [Directive] = []
        for peer in joinOrder where workers[peer]?.name == name {
            if crashed, let p = phase, let id = workers[peer]!.units.first, id - firstUnitId >= 0,
                id - firstUnitId < p.units.count
            {
                let index = id - firstUnitId
                crashes[index, default: []].append("\(name) \(bounded(reason))")
                if crashes[index]!.count >= 2 {
                    out.append(
                        .unitFailed(
                            index: index,
                            reason: "unit \(id) of version \(p.version) (\(episodeList(p.units[index]))) "
                                + "crashed the processes that computed it: " + crashes[index]!.joined(separator: "; ")))
                }
            }
            out.append(remove(peer, because: reason))
        }
        return out + dispatch()
    }

    /// A unit's episodes for an error message (the first 16).
    func episodeList(_ leaves: [[Int]]) -> String {
        let episodes = leaves.flatMap { $0 }
        return "episodes " + episodes.prefix(16).map(String.init).joined(separator: ",")
            + (episodes.count > 16 ? ",…" : "")
    }

    /// Removes a live worker and re-queues its units (the caller dispatches them
    /// once every worker it drops is gone); returns the directive that says so.
    /// `hint` follows the count of re-queued units, when there are any.
    mutating func remove(_ peer: PeerID, because reason: String, hint: String = "") -> Directive {
        let w = workers[peer]!
        for u in w.units.reversed() { requeue(u) }
        workers[peer] = nil
        joinOrder.removeAll { $0 == peer }
        return .dropped(
            peer,
            line: "worker \(w.name) \(reason); dropped"
                + (w.units.isEmpty ? "" : ", its \(w.units.count) unit(s) re-queued" + hint))
    }

    /// Starts a phase on weights `phase.version` (which MUST be published).
    public mutating func startPhase(_ p: Phase) -> [Directive] {
        precondition(phase == nil, "a phase is already running")
        precondition(p.version == version, "phase version \(p.version) is not the published \(version)")
        phase = p
        firstUnitId = nextUnitId
        nextUnitId += p.units.count
        pending = p.dispatchOrder ?? Array(0..<p.units.count)
        precondition(pending.sorted() == Array(0..<p.units.count), "dispatch order must be a permutation of the units")
        results = [:]; assigned = [:]; nonFinite = [:]; crashes = [:]; failedOn = [:]; checking = [:]; avoid = [:]
        if p.units.isEmpty { return complete() }
        return dispatch()
    }

    /// Adds units to the running phase (a host agent's next block of the same
    /// version); they take the indices after the phase's current units and are
    /// handed out after every pending one, in `dispatchOrder` (relative to them).
    public mutating func addUnits(_ units: [[[Int]]], dispatchOrder: [Int]? = nil) -> [Directive] {
        precondition(phase != nil, "no phase to add units to")
        let base = phase!.units.count
        precondition(nextUnitId == firstUnitId + base, "unit ids were taken after this phase")
        phase!.units += units
        nextUnitId += units.count
        pending += (dispatchOrder ?? Array(units.indices)).map { base + $0 }
        return dispatch()
    }

    /// The shell published new weights.
    public mutating func onPublished(version v: Int) {
        precondition(phase == nil, "weights change only between phases")
        version = v
    }

    /// Tells every known worker the run is over.
    public func shutdown(reason: String) -> [Directive] {
        joinOrder.compactMap { workers[$0] != nil ? .send($0, .shutdown(reason: reason)) : nil }
    }

    // MARK: internals

    mutating func onHello(_ h: Hello, from peer: PeerID, now: Double) -> [Directive] {
        guard h.datasetFingerprint == settings.datasetFingerprint else {
            return noisy(
                peer, "fingerprint", now,
                [
                    .log(
                        "refused worker \(bounded(h.workerName)): its dataset fingerprint \(h.datasetFingerprint.prefix(12))… is not the coordinator's \(settings.datasetFingerprint.prefix(12))…"
                    ),
                    .send(
                        peer,
                        .refuse(
                            .datasetFingerprint,
                            detail:
                                "worker has \(h.datasetFingerprint.prefix(12))…, coordinator has \(settings.datasetFingerprint.prefix(12))…"
                        ))
                ])
        }
        if let old = workers[peer] { for u in old.units.reversed() { requeue(u) } } // re-joined: its old units are lost
        if workers[peer] == nil { joinOrder.append(peer) }
        workers[peer] = Worker(name: h.workerName, lastSeen: now, procs: max(1, h.procs))
        let what = h.procs > 1 ? "host agent \(h.workerName) of \(h.procs) processes" : "worker \(h.workerName)"
        var out: [Directive] = [.log("\(what) joined (\(workers.count) live; \(bounded(h.hardware.description)))")]
        if let first = firstHardware {
            if first.hardware != h.hardware && !warnedHardware {
                warnedHardware = true
                out.append(
                    .log(
                        "warning: worker \(h.workerName) runs \(bounded(h.hardware.description)), worker \(first.name) runs "
                            + "\(bounded(first.hardware.description)): results are bit-identical across hosts only where every "
                            + "worker runs the same kernels; set OPENBLAS_CORETYPE to one family on every host to pin them"
                    ))
            }
        } else {
            firstHardware = (h.workerName, h.hardware)
        }
        return out + [.send(peer, .welcome(Welcome(configJSON: settings.configJSON, version: version)))]
    }

    /// A result counts only if it comes from a worker the unit was given to, is
    /// of the phase's version and kind, has the unit's task and episode counts
    /// and the model's sizes, and every value in it is finite. Anything else is
    /// dropped and counted against the worker (its unit goes out again), and a
    /// worker with `badResultsAllowed` bad results is dropped. A unit whose
    /// results are non-finite on two workers (or twice on the only one) stops
    /// the run: that is the model diverging, not a worker.
    mutating func onResult(_ r: UnitResult, unitId: Int, version v: Int, from peer: PeerID) -> [Directive] {
        var out: [Directive] = []
        let name = workers[peer]!.name
        guard unitId >= 0, unitId < nextUnitId else {
            return bad(peer, "a result for unit \(unitId), which was never issued", now: clock) + dispatch()
        }
        guard let p = phase, unitId >= firstUnitId, unitId < firstUnitId + p.units.count else {
            guard workers[peer]!.units.contains(unitId) else {
                // Issued in an earlier phase, and not to this connection (or not since it joined again).
                return noisy(peer, "stale", clock, [.log("discarded stale result for unit \(unitId) from \(name)")])
                    + dispatch()
            }
            workers[peer]!.units.removeAll { $0 == unitId }
            workers[peer]!.ready = true
            return noisy(peer, "stale", clock, [.log("discarded stale result for unit \(unitId) from \(name)")])
                + dispatch()
        }
        let index = unitId - firstUnitId
        guard assigned[index]?.contains(peer) == true else {
            return bad(peer, "a result for unit \(unitId), which it was not given") + dispatch()
        }
        workers[peer]!.units.removeAll { $0 == unitId }
        workers[peer]!.ready = true
        let kindMatches: Bool
        switch r {
        case .train: kindMatches = p.kind == .train;
        case .eval: kindMatches = p.kind == .eval
        }
        if v != p.version || !kindMatches {
            // Unit ids are never reused, and a worker computes a unit on its own version: this is no honest result.
            requeueIfLost(index)
            let what =
                !kindMatches
                ? "a result of the wrong kind for a \(p.kind == .train ? "train" : "eval") unit"
                : "computed on version \(v), the unit is for version \(p.version)"
            return bad(peer, "unit \(unitId): \(what)") + dispatch()
        }
        guard results[index] == nil else { return dispatch() }
        if let problem = check(r, leaves: p.units[index]) {
            requeueIfLost(index)
            if problem.nonFinite {
                nonFinite[index, default: []].append(name)
                let who = nonFinite[index]!
                if Set(who).count >= 2 || (who.count >= 2 && workers.count == 1) {
                    return [
                        .fail(
                            "unit \(unitId) of version \(p.version) (\(episodeList(p.units[index]))) gave non-finite results on \(Set(who).count == 1 ? "worker \(who[0]) twice" : "workers " + Set(who).sorted().joined(separator: " and ")): the model diverged (lower maml.inner_lr or maml.outer_lr)"
                        )
                    ]
                }
            }
            return bad(peer, "unit \(unitId): \(problem.what)") + dispatch()
        }
        workers[peer]!.proven += 1
        suspects.remove(peer)
        if settings.verifyFraction > 0, spotChecked(version: p.version, index: index) {
            let (accepted, directives) = verify(r, index: index, unitId: unitId, from: peer)
            guard let r = accepted else { return directives + dispatch() }
            out += directives
            return out + accept(r, index: index, unitId: unitId, phase: p)
        }
        return out + accept(r, index: index, unitId: unitId, phase: p)
    }

    /// Files the result that counts for unit `index`; completes the phase with the last one.
    mutating func accept(_ r: UnitResult, index: Int, unitId: Int, phase p: Phase) -> [Directive] {
        var out: [Directive] = []
        results[index] = r
        if let t = sentAt[unitId] {
            let tasks = max(1, p.units[index].reduce(0) { $0 + $1.count })
            let x = max(0, clock - t) / Double(tasks)
            taskSeconds = taskSeconds.map { 0.8 * $0 + 0.2 * x } ?? x
        }
        out.append(.unitResult(index: index, r))
        if results.count == p.units.count { return out + complete() + dispatch() }
        return out + dispatch()
    }

    /// Whether unit `index` of the phase on `version` is spot-checked: a draw of a
    /// generator seeded by (verifySeed, version, index), so the same units are
    /// checked whoever computes them and however often the run restarts.
    func spotChecked(version: Int, index: Int) -> Bool {
        var x = settings.verifySeed &+ 0x9E37_79B9_7F4A_7C15 &* UInt64(bitPattern: Int64(version) &+ 1)
        x = (x ^ (UInt64(bitPattern: Int64(index)) &* 0xD1B5_4A32_D192_ED03)) &+ 0x9E37_79B9_7F4A_7C15
        x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
        x ^= x >> 31
        return Double(x >> 11) / Double(1 << 53) < settings.verifyFraction
    }

    /// A spot-checked unit's result. The first goes back out for a second
    /// opinion from another worker; two that agree bit for bit count (the
    /// first); two that differ are logged naming both workers, and the unit is
    /// computed a third time: the worker that disagrees with the majority is
    /// dropped. Three different results stop the run (the hosts do not run the
    /// same kernels). Returns the result that counts, once there is one.
    mutating func verify(_ r: UnitResult, index: Int, unitId: Int, from peer: PeerID) -> (UnitResult?, [Directive]) {
        var seen = checking[index] ?? []
        // The same worker's second copy is no second opinion while another worker is live to give one.
        let others = workers.keys.contains { p in !seen.contains { $0.peer == p } }
        if seen.contains(where: { $0.peer == peer }) && others { requeueIfLost(index); return (nil, []) }
        seen.append((peer, workers[peer]!.name, r))
        checking[index] = seen
        func again() { if !pending.contains(index) && !inFlight(index) { pending.insert(index, at: 0) } }
        switch seen.count {
        case 1:
            again()
            return (nil, [])
        case 2:
            if sameBits(seen[0].result, seen[1].result) {
                verified += 1
                return (seen[0].result, [])
            }
            verified += 1; mismatches += 1
            again()
            let line = Directive.log(
                "verify: unit \(unitId) differs between worker \(seen[0].name) and worker \(seen[1].name); computing it a third time"
            )
            return (nil, [line] + undecided())
        default:
            let third = seen[2]
            for (agree, disagree) in [(0, 1), (1, 0)] where sameBits(seen[agree].result, third.result) {
                var out: [Directive] = [
                    .log("verify: unit \(unitId): worker \(third.name) agrees with worker \(seen[agree].name)")
                ]
                if seen[disagree].peer != seen[agree].peer, workers[seen[disagree].peer] != nil {
                    out.append(
                        remove(seen[disagree].peer, because: "disagrees with the majority on unit \(unitId) (verify)"))
                }
                return (seen[agree].result, out)
            }
            return (
                nil,
                [
                    .fail(
                        "verify: unit \(unitId) gave three different results on workers \(seen.map(\.name).joined(separator: ", ")): "
                            + "results are bit-identical only where every host runs the same kernels (set OPENBLAS_CORETYPE on every host)"
                    )
                ]
            )
        }
    }

    /// Spot checks that found two different results and have no third worker
    /// live to decide between them: the run cannot tell which to trust.
    func undecided() -> [Directive] {
        guard let p = phase else { return [] }
        for (index, seen) in checking.sorted(by: { $0.key < $1.key }) where seen.count == 2 && results[index] == nil {
            guard !workers.keys.contains(where: { peer in !seen.contains { $0.peer == peer } }) else { continue }
            let names = seen.map(\.name)
            return [
                .fail(
                    "verify: unit \(firstUnitId + index) of version \(p.version) (\(episodeList(p.units[index]))) differs between worker "
                        + "\(names[0]) and worker \(names[1]), and no third worker is live to decide: results are bit-identical only where "
                        + "every host runs the same kernels (set OPENBLAS_CORETYPE on every host)")
            ]
        }
        return []
    }

    /// Whether two results are the same bits (floats compared as bit patterns).
    func sameBits(_ a: UnitResult, _ b: UnitResult) -> Bool {
        switch (a, b) {
        case (.train(let x), .train(let y)):
            return x.tasks == y.tasks && x.lossSum.bitPattern == y.lossSum.bitPattern
                && x.gradTheta == y.gradTheta && x.gradAlpha == y.gradAlpha // Floats compare bits
        case (.eval(let x), .eval(let y)):
            return x.queries == y.queries && x.sums.map(\.bitPattern) == y.sums.map(\.bitPattern)
                && x.losses.map(\.bitPattern) == y.losses.map(\.bitPattern)
        default:
            return false
        }
    }

    /// A worker (a host agent) gives a unit back: it crashed its processes twice.
    /// The unit never goes to that worker again; a unit given back by two
    /// workers, or by every live one, stops the run. Only the worker the unit
    /// was given to may say so (anything else counts against it).
    mutating func onUnitFailed(_ unitId: Int, reason: String, from peer: PeerID) -> [Directive] {
        let name = workers[peer]!.name
        guard workers[peer]!.units.contains(unitId) else {
            return bad(peer, "gave back unit \(unitId), which it does not hold", now: clock) + dispatch()
        }
        guard let p = phase, unitId >= firstUnitId, unitId < firstUnitId + p.units.count else {
            workers[peer]!.units.removeAll { $0 == unitId }
            workers[peer]!.gaveBack = true
            return noisy(
                peer, "gave back", clock, [.log("worker \(name) gave back unit \(unitId), which is no longer running")])
                + dispatch()
        }
        let index = unitId - firstUnitId
        workers[peer]!.units.removeAll { $0 == unitId }
        workers[peer]!.gaveBack = true
        failedOn[index, default: []].insert(peer)
        requeueIfLost(index)
        let out: [Directive] = [.log("worker \(name) gave back unit \(unitId): \(bounded(reason))")]
        let by = failedOn[index]!
        if by.count >= 2 || workers.keys.allSatisfy(by.contains) {
            let names = by.compactMap { workers[$0]?.name }.sorted()
            return out + [
                .unitFailed(
                    index: index,
                    reason: "unit \(unitId) of version \(p.version) (\(episodeList(p.units[index]))) failed on "
                        + (by.count == 1
                            ? "worker \(names.first ?? "?"), the only one live"
                            : "workers " + names.joined(separator: " and "))
                        + ": \(bounded(reason))")
            ]
        }
        return out + dispatch()
    }

    /// Units held past their deadline go out again (to whoever is ready, never back to a
    /// connection that held them past a deadline while another is live); the holder keeps
    /// them, and whichever result comes first counts. A connection that holds two units past
    /// their deadlines is dropped (its units go out again): a lease it cannot keep.
    mutating func overdueUnits(now: Double) -> [Directive] {
        guard let p = phase else { return [] }
        var out: [Directive] = []
        for peer in joinOrder {
            guard let w = workers[peer] else { continue }
            for id in w.units where !w.late.contains(id) {
                let index = id - firstUnitId
                guard index >= 0, index < p.units.count, results[index] == nil, let t = sentAt[id] else { continue }
                let tasks = p.units[index].reduce(0) { $0 + $1.count }
                let deadline =
                    taskSeconds.map { max(settings.minUnitDeadline, settings.deadlineFactor * $0 * Double(tasks)) }
                    ?? settings.firstUnitDeadline
                guard now - t > deadline else { continue }
                workers[peer]!.late.insert(id)
                avoid[index, default: []].insert(peer)
                suspects.insert(peer)
                if !pending.contains(index) { pending.insert(index, at: 0) }
                if workers[peer]!.late.count >= 2 {
                    out.append(
                        remove(
                            peer,
                            because:
                                "held \(workers[peer]!.late.count) units past their deadlines (the last: unit \(id), \(Int(now - t))s against \(Int(deadline))s)"
                        ))
                    break
                }
                out.append(
                    .log(
                        "worker \(w.name) has held unit \(id) for \(Int(now - t))s, past its deadline of \(Int(deadline))s; it goes out again"
                    ))
            }
        }
        return out
    }

    /// Why a result cannot count, if it cannot.
    func check(_ r: UnitResult, leaves: [[Int]]) -> (what: String, nonFinite: Bool)? {
        let episodes = leaves.reduce(0) { $0 + $1.count }
        switch r {
        case .train(let t):
            guard t.tasks == episodes else { return ("it claims \(t.tasks) tasks, the unit has \(episodes)", false) }
            if let n = settings.gradientCounts, t.gradTheta.count != n.theta || t.gradAlpha.count != n.alpha {
                return (
                    "gradients of \(t.gradTheta.count)+\(t.gradAlpha.count) floats, the model has \(n.theta)+\(n.alpha)",
                    false
                )
            }
            guard !settings.checkFinite || (t.lossSum.isFinite && t.gradTheta.allFinite && t.gradAlpha.allFinite) else {
                return ("non-finite values", true)
            }
        case .eval(let e):
            guard e.queries.count == episodes else {
                return ("metrics of \(e.queries.count) episodes, the unit has \(episodes)", false)
            }
            for (i, q) in e.queries.enumerated() {
                guard q >= 0, q <= 1 << 20, e.losses[i].isFinite,
                    e.sums[(6 * i)..<(6 * i + 6)].allSatisfy({ $0.isFinite && $0 >= 0 && $0 <= Double(q) })
                else {
                    return ("episode \(i)'s metrics are out of range", false)
                }
            }
        }
        return nil
    }

    /// Counts a bad result against a worker; drops the worker once it has too many.
    /// Counts a bad result or message against a worker (a strike); drops the worker once it
    /// has `badResultsAllowed`. Lines about strikes are rate-limited per peer like other noise.
    mutating func bad(_ peer: PeerID, _ what: String, now: Double? = nil) -> [Directive] {
        workers[peer]!.bad += 1
        let w = workers[peer]!
        if w.bad >= settings.badResultsAllowed {
            return [remove(peer, because: "sent \(w.bad) bad results or messages (the last: \(bounded(what)))")]
        }
        return noisy(
            peer, "bad", now ?? clock,
            [
                .log(
                    "dropped a bad result or message from worker \(w.name) (\(w.bad) of \(settings.badResultsAllowed) allowed): \(bounded(what))"
                )
            ])
    }

    /// Puts a unit back in the queue unless it has a result, is queued, or another worker holds it.
    mutating func requeueIfLost(_ index: Int) {
        if results[index] == nil && !pending.contains(index) && !inFlight(index) { pending.append(index) }
    }

    /// A peer's text as it goes into a log line: at most 200 characters, on one line.
    func bounded(_ s: String) -> String {
        let line = String(s.map { $0.isNewline ? " " : $0 })
        return line.count <= 200 ? line : line.prefix(200) + "…"
    }

    func inFlight(_ index: Int) -> Bool { workers.values.contains { $0.units.contains(firstUnitId + index) } }

    mutating func requeue(_ unitId: Int) {
        guard let p = phase else { return }
        let index = unitId - firstUnitId
        guard index >= 0, index < p.units.count, results[index] == nil, !pending.contains(index) else { return }
        pending.insert(index, at: 0)
    }

    mutating func complete() -> [Directive] {
        let p = phase!
        let ordered = (0..<p.units.count).map { results[$0]! }
        phase = nil
        pending = []
        results = [:]; assigned = [:]; nonFinite = [:]; sentAt = [:]; avoid = [:]; crashes = [:]; failedOn = [:];
        checking = [:]
        return [.phaseComplete(PhaseResults(phase: p, results: ordered))]
    }

    /// Hands pending units to ready workers: first one to each idle process
    /// (connections with more processes first, then in join order), then,
    /// while more units are pending than processes are live, a queued unit to
    /// each busy connection, up to `unitsPerWorker` − 1 beyond its processes.
    mutating func dispatch() -> [Directive] {
        guard let p = phase else { return [] }
        var out: [Directive] = []
        let order = joinOrder.enumerated().sorted {
            let a = workers[$0.element].map(share) ?? 0, b = workers[$1.element].map(share) ?? 0
            return a != b ? a > b : $0.offset < $1.offset
        }.map(\.element)
        let procs = workers.values.reduce(0) { $0 + share($1) }
        /// The first pending unit this peer may take (not one it gave back, nor one it held past a deadline
        /// while another connection is live to take it).
        func next(for peer: PeerID) -> Int? {
            if failedOn.isEmpty && checking.isEmpty && avoid.isEmpty { return pending.isEmpty ? nil : 0 }
            return pending.firstIndex { i in
                if failedOn[i]?.contains(peer) == true { return false }
                if let a = avoid[i], a.contains(peer), workers.keys.contains(where: { !a.contains($0) }) {
                    return false
                }
                // A spot check wants another worker's opinion, while another one is live.
                // A third, after two that differ, only from a worker not heard on it yet.
                guard let seen = checking[i], seen.contains(where: { $0.peer == peer }) else { return true }
                return seen.count < 2 && !workers.keys.contains { p in !seen.contains { $0.peer == p } }
            }
        }
        func give(_ peer: PeerID) {
            guard let at = next(for: peer) else { return }
            let index = pending.remove(at: at)
            let id = firstUnitId + index
            workers[peer]!.units.append(id)
            assigned[index, default: []].insert(peer)
            sentAt[id] = clock
            out.append(.send(peer, .work(WorkUnit(id: id, kind: p.kind, version: p.version, leaves: p.units[index]))))
        }
        /// Sends `taker` a copy of unit `index`, held elsewhere; whether it went.
        @discardableResult func copy(_ index: Int, to taker: PeerID) -> Bool {
            pending.append(index)
            let before = out.count
            give(taker)
            if out.count == before { pending.removeAll { $0 == index } }
            return out.count != before
        }
        let most = workers.values.map(share).max() ?? 0
        for held in 0..<most {
            for peer in order where !pending.isEmpty {
                guard let w = workers[peer], w.ready, held < share(w), w.units.count == held else { continue }
                give(peer)
            }
        }
        for extra in 0..<max(0, settings.unitsPerWorker - 1) {
            for peer in order where pending.count > procs {
                guard let w = workers[peer], w.ready, w.units.count == share(w) + extra else { continue }
                give(peer)
            }
        }
        // Nothing else to do: a copy of each unit a suspect holds (a peer that held a unit past its
        // deadline and has returned no result since) goes to an idle peer now rather than after the
        // unit's deadline. The first result counts; the bits are the same either way.
        if pending.isEmpty && !suspects.isEmpty {
            for holder in order where suspects.contains(holder) {
                for id in workers[holder]?.units ?? [] {
                    let index = id - firstUnitId
                    guard index >= 0, index < p.units.count, results[index] == nil,
                        (assigned[index] ?? []).allSatisfy({ $0 == holder || suspects.contains($0) })
                    else { continue }
                    guard
                        let taker = order.first(where: { q in
                            q != holder && !suspects.contains(q) && assigned[index]?.contains(q) != true
                                && failedOn[index]?.contains(q) != true
                                && workers[q].map { $0.ready && $0.units.count < share($0) } == true
                        })
                    else { break }
                    copy(index, to: taker)
                }
            }
        }
        // No unit time measured yet (the run's first units, so deadlines are still
        // `firstUnitDeadline`): a unit held longer than `minUnitDeadline` while a peer sits idle
        // is copied to that peer, without blaming its holder (a first unit may be slow to start).
        // The first result counts and measures the unit time; from then on deadlines apply.
        if pending.isEmpty && taskSeconds == nil {
            for (id, t) in sentAt.sorted(by: { $0.key < $1.key }) where clock - t > settings.minUnitDeadline {
                let index = id - firstUnitId
                guard index >= 0, index < p.units.count, results[index] == nil, checking[index] == nil,
                    inFlight(index)
                else { continue }
                guard
                    let taker = order.first(where: { q in
                        assigned[index]?.contains(q) != true && failedOn[index]?.contains(q) != true
                            && workers[q].map { $0.ready && $0.units.isEmpty } == true
                    })
                else { break }
                if copy(index, to: taker) {
                    out.append(
                        .log(
                            "unit \(id) has been out for \(Int(clock - t))s and no unit time is measured yet: worker \(workers[taker]!.name), idle, takes a copy"
                        ))
                }
            }
        }
        return out
    }

    /// The units a connection may hold at once: the processes it claims, but no more than
    /// one beyond the results it has returned, so a claim of 4,096 processes buys nothing
    /// until the results show them.
    func share(_ w: Worker) -> Int { min(w.procs, 1 + w.proven) }
}

/// Rate limit for lines a peer's noise causes: at most `perWindow` of each
/// kind per peer per `window` seconds; what is held back is counted and said
/// with the next line let through.
struct NoiseLimiter: Sendable {
    var perWindow = 5
    var window = 60.0
    private var seen: [String: (start: Double, count: Int, held: Int)] = [:]

    /// nil: hold this line back; otherwise how many were held back before it.
    mutating func allow(_ peer: PeerID, _ kind: String, now: Double) -> Int? {
        let key = kind + "|" + peer.description
        var s = seen[key] ?? (now, 0, 0)
        var held = 0
        if now - s.start >= window { held = s.held; s = (now, 0, 0) }
        s.count += 1
        if s.count > perWindow { s.held += 1; seen[key] = s; return nil }
        seen[key] = s
        return held
    }

    /// Drops windows that ended (peers come and go; the table must not grow without end).
    mutating func forget(before now: Double) {
        seen = seen.filter { now - $0.value.start < window || $0.value.held > 0 && now - $0.value.start < 2 * window }
    }
}

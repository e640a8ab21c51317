import Core
import Foundation
import Transport
import Wire

/// A worker's end (also a host agent's end towards the coordinator): a DEALER
/// for work and results, a SUB for weights, its own shared-memory file for
/// results and a mapping of the coordinator's file for weights.
public final class WorkerLink {
    public let endpoint: String
    let protocolVersion: UInt16
    private let log: (String) -> Void
    private var dealer: ZMQSocket!
    private var sub: ZMQSocket!
    /// Offer the coordinator a shared-memory file for results (used if it is on this machine).
    public private(set) var sharedMemory: Bool
    private var arena: SharedArena?
    private var arenaAccepted = false // some coordinator mapped `arena`: a new hello needs a new one
    private var resultsShared = false // the current coordinator reads results from `arena`
    private var weightsView: SharedView? // the current coordinator's file, where broadcasts may leave weights
    private var welcomedRun: String? // the run whose welcome set up `weightsView`

    /// What `receive` hands on.
    public enum Event {
        /// A message from the coordinator, its payloads resolved.
        case message(Envelope)
        /// A frame that is no protocol message.
        case undecodable(WireError)
        /// A broadcast this link cannot read (another run's shared memory, or none mapped):
        /// the coordinator of `runId` spoke all the same, so a worker that has to join a
        /// restarted coordinator notices at once, and a unit waiting for those weights fetches them.
        case heard(runId: String)
        /// The coordinator of `runId` welcomed us on terms this link cannot keep (it maps our
        /// shared memory, but we cannot open its own): the link has given up shared memory,
        /// and the worker must say hello again to be admitted without it.
        case rejoinNeeded(runId: String, reason: String)
    }

    public init(
        endpoint: String, sharedMemory: Bool, protocolVersion: UInt16 = Envelope.protocolVersion,
        log: @escaping (String) -> Void
    ) {
        self.endpoint = endpoint; self.sharedMemory = sharedMemory; self.protocolVersion = protocolVersion;
        self.log = log
    }

    /// CURVE towards the coordinator (both sockets); nil: none. Set before `connect`.
    public var curve: CurveClientKeys?
    /// What connection events tell a person (made at `connect`, with the keys then set).
    private var advice: JoinAdvice?

    /// The largest frame the coordinator may send us (ZMQ_MAXMSGSIZE on both sockets: a larger
    /// one ends the connection before it is buffered). Until a welcome says which model the run
    /// trains, `welcomeLimit`; then the model's θ and α inline plus 1 MiB (`limitFrames(toModelOf:)`).
    public private(set) var maxMessageSize = WorkerLink.welcomeLimit
    public static let welcomeLimit = 16 << 20
    private var context: ZMQContext?
    private var identity: [UInt8] = []
    /// The DEALER's connection events (refused connects, failed handshakes), for `advice(now:)`.
    private var monitor: ZMQMonitor?
    /// Events taken from the monitor and not yet read by `advice(now:)`.
    private var events: [ConnectionEvent] = []
    /// A handshake on these sockets failed and none has succeeded since: a message sent now
    /// would only wait in the queue of a connection the coordinator refuses.
    private var refused = false
    /// Whether these sockets' failed handshake has had the coordinator's greeting probed.
    private var probed = false

    public func connect(_ ctx: ZMQContext) throws {
        context = ctx
        advice = JoinAdvice(endpoint: endpoint, publicKey: curve?.pair.publicKey)
        // A random identity of our own, rather than the one the ROUTER would number (libzmq
        // numbers peers from an unseeded rand(), so a stranger could take the next one).
        var rng = SystemRandomNumberGenerator()
        identity =
            [UInt8.random(in: 1...255, using: &rng)] + (0..<15).map { _ in UInt8.random(in: 0...255, using: &rng) }
        try open()
    }

    /// Sets the frame limit for a model of `floats` parameters (θ and α); the sockets are opened
    /// again with it (same identity, so the coordinator sees the same peer; a welcome has been
    /// read, and nothing else is on its way to us before we say `ready`).
    public func limitFrames(toModelOf floats: Int) throws {
        let limit = Envelope.frameLimit(floats: floats)
        guard limit != maxMessageSize else { return }
        maxMessageSize = limit
        try reopen()
    }

    /// Closes both sockets at once (nothing queued is kept) and opens them again, same identity.
    private func reopen() throws {
        dealer.setLinger(milliseconds: 0)
        dealer = nil; sub = nil
        try open()
    }

    private func open() throws {
        guard let ctx = context else { throw MetatrainError("internal: a worker link opened before connect") }
        dealer = try ZMQSocket(ctx, .dealer)
        dealer.setRoutingId(identity)
        monitor = nil
        monitor = try ZMQMonitor(ctx, watching: dealer)
        refused = false; probed = false
        sub = try ZMQSocket(ctx, .sub)
        for s in [dealer!, sub!] { s.setMaxMessageSize(maxMessageSize) }
        if let curve {
            for s in [dealer!, sub!] {
                try s.setCurveClient(
                    serverKey: curve.serverKey, publicKey: curve.pair.publicKey, secretKey: curve.pair.secretKey)
            }
        }
        do {
            try dealer.connect(endpoint)
            try sub.connect(try publishEndpoint(for: endpoint))
            try sub.subscribe()
        } catch let e as TransportError { throw MetatrainError("cannot connect to \(endpoint): \(e)") }
    }

    /// The sockets to poll for incoming messages (with a shell's own, see `Runtime.UpLoop`).
    public var sockets: [ZMQSocket] { [dealer, sub] }

    /// Every message waiting now on either socket (up to `timeoutMs` for the
    /// first), payloads resolved, as events.
    public func receive(timeoutMs: Int) throws -> [Event] {
        let ready = try zmqPoll([dealer, sub], timeoutMs: timeoutMs)
        var out: [Event] = []
        for (socket, isReady) in zip([dealer!, sub!], ready) where isReady {
            var taken = 0
            // At most `receiveBatch` at a time, so that a flood never starves the caller's timers.
            while taken < receiveBatch, let frames = try socket.receiveFrames(timeoutMs: 0) {
                taken += 1
                guard frames.count == 1 else { log("dropped a message of \(frames.count) frames"); continue }
                do {
                    // Decoded in place: weights stay in the received frame until installed.
                    let e = try Envelope.decode(ByteBlock(view: frames[0].bytes, owner: frames[0]))
                    out.append(resolve(e))
                } catch let e as WireError {
                    out.append(.undecodable(e))
                }
            }
        }
        return out
    }

    /// A welcome says whether the coordinator maps our file and offers its own.
    /// A coordinator that maps our file but whose own file we cannot open (e.g.
    /// it runs as another user) would put every broadcast where we cannot read
    /// it: we give up shared memory and ask to join again without an offer.
    func resolve(_ e: Envelope) -> Event {
        switch e.message {
        case .welcome(let w):
            resultsShared = w.store != nil && arena != nil
            weightsView = nil
            welcomedRun = e.runId
            if resultsShared, let offer = w.store {
                arenaAccepted = true
                do { weightsView = try SharedView(offer) } catch {
                    sharedMemory = false
                    arena = nil; arenaAccepted = false; resultsShared = false
                    return .rejoinNeeded(
                        runId: e.runId,
                        reason:
                            "cannot read the coordinator's shared memory (\(error)); results and weights go through the socket"
                    )
                }
            }
            return .message(e)
        case .weights(let w) where w.ref != nil:
            var out = e
            do {
                guard let view = weightsView, e.runId == welcomedRun else {
                    throw SharedMemoryError("not in a shared-memory file this worker maps")
                }
                var resolved = w
                (resolved.theta, resolved.alpha) = try view.floats(w.ref!)
                resolved.ref = nil
                out.message = .weights(resolved)
            } catch {
                log("cannot read weights \(w.version) of run \(e.runId): \(error)")
                return .heard(runId: e.runId)
            }
            return .message(out)
        default:
            return .message(e)
        }
    }

    /// Sends a message: a hello offers a shared-memory file, and a train result
    /// leaves its gradients there when the coordinator mapped it (encoded
    /// straight into the outgoing ZeroMQ message otherwise). Returns the message as sent.
    @discardableResult
    public func send(_ message: Message, runId: String) throws -> Message {
        let m = place(message)
        let e = Envelope(runId: runId, message: m, protocolVersion: protocolVersion)
        let frame = OutgoingFrame(count: e.encodedCount)
        e.encode(into: frame.mutableBytes)
        // Never blocks: with no coordinator connected (not up yet, or a refused CURVE handshake)
        // the message is dropped; hellos and heartbeats are said again, and results re-issued.
        var isHello = false
        if case .hello = m { isHello = true }
        if isHello && handshakeRefused() {
            // A refused handshake ends libzmq's connection or, when the refusal reads as a reset,
            // leaves it retrying with the hello queued: either way the hello is not sent.
            log("the coordinator refused this connection's handshake: '\(m.typeName)' not sent")
        } else if try dealer.send([], frame, wait: false) {
            return m
        } else {
            log("no connection to the coordinator: '\(m.typeName)' not sent")
        }
        if isHello {
            // libzmq never reconnects a connection it ended for a protocol error (e.g. a frame over
            // our size limit or a refused handshake): a hello not sent opens the sockets afresh.
            log("opening the connection to \(endpoint) again")
            try reopen()
            _ = try dealer.send([], frame, wait: false)
        }
        return m
    }

    func place(_ m: Message) -> Message {
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
            h.store = arena?.offer
            return .hello(h)
        case .trainResult(var r) where resultsShared:
            guard let space = arena!.allocate(bytes: 4 * (r.gradTheta.count + r.gradAlpha.count), version: r.version)
            else { return m }
            r.ref = SharedArena.put(r.gradTheta, r.gradAlpha, into: space)
            r.gradTheta = []; r.gradAlpha = []
            return .trainResult(r)
        default:
            return m
        }
    }

    /// Lines for a person, from what happened to the connection since the last call (never
    /// blocks): why this worker cannot get in, told within a second of it happening (`JoinAdvice`).
    public func advice(now: Double) -> [String] {
        takeEvents()
        defer { events = [] }
        return advice?.lines(for: events, now: now) ?? []
    }

    /// Whether a handshake on these sockets failed and none has succeeded since (reads the monitor).
    private func handshakeRefused() -> Bool {
        takeEvents()
        return refused
    }

    /// Moves the monitor's events to `events`. A failed handshake that does not say why is
    /// read again from the coordinator's greeting (`zmtpMechanism(at:timeoutMs:)`), once per
    /// opening of the sockets: a mechanism other than ours is a mismatch, whichever side closed first.
    private func takeEvents() {
        guard let new = try? monitor?.take(), !new.isEmpty else { return }
        events += new
        var unexplained = false
        for e in new {
            switch e {
            case .handshakeSucceeded: refused = false
            case .mechanismMismatch, .authenticationFailed: refused = true
            case .handshakeFailed, .protocolError: refused = true; unexplained = true
            case .connectRetried, .disconnected: break
            }
        }
        if unexplained && !probed {
            probed = true
            if let theirs = zmtpMechanism(at: endpoint, timeoutMs: 1000), theirs != (curve == nil ? "NULL" : "CURVE") {
                events.append(.mechanismMismatch(address: endpoint))
            }
        }
    }

    /// Closes the sockets, giving a goodbye still queued up to a second to leave
    /// (the process may exit right after, before any deinit would run).
    public func close() {
        dealer?.setLinger(milliseconds: 1000)
        monitor = nil
        dealer = nil; sub = nil
    }
}

import Coordination
import Core
import Foundation
import Transport
import Wire

/// The two ends of the coordinator–worker transport, in the spirit of
/// ps-lite's "van": each link owns its sockets and shared-memory files and
/// turns frames into envelopes and back. Where a payload lies (in the
/// message, or in a shared-memory file both processes map) never reaches the
/// state machines: a received message's payloads are resolved before it is
/// handed on, and a sent one's are placed as the link sees fit.

/// Messages a link hands over per `receive` call at most.
let receiveBatch = 256

/// A received frame: a message, or why it could not be read.
public enum Incoming {
    case message(Envelope)
    case undecodable(WireError)
}

/// The coordinator's end (also a host agent's end towards its processes): a
/// ROUTER for work and results, a PUB at the next port for weights, its own
/// shared-memory file for weights and a mapping of each local worker's file
/// for results.
public final class CoordinatorLink {
    public let requestedEndpoint: String
    /// The endpoint workers connect to, once bound.
    public private(set) var boundEndpoint = ""
    private let log: (String) -> Void
    private var router: ZMQSocket!
    private var pub: ZMQSocket!
    /// Where local workers read published weights (nil: every broadcast is inline).
    private var weightsArena: SharedArena?
    /// Workers' shared-memory files we mapped, by peer, with the offer each hello made.
    private var mapped: [PeerID: (offer: SharedOffer, view: SharedView)] = [:]
    /// Each peer's last hello, until a welcome answers it: nothing a stranger
    /// offers is opened before the coordinator has checked who it is.
    private var offered: [PeerID: Hello] = [:]
    /// The weights to publish and to answer fetches with (views the owner keeps valid until the next `setWeights`).
    private var weights: Weights?
    private var runId = ""
    /// The weights encoded inline, made on first need (fetch replies, workers without shared memory).
    private var weightsFrame: OutgoingFrame?

    public init(endpoint: String, log: @escaping (String) -> Void) {
        requestedEndpoint = endpoint; self.log = log
    }

    /// The largest frame a worker may send (ZMQ_MAXMSGSIZE: a larger one ends its
    /// connection before it is buffered); nil: no limit. Set before `bind`.
    public var maxMessageSize: Int?
    /// CURVE on both sockets (the weights' PUB too), and the keys let in; nil: none. Set before `bind`.
    public var curve: CurveServerKeys?
    private var zap: ZAPHandler?
    /// Keys refused so far (each is logged once).
    private var refused: Set<String> = []
    /// Where each peer's hello came from: an IP address, or "this machine" over ipc://.
    private var addresses: [PeerID: String] = [:]

    /// The machines behind `peers`: distinct addresses their hellos came from.
    public func hosts(of peers: [PeerID]) -> Int { Set(peers.map { addresses[$0] ?? "unknown \($0)" }).count }
    /// With CURVE: the ROUTER's handshake events, to tell of peers that offer no key.
    private var monitor: ZMQMonitor?
    private var keyless = RateLimitedLine(every: 60)

    /// Creates the weights file and binds ROUTER at the endpoint and PUB next to it. Port 0 picks a free pair of ports.
    public func bind(_ ctx: ZMQContext, sharedMemory: Bool = true) throws {
        if curve != nil { zap = try ZAPHandler(ctx) }
        if sharedMemory {
            do { weightsArena = try SharedArena(name: "metatrain-weights") } catch {
                log("weights go through the socket: \(error)")
            }
        }
        if requestedEndpoint.hasPrefix("tcp://"), requestedEndpoint.hasSuffix(":0") {
            let host = String(requestedEndpoint.dropLast(2))
            for _ in 0..<50 {
                let r = try router(ctx)
                try r.bind(host + ":*")
                let ep = r.lastEndpoint
                let p = try publisher(ctx)
                if (try? p.bind(try publishEndpoint(for: ep))) != nil {
                    router = r; pub = p; boundEndpoint = ep
                    if curve != nil { monitor = try ZMQMonitor(ctx, watching: r) }
                    return
                }
            }
            throw MetatrainError("\(requestedEndpoint): could not find two free adjacent ports")
        }
        router = try router(ctx)
        if curve != nil { monitor = try ZMQMonitor(ctx, watching: router) }
        pub = try publisher(ctx)
        do {
            try router.bind(requestedEndpoint)
            try pub.bind(try publishEndpoint(for: requestedEndpoint))
        } catch let e as TransportError { throw MetatrainError("cannot bind \(requestedEndpoint): \(e)") }
        boundEndpoint = router.lastEndpoint
    }

    /// A ROUTER with the size limit, on which a peer that takes an identity in
    /// use takes it over (workers pick random identities; a collision must not
    /// stop the coordinator).
    func router(_ ctx: ZMQContext) throws -> ZMQSocket {
        let r = try ZMQSocket(ctx, .router)
        if let maxMessageSize { r.setMaxMessageSize(maxMessageSize) }
        r.setRouterHandover(true)
        if let curve { try r.setCurveServer(secretKey: curve.pair.secretKey) }
        return r
    }

    /// The weights' PUB: with CURVE, a subscriber without a listed key hears nothing.
    func publisher(_ ctx: ZMQContext) throws -> ZMQSocket {
        let p = try ZMQSocket(ctx, .pub)
        if let curve { try p.setCurveServer(secretKey: curve.pair.secretKey) }
        return p
    }

    /// Logs peers that offered no CURVE key at all, at most once a minute (with how many there were).
    func reportKeylessPeers() throws {
        for event in (try monitor?.take()) ?? [] {
            // Which side sees the mismatch first is a race: either event may stand for a keyless peer.
            switch event {
            case .mechanismMismatch, .handshakeFailed:
                guard let n = keyless.due(now: monotonicNow()) else { continue }
                log(
                    "refused a connection on \(boundEndpoint): the peer offered no CURVE key, or one made for another coordinator"
                        + (n > 1 ? " (\(n) such attempts since the last line)" : "")
                        + "; a worker needs --key WORKER.secret and --coordinator-key with this coordinator's .pub")
            default: break
            }
        }
    }

    /// Answers the CURVE handshakes waiting: a listed key gets in; another is refused and logged once.
    func answerHandshakes() throws {
        guard let zap, let curve else { return }
        try zap.answer { key, address in
            if curve.authorized.contains(key) { return true }
            if refused.insert(key).inserted {
                log("refused a connection from \(address): its key \(key) is not among the authorized keys")
            }
            return false
        }
    }

    /// The run every outgoing envelope carries.
    public func setRun(_ id: String) { runId = id }

    /// The sockets to poll for incoming messages (with another link's, by a host agent).
    var sockets: [ZMQSocket] { [router] + (zap.map { [$0.socket] } ?? []) }

    /// Every message waiting now (up to `timeoutMs` for the first), with its
    /// sender. A hello's shared-memory offer is mapped here; a train result's
    /// gradients are read where the worker wrote them.
    public func receive(timeoutMs: Int) throws -> [(PeerID, Incoming)] {
        let ready = try zmqPoll(sockets, timeoutMs: timeoutMs)
        if ready.count > 1, ready[1] { try answerHandshakes() }
        try reportKeylessPeers()
        guard ready[0] else { return [] }
        var out: [(PeerID, Incoming)] = []
        // At most `receiveBatch` at a time, so that a flood never starves the caller's timers.
        while out.count < receiveBatch, let frames = try router.receiveFrames(timeoutMs: 0) {
            let peer = PeerID(Array(frames[0].bytes))
            guard frames.count == 2 else {
                // The protocol's messages are one frame: the machine counts anything else against its sender.
                out.append(
                    (peer, .undecodable(.invalid("a message of \(frames.count - 1) frames (one is the protocol's)"))))
                continue
            }
            do {
                // Decoded in place: a result's gradients stay in its frame until the reduce reads them.
                var e = try Envelope.decode(ByteBlock(view: frames[1].bytes, owner: frames[1]))
                switch e.message {
                case .hello(let h):
                    offered[peer] = h // opened only once the coordinator welcomes the peer
                    addresses[peer] = frames[1].peerAddress ?? "this machine"
                case .trainResult(let r):
                    if let p = r.shared {
                        guard let s = mapped[peer] else {
                            throw WireError.invalid("train result in shared memory that was never offered")
                        }
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
                out.append((peer, .message(e)))
            } catch let e as WireError {
                out.append((peer, .undecodable(e)))
            }
        }
        return out
    }

    /// Maps the shared-memory file a hello offers, if it is on this machine
    /// (a repeated hello offering the same file keeps the mapping; a new file
    /// may have the old one's path, since a closed descriptor's number is
    /// reused, but never its token).
    func map(_ h: Hello, from peer: PeerID) {
        guard let offer = h.sharedMemory else {
            if mapped.removeValue(forKey: peer) != nil {
                log(
                    "worker \(h.workerName): results and weights through the socket from now on (its new hello offers no shared memory)"
                )
            }
            return
        }
        if mapped[peer]?.offer == offer { return }
        do {
            mapped[peer] = (offer, try SharedView(offer))
            log("worker \(h.workerName): results through shared memory (\(offer.path))")
        } catch {
            mapped[peer] = nil
            log("worker \(h.workerName): results through the socket (shared memory: \(error))")
        }
    }

    /// Sends a message to one worker: a welcome offers our weights file to a
    /// worker whose file we map; a refusal forgets its mapping.
    public func send(_ peer: PeerID, _ message: Message) {
        var m = message
        switch m {
        case .welcome(var w):
            if let h = offered.removeValue(forKey: peer) { map(h, from: peer) }
            w.sharedMemory = mapped[peer] != nil ? weightsArena?.offer : nil
            m = .welcome(w)
        case .refuse: mapped[peer] = nil; offered[peer] = nil
        default: break
        }
        do { try router.send([peer.bytes, Envelope(runId: runId, message: m).encode()]) } catch {
            log("could not send to \(peer): \(error)")
        }
    }

    /// The weights that `publish` and `sendWeights` send from now on.
    public func setWeights(_ w: Weights) {
        weights = w
        weightsFrame = nil
    }

    /// Sends the weights to one worker, always inline: a worker fetches when it
    /// missed a broadcast or could not read one.
    public func sendWeights(_ peer: PeerID) {
        guard let frame = inlineWeights() else { return }
        do { try router.send([peer.bytes], frame) } catch { log("could not send weights to \(peer): \(error)") }
    }

    /// Broadcasts the weights. When every live worker reads our shared memory,
    /// they go into slot (version mod 2) and the broadcast says where: a slot is
    /// rewritten two versions later, after every unit that could read it has
    /// finished (see docs/PROTOCOL.md). Otherwise the broadcast carries them.
    public func publish(live: [PeerID]) {
        guard let w = weights else { return }
        if let arena = weightsArena, !live.isEmpty, live.allSatisfy({ mapped[$0] != nil }),
            let space = arena.slot(w.version & 1, bytes: 4 * (w.theta.count + w.alpha.count))
        {
            let payload = SharedArena.put(w.theta, w.alpha, into: space)
            try? pub.send([
                Envelope(
                    runId: runId, message: .weights(Weights(version: w.version, theta: [], alpha: [], shared: payload))
                ).encode()
            ])
        } else if let frame = inlineWeights() {
            try? pub.send([], frame)
        }
    }

    /// Tells every subscriber that the run is over.
    public func publishShutdown(_ reason: String) {
        try? pub.send([Envelope(runId: runId, message: .shutdown(reason: reason)).encode()])
    }

    /// Forgets the files (and unanswered hellos) of workers that are no longer live.
    public func forget(except live: (PeerID) -> Bool) {
        for peer in mapped.keys where !live(peer) { mapped[peer] = nil }
        for peer in offered.keys where !live(peer) { offered[peer] = nil }
        for peer in addresses.keys where !live(peer) { addresses[peer] = nil }
    }

    /// The weights as one inline ZeroMQ message, encoded once per version and
    /// shared by the broadcast and every fetch reply without copying.
    func inlineWeights() -> OutgoingFrame? {
        if let f = weightsFrame { return f }
        guard let w = weights else { return nil }
        let e = Envelope(runId: runId, message: .weights(w))
        let frame = OutgoingFrame(count: e.encodedCount)
        e.encode(into: frame.mutableBytes)
        weightsFrame = frame
        return frame
    }

    public func close() { monitor = nil; router = nil; pub = nil; zap = nil }
}

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
    private var rejoinReason: String? // set when the coordinator must admit us again on new terms

    public init(
        endpoint: String, sharedMemory: Bool, protocolVersion: UInt16 = Envelope.protocolVersion,
        log: @escaping (String) -> Void
    ) {
        self.endpoint = endpoint; self.sharedMemory = sharedMemory; self.protocolVersion = protocolVersion;
        self.log = log
    }

    /// CURVE towards the coordinator (both sockets); nil: none. Set before `connect`.
    public var curve: CurveClientKeys?

    /// The largest frame the coordinator may send us (ZMQ_MAXMSGSIZE on both sockets: a larger
    /// one ends the connection before it is buffered). Until a welcome says which model the run
    /// trains, `welcomeLimit`; then the model's θ and α inline plus 1 MiB (`limitFrames(toModelOf:)`).
    public private(set) var maxMessageSize = WorkerLink.welcomeLimit
    public static let welcomeLimit = 16 << 20
    private var context: ZMQContext?
    private var identity: [UInt8] = []
    /// The DEALER's connection events (refused connects, failed handshakes), for `connectionEvents()`.
    private var monitor: ZMQMonitor?

    public func connect(_ ctx: ZMQContext) throws {
        context = ctx
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

    /// The sockets to poll for incoming messages (with another link's, by a host agent).
    var sockets: [ZMQSocket] { [dealer, sub] }

    /// Every message waiting now on either socket (up to `timeoutMs` for the
    /// first), payloads resolved. A broadcast we cannot read (another run's
    /// file, or none mapped) still says that the coordinator spoke and which
    /// run it runs: it comes out as a heartbeat with the broadcast's run id, so
    /// a worker that has to join a restarted coordinator notices at once, and
    /// the unit waiting for these weights fetches them inline.
    public func receive(timeoutMs: Int) throws -> [Incoming] {
        let ready = try zmqPoll([dealer, sub], timeoutMs: timeoutMs)
        var out: [Incoming] = []
        for (socket, isReady) in zip([dealer!, sub!], ready) where isReady {
            var taken = 0
            // At most `receiveBatch` at a time, so that a flood never starves the caller's timers.
            while taken < receiveBatch, let frames = try socket.receiveFrames(timeoutMs: 0) {
                taken += 1
                guard frames.count == 1 else { log("dropped a message of \(frames.count) frames"); continue }
                do {
                    // Decoded in place: weights stay in the received frame until installed.
                    let e = try Envelope.decode(ByteBlock(view: frames[0].bytes, owner: frames[0]))
                    out.append(.message(resolve(e)))
                } catch let e as WireError {
                    out.append(.undecodable(e))
                }
            }
        }
        return out
    }

    /// Set once when the transport cannot go on with what the coordinator
    /// agreed to in its welcome (e.g. it cannot read the coordinator's shared
    /// memory): the worker must say hello again.
    public func takeRejoinReason() -> String? {
        defer { rejoinReason = nil }
        return rejoinReason
    }

    /// A welcome says whether the coordinator maps our file and offers its own.
    /// A coordinator that maps our file but whose own file we cannot open (e.g.
    /// it runs as another user) would put every broadcast where we cannot read
    /// it: we give up shared memory and ask to join again without an offer.
    func resolve(_ e: Envelope) -> Envelope {
        switch e.message {
        case .welcome(let w):
            resultsShared = w.sharedMemory != nil && arena != nil
            weightsView = nil
            welcomedRun = e.runId
            if resultsShared, let offer = w.sharedMemory {
                arenaAccepted = true
                do { weightsView = try SharedView(offer) } catch {
                    sharedMemory = false
                    arena = nil; arenaAccepted = false; resultsShared = false
                    rejoinReason =
                        "cannot read the coordinator's shared memory (\(error)); results and weights go through the socket"
                    var out = e
                    out.message = .heartbeat
                    return out
                }
            }
            return e
        case .weights(let w) where w.shared != nil:
            var out = e
            do {
                guard let view = weightsView, e.runId == welcomedRun else {
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
        if try !dealer.send([], frame, wait: false) {
            log("no connection to the coordinator: '\(m.typeName)' not sent")
            if case .hello = m {
                // libzmq never reconnects a connection it ended for a protocol error (e.g. a frame over
                // our size limit): a hello that finds no connection opens the sockets afresh.
                log("opening the connection to \(endpoint) again")
                try reopen()
                _ = try dealer.send([], frame, wait: false)
            }
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
            h.sharedMemory = arena?.offer
            return .hello(h)
        case .trainResult(var r) where resultsShared:
            guard let space = arena!.allocate(bytes: 4 * (r.gradTheta.count + r.gradAlpha.count), version: r.version)
            else { return m }
            r.shared = SharedArena.put(r.gradTheta, r.gradAlpha, into: space)
            r.gradTheta = []; r.gradAlpha = []
            return .trainResult(r)
        default:
            return m
        }
    }

    /// What happened to the connection towards the coordinator since the last call
    /// (never blocks): why a worker cannot get in, told within a second of it happening.
    public func connectionEvents() -> [ConnectionEvent] { (try? monitor?.take()) ?? [] }

    /// Closes the sockets, giving a goodbye still queued up to a second to leave
    /// (the process may exit right after, before any deinit would run).
    public func close() {
        dealer?.setLinger(milliseconds: 1000)
        monitor = nil
        dealer = nil; sub = nil
    }
}

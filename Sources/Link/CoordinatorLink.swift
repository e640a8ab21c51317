import Core
import Foundation
import Transport
import Wire

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
    private var mapped: [PeerID: (offer: PayloadStore, view: SharedView)] = [:]
    /// The hellos of the last `receive`, until a welcome answers them (the machine answers a
    /// hello as it reads it): nothing a stranger offers is opened before the coordinator has
    /// checked who it is, and a hello left unanswered is forgotten at the next `receive`.
    private var offered: [PeerID: (hello: Hello, address: String)] = [:]
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
    /// Where each welcomed peer's hello came from: an IP address, or "this machine" over ipc://.
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
    public var sockets: [ZMQSocket] { [router] + (zap.map { [$0.socket] } ?? []) }

    /// Every message waiting now (up to `timeoutMs` for the first), with its
    /// sender. A hello's shared-memory offer is mapped here; a train result's
    /// gradients are read where the worker wrote them.
    public func receive(timeoutMs: Int) throws -> [(PeerID, Incoming)] {
        let ready = try zmqPoll(sockets, timeoutMs: timeoutMs)
        if ready.count > 1, ready[1] { try answerHandshakes() }
        try reportKeylessPeers()
        offered = [:]
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
                    // Opened (and its address kept) only once the coordinator welcomes the peer.
                    offered[peer] = (h, frames[1].peerAddress ?? "this machine")
                case .trainResult(let r):
                    if let p = r.ref {
                        guard let s = mapped[peer] else {
                            throw WireError.invalid("train result in shared memory that was never offered")
                        }
                        do {
                            var resolved = r
                            (resolved.gradTheta, resolved.gradAlpha) = try s.view.floats(p)
                            resolved.ref = nil
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
        guard let offer = h.store else {
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
            if let (h, address) = offered.removeValue(forKey: peer) {
                map(h, from: peer)
                addresses[peer] = address
            }
            w.store = mapped[peer] != nil ? weightsArena?.offer : nil
            m = .welcome(w)
        // A refusal answers an earlier message, perhaps one before a hello of the same batch:
        // that hello's offer stays (`offered` lives for one batch; a welcome takes it).
        case .refuse: mapped[peer] = nil
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
                    runId: runId, message: .weights(Weights(version: w.version, theta: [], alpha: [], ref: payload))
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

    /// Lets go of what is kept for a peer the machine dropped: the mapping of its file, its address.
    public func forget(_ peer: PeerID) {
        mapped[peer] = nil
        addresses[peer] = nil
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

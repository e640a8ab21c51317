import CZeroMQ

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// An error from libzmq, naming the operation and endpoint.
public struct TransportError: Error, CustomStringConvertible {
    public let description: String
    init(_ what: String) { description = "\(what): \(String(cString: zmq_strerror(mt_zmq_errno())))" }
}

/// A ZeroMQ context. One per process; sockets keep it alive.
public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    public init() { handle = zmq_ctx_new() }
    deinit { zmq_ctx_term(handle) }
}

/// A ZeroMQ socket that moves multipart frames and nothing else: it knows no
/// message types, versions or training. Not thread-safe (ZeroMQ sockets never are).
public final class ZMQSocket {
    public enum Kind {
        case router, dealer, pub, sub, rep, pair
        var raw: Int32 {
            switch self {
            case .router: return ZMQ_ROUTER
            case .dealer: return ZMQ_DEALER
            case .pub: return ZMQ_PUB
            case .sub: return ZMQ_SUB
            case .rep: return ZMQ_REP
            case .pair: return ZMQ_PAIR
            }
        }
    }

    let context: ZMQContext
    let handle: UnsafeMutableRawPointer

    public init(_ context: ZMQContext, _ kind: Kind) throws {
        self.context = context
        guard let h = zmq_socket(context.handle, kind.raw) else { throw TransportError("zmq_socket") }
        handle = h
        var linger: Int32 = 0
        zmq_setsockopt(handle, ZMQ_LINGER, &linger, MemoryLayout<Int32>.size)
    }

    deinit { zmq_close(handle) }

    /// How long closing the socket may wait for queued messages to leave (0 by default: they are dropped).
    public func setLinger(milliseconds: Int32) {
        var linger = milliseconds
        zmq_setsockopt(handle, ZMQ_LINGER, &linger, MemoryLayout<Int32>.size)
    }

    /// Frames larger than this end the connection that sent them, before they
    /// are buffered (ZMQ_MAXMSGSIZE); set before binding or connecting.
    public func setMaxMessageSize(_ bytes: Int) {
        var v = Int64(bytes)
        zmq_setsockopt(handle, ZMQ_MAXMSGSIZE, &v, MemoryLayout<Int64>.size)
    }

    /// This socket's identity towards a ROUTER (ZMQ_ROUTING_ID), instead of the
    /// one the ROUTER would number; set before connecting.
    public func setRoutingId(_ id: [UInt8]) {
        _ = id.withUnsafeBytes { zmq_setsockopt(handle, ZMQ_ROUTING_ID, $0.baseAddress, id.count) }
    }

    /// A ROUTER: a new connection with an identity already in use takes it
    /// over instead of being refused (ZMQ_ROUTER_HANDOVER).
    public func setRouterHandover(_ on: Bool) {
        var v: Int32 = on ? 1 : 0
        zmq_setsockopt(handle, ZMQ_ROUTER_HANDOVER, &v, MemoryLayout<Int32>.size)
    }

    /// Makes this socket a CURVE server with `secretKey` (Z85); set before binding.
    /// Every peer must then complete a CURVE handshake, and the ZAP handler of
    /// this socket's context (`ZAPHandler`) decides which client keys get in.
    public func setCurveServer(secretKey: String) throws {
        var on: Int32 = 1
        guard zmq_setsockopt(handle, ZMQ_CURVE_SERVER, &on, MemoryLayout<Int32>.size) == 0,
            zmq_setsockopt(handle, ZMQ_CURVE_SECRETKEY, secretKey, secretKey.utf8.count) == 0,
            zmq_setsockopt(handle, ZMQ_ZAP_DOMAIN, "metatrain", 9) == 0
        else {
            throw TransportError("CURVE server options (is libzmq built with CURVE?)")
        }
    }

    /// Makes this socket a CURVE client of the server with public key
    /// `serverKey`, as the key pair (`publicKey`, `secretKey`); all Z85. Set before connecting.
    public func setCurveClient(serverKey: String, publicKey: String, secretKey: String) throws {
        guard zmq_setsockopt(handle, ZMQ_CURVE_SERVERKEY, serverKey, serverKey.utf8.count) == 0,
            zmq_setsockopt(handle, ZMQ_CURVE_PUBLICKEY, publicKey, publicKey.utf8.count) == 0,
            zmq_setsockopt(handle, ZMQ_CURVE_SECRETKEY, secretKey, secretKey.utf8.count) == 0
        else {
            throw TransportError("CURVE client options (a key is not 40 Z85 characters?)")
        }
    }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw TransportError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw TransportError("connect \(endpoint)") }
    }

    /// The endpoint actually bound (useful after binding port 0 / "*").
    public var lastEndpoint: String {
        var buf = [CChar](repeating: 0, count: 256)
        var size = buf.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buf, &size)
        return cString(buf)
    }

    public func subscribe(_ prefix: [UInt8] = []) throws {
        let rc = prefix.withUnsafeBytes { zmq_setsockopt(handle, ZMQ_SUBSCRIBE, $0.baseAddress, prefix.count) }
        guard rc == 0 else { throw TransportError("subscribe") }
    }

    /// Sends all frames as one multipart message.
    public func send(_ frames: [[UInt8]]) throws {
        for (i, f) in frames.enumerated() {
            let flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            let rc = f.withUnsafeBytes { zmq_send(handle, $0.baseAddress, f.count, flags) }
            guard rc >= 0 else { throw TransportError("send") }
        }
    }

    /// Sends `head` frames (e.g. a ROUTER peer identity) and then `body` as the
    /// last frame, without copying the body: libzmq shares its buffer, so one
    /// OutgoingFrame can go to many peers.
    public func send(_ head: [[UInt8]], _ body: OutgoingFrame) throws {
        _ = try send(head, body, wait: true)
    }

    /// As `send(_:_:)`; with `wait` false it never blocks: where the message
    /// cannot be queued now (a DEALER with no connected peer, a full queue) it
    /// is dropped and the call returns false.
    public func send(_ head: [[UInt8]], _ body: OutgoingFrame, wait: Bool) throws -> Bool {
        let more = ZMQ_SNDMORE | (wait ? 0 : ZMQ_DONTWAIT), last = wait ? 0 : ZMQ_DONTWAIT
        for f in head {
            let rc = f.withUnsafeBytes { zmq_send(handle, $0.baseAddress, f.count, more) }
            if rc < 0 && mt_zmq_errno() == mt_zmq_eagain() && !wait { return false }
            guard rc >= 0 else { throw TransportError("send") }
        }
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        guard zmq_msg_copy(&msg, body.msg) == 0 else { zmq_msg_close(&msg); throw TransportError("send (copy)") }
        if zmq_msg_send(&msg, handle, last) < 0 {
            zmq_msg_close(&msg)
            if mt_zmq_errno() == mt_zmq_eagain() && !wait { return false }
            throw TransportError("send")
        }
        return true
    }

    /// Receives one multipart message, or nil if none arrives within `timeoutMs` (−1 = wait).
    public func receive(timeoutMs: Int = -1) throws -> [[UInt8]]? {
        try receiveFrames(timeoutMs: timeoutMs)?.map { Array($0.bytes) }
    }

    /// Like `receive`, but each frame stays in libzmq's buffer (no copy) until released.
    public func receiveFrames(timeoutMs: Int = -1) throws -> [Frame]? {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        let n = zmq_poll(&item, 1, timeoutMs)
        if n < 0 {
            if mt_zmq_errno() == mt_zmq_eintr() { return nil }
            throw TransportError("poll")
        }
        if n == 0 { return nil }
        var frames: [Frame] = []
        while true {
            let f = Frame()
            guard zmq_msg_recv(f.msg, handle, 0) >= 0 else { throw TransportError("receive") }
            frames.append(f)
            if zmq_msg_more(f.msg) == 0 { break }
        }
        return frames
    }
}

/// A received frame. Its bytes live in libzmq's message buffer, which is
/// released with the Frame: large frames are read where they landed.
public final class Frame: @unchecked Sendable {
    let msg: UnsafeMutablePointer<zmq_msg_t>
    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }
    deinit { zmq_msg_close(msg); msg.deallocate() }
    /// The address of the peer that sent the frame ("Peer-Address": an IP for tcp://,
    /// nil for ipc:// and inproc://).
    public var peerAddress: String? {
        guard let p = zmq_msg_gets(msg, "Peer-Address") else { return nil }
        let s = String(cString: p)
        return s.isEmpty ? nil : s
    }
    /// The frame's bytes; valid while the Frame is alive.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }
}

/// A frame to send, filled in place (no intermediate array) and sent any
/// number of times without copying its bytes.
public final class OutgoingFrame: @unchecked Sendable {
    let msg: UnsafeMutablePointer<zmq_msg_t>
    public init(count: Int) {
        msg = .allocate(capacity: 1)
        zmq_msg_init_size(msg, count)
    }
    deinit { zmq_msg_close(msg); msg.deallocate() }
    /// Write the frame's content here before the first send.
    public var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }
    public var count: Int { zmq_msg_size(msg) }
}

/// libzmq's version, e.g. (4, 3, 4).
public func zmqVersion() -> (Int, Int, Int) {
    var a: Int32 = 0, b: Int32 = 0, c: Int32 = 0
    zmq_version(&a, &b, &c)
    return (Int(a), Int(b), Int(c))
}

/// Whether libzmq was built with CURVE security.
public func zmqHasCurve() -> Bool { zmq_has("curve") != 0 }

/// A CURVE key pair in Z85 text (40 characters each).
public struct CurveKeyPair: Sendable {
    public let publicKey: String
    public let secretKey: String

    /// A fresh key pair from libzmq (libsodium's random source).
    public static func generate() throws -> CurveKeyPair {
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else {
            throw TransportError("zmq_curve_keypair (is libzmq built with CURVE?)")
        }
        return CurveKeyPair(publicKey: cString(pub), secretKey: cString(sec))
    }

    /// The pair of a secret key (its public key derived from it).
    public init(secretKey: String) throws {
        guard secretKey.utf8.count == 40 else {
            throw TransportError("a CURVE secret key is 40 Z85 characters, got \(secretKey.utf8.count)")
        }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { throw TransportError("not a Z85 CURVE secret key") }
        self.init(publicKey: cString(pub), secretKey: secretKey)
    }

    init(publicKey: String, secretKey: String) { self.publicKey = publicKey; self.secretKey = secretKey }

    /// Z85 text of 32 raw key bytes (what a ZAP request carries).
    public static func z85(_ raw: [UInt8]) -> String? {
        guard raw.count == 32 else { return nil }
        var out = [CChar](repeating: 0, count: 41)
        guard zmq_z85_encode(&out, raw, 32) != nil else { return nil }
        return cString(out)
    }
}

/// The ZAP handler (ZeroMQ's authentication protocol, RFC 27) of a context:
/// a REP socket at inproc://zeromq.zap.01 that the CURVE server sockets of the
/// same context ask about each client key. The owner polls `socket` and calls
/// `answer` with its decision; this type only speaks ZAP.
public final class ZAPHandler {
    public let socket: ZMQSocket
    public init(_ ctx: ZMQContext) throws {
        socket = try ZMQSocket(ctx, .rep)
        try socket.bind("inproc://zeromq.zap.01")
    }

    /// Answers every waiting request; `allow` gets the client's public key (Z85) and its address.
    public func answer(_ allow: (_ key: String, _ address: String) -> Bool) throws {
        while let f = try socket.receive(timeoutMs: 0) {
            // version, request id, domain, address, routing id, mechanism, credentials...
            guard f.count >= 6 else {
                try socket.send([Array("1.0".utf8), [], Array("400".utf8), Array("malformed".utf8), [], []]); continue
            }
            let id = f[1], address = String(decoding: f[3], as: UTF8.self),
                mechanism = String(decoding: f[5], as: UTF8.self)
            var ok = false
            if mechanism == "CURVE", f.count >= 7, let key = CurveKeyPair.z85(f[6]) { ok = allow(key, address) }
            try socket.send([
                Array("1.0".utf8), id, Array((ok ? "200" : "400").utf8),
                Array((ok ? "OK" : "not an authorized key").utf8),
                [], []
            ])
        }
    }
}

/// A NUL-terminated C buffer as a String.
func cString(_ buf: [CChar]) -> String {
    let bytes = buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// Waits until any of the sockets has a message or the timeout passes;
/// returns which ones are readable.
public func zmqPoll(_ sockets: [ZMQSocket], timeoutMs: Int) throws -> [Bool] {
    var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
    let n = zmq_poll(&items, Int32(items.count), timeoutMs)
    if n < 0 {
        if mt_zmq_errno() == mt_zmq_eintr() { return sockets.map { _ in false } }
        throw TransportError("poll")
    }
    return items.map { ($0.revents & Int16(ZMQ_POLLIN)) != 0 }
}

/// What a socket's monitor (zmq_socket_monitor) reports about its connections: the
/// handshake events that tell a peer why it cannot get in, and a refused connect.
public enum ConnectionEvent: Equatable, Sendable {
    /// A TCP connect failed and will be retried (nothing listens there, or it is unreachable).
    case connectRetried(address: String)
    /// The ZMTP and security handshake completed.
    case handshakeSucceeded(address: String)
    /// The peer's security mechanism differs from ours (one side uses CURVE keys, the other none).
    case mechanismMismatch(address: String)
    /// Another protocol error during the handshake (`code`: libzmq's ZMQ_PROTOCOL_ERROR_*).
    case protocolError(address: String, code: UInt32)
    /// The authenticator (ZAP) refused us, with its status code (400: the key is not let in).
    case authenticationFailed(address: String, status: UInt32)
    /// The handshake failed without a reason (e.g. a CURVE message that did not decrypt).
    case handshakeFailed(address: String)
    /// An established or half-made connection closed.
    case disconnected(address: String)
}

/// A socket's monitor: an inproc PAIR socket that receives the events of `ConnectionEvent`.
public final class ZMQMonitor {
    public let socket: ZMQSocket
    private static let counter = MonitorCounter()

    /// Starts monitoring `watched` (set up before it binds or connects).
    public init(_ ctx: ZMQContext, watching watched: ZMQSocket) throws {
        let address = "inproc://metatrain-monitor-\(ZMQMonitor.counter.next())"
        let events =
            ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
            | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_DISCONNECTED
        guard zmq_socket_monitor(watched.handle, address, Int32(events)) == 0 else {
            throw TransportError("zmq_socket_monitor")
        }
        socket = try ZMQSocket(ctx, .pair)
        try socket.connect(address)
    }

    /// Every event waiting now (never blocks).
    public func take() throws -> [ConnectionEvent] {
        var out: [ConnectionEvent] = []
        while let frames = try socket.receive(timeoutMs: 0) {
            guard frames.count == 2, frames[0].count >= 6 else { continue }
            let f = frames[0]
            let event = UInt16(f[0]) | UInt16(f[1]) << 8
            let value = UInt32(f[2]) | UInt32(f[3]) << 8 | UInt32(f[4]) << 16 | UInt32(f[5]) << 24
            let address = String(decoding: frames[1], as: UTF8.self)
            switch Int32(event) {
            case ZMQ_EVENT_CONNECT_RETRIED: out.append(.connectRetried(address: address))
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: out.append(.handshakeSucceeded(address: address))
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                out.append(
                    value == UInt32(ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
                        ? .mechanismMismatch(address: address) : .protocolError(address: address, code: value))
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: out.append(.authenticationFailed(address: address, status: value))
            case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL: out.append(.handshakeFailed(address: address))
            case ZMQ_EVENT_DISCONNECTED: out.append(.disconnected(address: address))
            default: break
            }
        }
        return out
    }
}

final class MonitorCounter: @unchecked Sendable {
    private var n = 0
    private var lock = pthread_mutex_t()
    init() { pthread_mutex_init(&lock, nil) }
    func next() -> Int {
        pthread_mutex_lock(&lock); defer { pthread_mutex_unlock(&lock) }
        n += 1
        return n
    }
}

/// A message with the header every frame carries: magic "MTRN", the protocol
/// version (u16), the message type (u8) and the run id (string), then the body.
public struct Envelope: Equatable, Sendable {
    public static let protocolVersion: UInt16 = 7
    static let magic: [UInt8] = Array("MTRN".utf8)

    public var protocolVersion: UInt16
    public var runId: String
    public var message: Message

    public init(runId: String, message: Message, protocolVersion: UInt16 = Envelope.protocolVersion) {
        self.runId = runId; self.message = message; self.protocolVersion = protocolVersion
    }

    /// The frame's bytes.
    public func encode() -> [UInt8] {
        var w = ByteWriter(ArraySink(capacity: 64))
        write(to: &w)
        return w.sink.bytes
    }

    /// The size of the encoded frame, to size a buffer for `encode(into:)`.
    public var encodedCount: Int {
        var w = ByteWriter(CountingSink())
        write(to: &w)
        return w.sink.count
    }

    /// Writes the same bytes as `encode()` into `buffer`, which must be exactly
    /// `encodedCount` long (e.g. a ZeroMQ message: one copy of a 1.5 MB payload).
    public func encode(into buffer: UnsafeMutableRawBufferPointer) {
        var w = ByteWriter(RawSink(buffer))
        write(to: &w)
        precondition(
            w.sink.position == buffer.count, "frame of \(buffer.count) bytes for a \(w.sink.position)-byte message")
    }

    func write<S: ByteSink>(to w: inout ByteWriter<S>) {
        for b in Envelope.magic { w.u8(b) }
        w.u16(protocolVersion)
        w.u8(Envelope.typeCode(message))
        w.string(runId)
        switch message {
        case .hello(let h):
            w.string(h.workerName); w.string(h.datasetFingerprint)
            w.string(h.hardware.cpuModel); w.string(h.hardware.blasCore); w.int(h.procs)
            w.offer(h.store)
        case .welcome(let x):
            w.string(x.configJSON); w.int(x.version)
            w.offer(x.store)
        case .refuse(let reason, let detail): w.u8(reason.rawValue); w.string(detail)
        case .ready, .fetchWeights, .heartbeat: break
        case .work(let u):
            w.int(u.id); w.u8(u.kind.rawValue); w.int(u.version)
            w.u32(UInt32(u.leaves.count))
            for leaf in u.leaves { w.ints(leaf) }
        case .trainResult(let r):
            w.int(r.unitId); w.int(r.version); w.payload(r.gradTheta, r.gradAlpha, r.ref); w.f64(r.lossSum);
            w.int(r.tasks)
        case .evalResult(let r):
            w.int(r.unitId); w.int(r.version); w.doubles(r.sums); w.ints(r.queries); w.doubles(r.losses)
        case .weights(let x): w.int(x.version); w.payload(x.theta, x.alpha, x.ref)
        case .shutdown(let r), .goodbye(let r): w.string(r)
        case .unitFailed(let id, let r): w.int(id); w.string(r)
        }
    }

    /// Reads only the header: enough to refuse a peer that speaks another version.
    public static func peekHeader(_ bytes: [UInt8]) throws -> (protocolVersion: UInt16, type: UInt8, runId: String) {
        try peekHeader(ByteBlock.copy(of: bytes))
    }

    static func peekHeader(_ block: ByteBlock) throws -> (protocolVersion: UInt16, type: UInt8, runId: String) {
        var r = ByteReader(block)
        guard block.bytes.count >= 4, block.bytes[0..<4].elementsEqual(magic) else { throw WireError.badMagic }
        _ = try r.take(4, "magic")
        let v = try r.u16("protocol version"), t = try r.u8("type")
        return (v, t, try r.string("run id"))
    }

    /// Decodes a frame. A frame of another protocol version throws `.protocolMismatch`.
    public static func decode(_ bytes: [UInt8]) throws -> Envelope { try decode(ByteBlock.copy(of: bytes)) }

    /// Decodes a frame in place: float payloads (gradients, weights) are views
    /// into `block`, which they keep alive.
    public static func decode(_ block: ByteBlock) throws -> Envelope {
        let (v, t, runId) = try peekHeader(block)
        guard v == protocolVersion else { throw WireError.protocolMismatch(theirs: v) }
        var r = ByteReader(block)
        _ = try r.take(4 + 2 + 1 + 4 + runId.utf8.count, "header")
        let m: Message
        guard let kind = MessageKind(rawValue: t) else { throw WireError.unknownType(t) }
        switch kind {
        case .hello:
            let name = try r.string("worker name"), fingerprint = try r.string("fingerprint")
            let hardware = Hardware(cpuModel: try r.string("cpu model"), blasCore: try r.string("OpenBLAS core"))
            let procs = try r.int("procs")
            guard procs >= 1, procs <= Hello.maxProcs else { throw WireError.invalid("hello with \(procs) processes") }
            for (what, value, most) in [
                ("worker name", name, 256), ("dataset fingerprint", fingerprint, 128),
                ("CPU model", hardware.cpuModel, 256), ("OpenBLAS core", hardware.blasCore, 64)
            ]
            where value.utf8.count > most {
                throw WireError.invalid("hello with a \(what) of \(value.utf8.count) bytes (at most \(most))")
            }
            m = .hello(
                Hello(
                    workerName: name, datasetFingerprint: fingerprint, hardware: hardware, procs: procs,
                    store: try r.offer()))
        case .welcome:
            m = .welcome(
                Welcome(configJSON: try r.string("config"), version: try r.int("version"), store: try r.offer()))
        case .refuse:
            let code = try r.u8("refusal reason")
            guard let reason = RefusalReason(rawValue: code) else {
                throw WireError.invalid("unknown refusal reason \(code)")
            }
            m = .refuse(reason, detail: try r.string("detail"))
        case .ready: m = .ready
        case .work:
            let id = try r.int("unit id")
            guard let kind = UnitKind(rawValue: try r.u8("unit kind")) else {
                throw WireError.invalid("unknown unit kind")
            }
            let version = try r.int("version"), n = Int(try r.u32("leaf count"))
            guard n >= 1, n <= r.remaining / 4 else { throw WireError.invalid("work unit of \(n) leaves") }
            var leaves: [[Int]] = []
            for _ in 0..<n { leaves.append(try r.ints("episodes")) }
            m = .work(WorkUnit(id: id, kind: kind, version: version, leaves: leaves))
        case .trainResult:
            let id = try r.int("unit id"), ver = try r.int("version")
            let (theta, alpha, ref) = try r.payload("grad theta", "grad alpha")
            m = .trainResult(
                TrainResult(
                    unitId: id, version: ver, gradTheta: theta, gradAlpha: alpha, lossSum: try r.f64("loss"),
                    tasks: try r.int("tasks"), ref: ref))
        case .evalResult:
            let id = try r.int("unit id"), ver = try r.int("version"), sums = try r.doubles("sums"),
                q = try r.ints("queries")
            let losses = try r.doubles("losses")
            guard sums.count == 6 * q.count, losses.count == q.count else {
                throw WireError.invalid("eval sums or losses do not match episode count")
            }
            m = .evalResult(EvalResult(unitId: id, version: ver, sums: sums, queries: q, losses: losses))
        case .fetchWeights: m = .fetchWeights
        case .weights:
            let ver = try r.int("version")
            let (theta, alpha, ref) = try r.payload("theta", "alpha")
            m = .weights(Weights(version: ver, theta: theta, alpha: alpha, ref: ref))
        case .heartbeat: m = .heartbeat
        case .shutdown: m = .shutdown(reason: try r.string("reason"))
        case .goodbye: m = .goodbye(reason: try r.string("reason"))
        case .unitFailed: m = .unitFailed(unitId: try r.int("unit id"), reason: try r.string("reason"))
        }
        guard r.remaining == 0 else { throw WireError.invalid("\(r.remaining) trailing bytes after \(m.typeName)") }
        return Envelope(runId: runId, message: m, protocolVersion: v)
    }

    static func typeCode(_ m: Message) -> UInt8 { m.kind.rawValue }

    /// The largest frame a run whose weights or results carry `floats` float32 values may
    /// send (ZMQ_MAXMSGSIZE on the receiving sockets): the floats inline plus 1 MiB for
    /// everything else (headers, unit lists, eval sums). A larger frame ends its connection
    /// before it is buffered.
    public static func frameLimit(floats: Int) -> Int { 4 * floats + (1 << 20) }
}

extension ByteWriter {
    /// bool present, then string path and string token.
    mutating func offer(_ o: PayloadStore?) {
        bool(o != nil)
        if let o { string(o.path); string(o.token) }
    }

    /// u8 place: 0 and two float runs in the message, or 1 and where they lie in shared memory.
    mutating func payload(_ theta: Floats, _ alpha: Floats, _ ref: PayloadRef?) {
        if let p = ref {
            u8(1); int(p.offset); u32(UInt32(p.thetaCount)); u32(UInt32(p.alphaCount))
        } else {
            u8(0); floats(theta); floats(alpha)
        }
    }
}

extension ByteReader {
    mutating func offer() throws -> PayloadStore? {
        try bool("shared memory offered")
            ? PayloadStore(path: try string("shared memory path"), token: try string("shared memory token")) : nil
    }

    mutating func payload(_ theta: String, _ alpha: String) throws -> (Floats, Floats, PayloadRef?) {
        switch try u8("payload place") {
        case 0: return (try floats(theta), try floats(alpha), nil)
        case 1:
            return (
                [], [],
                PayloadRef(
                    offset: try int("shared offset"), thetaCount: Int(try u32("shared \(theta) count")),
                    alphaCount: Int(try u32("shared \(alpha) count")))
            )
        default: throw WireError.invalid("unknown payload place")
        }
    }
}

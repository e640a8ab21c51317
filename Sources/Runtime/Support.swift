import CLinux
import Coordination
import Core
import ExperimentConfig
import Foundation
import Kernels
import Training
import Transport
import Wire

/// Monotonic seconds, for state machines' timeouts.
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// The CPU's model name from /proc/cpuinfo ("" where there is none).
func cpuModelName() -> String {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "" }
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        if let colon = line.firstIndex(of: ":") {
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }
    return ""
}

/// Keeps freed message buffers in the process for reuse. ZeroMQ's I/O thread
/// allocates every received 1.5 MB gradient or weight message afresh; with
/// glibc's default thresholds those buffers are often mapped fresh or their
/// pages trimmed on free, and the kernel then faults in and zeroes some 370
/// pages per message (measured: up to 1,600 page faults per meta-iteration,
/// on the path from the last result to the next broadcast). Fixed thresholds
/// keep the pages mapped: a process's heap stays at its peak size instead.
public func keepLargeBuffersMapped() {
    _ = metatrain_keep_large_buffers(32 << 20, 256 << 20) // 32 MB: the largest mmap threshold glibc allows
}

/// Worker processes known to have ended, reported from any thread (e.g. a
/// process's termination handler) and taken by the coordinator's loop.
public final class EndedWorkers: @unchecked Sendable {
    private let lock = NSLock()
    private var ended: [(name: String, reason: String, crashed: Bool)] = []
    public init() {}
    /// `crashed`: the process died of a fault (SIGILL, SIGSEGV, …) rather than being killed or exiting.
    public func report(name: String, reason: String, crashed: Bool = false) {
        lock.lock(); ended.append((name, reason, crashed)); lock.unlock()
    }
    func take() -> [(name: String, reason: String, crashed: Bool)] {
        lock.lock(); defer { lock.unlock() }
        let out = ended
        ended = []
        return out
    }
}

/// Set by SIGINT/SIGTERM; the shells poll it between messages.
public final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    private var sources: [DispatchSourceSignal] = []
    public init() {}
    public var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    public func set() { lock.lock(); value = true; lock.unlock() }

    /// Routes SIGINT and SIGTERM to this flag instead of killing the process.
    public func installSignalHandlers() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler { [weak self] in self?.set() }
            s.resume()
            sources.append(s)
        }
    }
}

/// The PUB endpoint that goes with a ROUTER endpoint: tcp port + 1, or the ipc path + ".pub".
public func publishEndpoint(for endpoint: String) throws -> String {
    if endpoint.hasPrefix("ipc://") { return endpoint + ".pub" }
    guard endpoint.hasPrefix("tcp://"), let colon = endpoint.lastIndex(of: ":"),
        let port = Int(endpoint[endpoint.index(after: colon)...]), port > 0, port < 65535
    else {
        throw MetatrainError(
            "endpoint '\(endpoint)' must be tcp://HOST:PORT (PORT+1 carries weight broadcasts) or ipc://PATH")
    }
    return String(endpoint[..<colon]) + ":\(port + 1)"
}

extension Floats {
    /// A view of a parameter or gradient buffer, to encode it without an intermediate copy.
    init(viewing b: FloatBuffer) {
        self.init(viewing: ByteBlock(view: UnsafeRawBufferPointer(b.buffer), owner: b))
    }
}

extension WorkerMachine {
    /// Heartbeats and liveness as the run's configuration says (`cluster.*`).
    mutating func follow(_ c: Config.Cluster) {
        heartbeatInterval = c.heartbeatS
        livenessTimeout = c.silenceS
    }
}

extension SharedView {
    /// Maps the file a hello offers (see `SharedArena`).
    convenience init(_ offer: SharedOffer) throws {
        let hex = Array(offer.token.utf8)
        guard hex.count == 32 else { throw SharedMemoryError("a token of \(hex.count) hex digits, expected 32") }
        var token: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let b = UInt8(String(decoding: hex[i..<(i + 2)], as: UTF8.self), radix: 16) else {
                throw SharedMemoryError("the token is not hex")
            }
            token.append(b)
        }
        try self.init(path: offer.path, token: token)
    }

    /// The two float runs a payload points to, read in place (the views keep this mapping alive).
    func floats(_ p: SharedPayload) throws -> (Floats, Floats) {
        let raw = try bytes(offset: p.offset, count: p.byteCount)
        return (
            Floats(
                viewing: ByteBlock(view: UnsafeRawBufferPointer(rebasing: raw[0..<(4 * p.thetaCount)]), owner: self)),
            Floats(viewing: ByteBlock(view: UnsafeRawBufferPointer(rebasing: raw[(4 * p.thetaCount)...]), owner: self))
        )
    }
}

extension SharedArena {
    /// This arena as the offer a hello or welcome carries.
    var offer: SharedOffer { SharedOffer(path: path, token: token.map { String(format: "%02x", $0) }.joined()) }

    /// Writes θ then α back to back into `space` (from `allocate` or `slot`) and says where they lie.
    static func put(_ theta: Floats, _ alpha: Floats, into space: (offset: Int, memory: UnsafeMutableRawBufferPointer))
        -> SharedPayload
    {
        let p = SharedPayload(offset: space.offset, thetaCount: theta.count, alphaCount: alpha.count)
        precondition(space.memory.count >= p.byteCount, "\(space.memory.count) bytes for a payload of \(p.byteCount)")
        let floats = space.memory.bindMemory(to: Float.self).baseAddress!
        theta.copy(to: floats)
        alpha.copy(to: floats + theta.count)
        return p
    }
}

/// A line said at most once per `every` seconds: `due` answers how many
/// occurrences the line now stands for (this one and those held back), or nil
/// while it must stay quiet.
struct RateLimitedLine {
    let every: Double
    private var last: Double?
    private var held = 0
    init(every: Double) { self.every = every }
    mutating func due(now: Double) -> Int? {
        held += 1
        if let last, now - last < every { return nil }
        last = now
        defer { held = 0 }
        return held
    }
}

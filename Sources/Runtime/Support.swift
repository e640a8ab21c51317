import CLinux
import Coordination
import Core
import ExperimentConfig
import Foundation
import Kernels
import Link
import Training
import Transport
import Wire

/// The CPU's model name from /proc/cpuinfo ("" where there is none).
func cpuModelName() -> String { BLAS.cpuInfo("model name") ?? "" }

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

import Foundation

/// Worker processes started by `train` (its host agent) or by a host agent
/// (its compute processes). A worker that dies while the run goes on (killed,
/// out of memory, crashed) is reported to the coordinator, which re-queues its
/// units at once instead of waiting for the worker timeout, and is started again
/// under a new name (`local-2`, then `local-2.1`, …), at most `maxRestarts` times
/// per slot so that a worker that cannot start does not loop.
public final class LocalWorkers: @unchecked Sendable {
    public let ended = EndedWorkers()
    /// Signals that mean the process faulted (a trap, a bad access), not that someone killed it:
    /// a unit whose processes die of these twice stops the run (see `CoordinatorMachine.onWorkerGone`).
    static let faults: Set<Int32> = [SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS]
    public let maxRestarts = 3
    private let lock = NSLock()
    private let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    private let data: String, naming: (Int, Int) -> String, extra: (Int) -> [String]
    private var endpoint = ""
    private var processes: [Process] = []
    private var restarts: [Int: Int] = [:] // by slot
    private var slots: [String: Int] = [:] // by worker name
    private var stopping = false
    private var slotCount = 0
    private var exhausted: Set<Int> = [] // slots whose last start ended and that may not start again
    private var lastFailure = ""

    /// Workers are named `name(slot, restart)` (by default `local-2`, then
    /// `local-2.1`, …) and run `worker --connect ENDPOINT --data DATA --name NAME`
    /// with `extra(slot)`.
    public init(
        data: String,
        name: @escaping (Int, Int) -> String = { slot, restart in "local-\(slot)" + (restart == 0 ? "" : ".\(restart)")
        },
        extra: @escaping (Int) -> [String] = { _ in [] }
    ) {
        self.data = data; self.naming = name; self.extra = extra
    }

    /// Starts workers 1...n, connecting to `endpoint`.
    public func startAll(_ n: Int, endpoint: String) {
        lock.lock(); self.endpoint = endpoint; slotCount = n; lock.unlock()
        for slot in 1...n { start(slot: slot) }
    }

    func workerName(slot: Int, restart: Int) -> String { naming(slot, restart) }

    /// Starts the worker of `slot` (1-based); returns false if it could not be started.
    @discardableResult
    func start(slot: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return false }
        let restart = restarts[slot, default: 0]
        let name = workerName(slot: slot, restart: restart)
        slots[name] = slot
        let p = Process()
        p.executableURL = exe
        // A working directory this user cannot enter (e.g. a worker started as another user from
        // a private directory) would make every start fail: start from / then (paths are absolute).
        if access(FileManager.default.currentDirectoryPath, X_OK) != 0 {
            p.currentDirectoryURL = URL(fileURLWithPath: "/")
        }
        p.arguments =
            ["worker", "--connect", endpoint, "--data", data, "--name", name, "--exit-with-parent", "\(getpid())"]
            + extra(slot)
        let ended = self.ended
        p.terminationHandler = { [weak self] p in
            // Exit 0 follows the coordinator's shutdown and 130 an interrupt: only other ends are failures.
            guard let self,
                p.terminationReason == .uncaughtSignal || (p.terminationStatus != 0 && p.terminationStatus != 130)
            else { return }
            self.lock.lock(); let stopping = self.stopping; self.lock.unlock()
            if stopping { return }
            let signal = p.terminationReason == .uncaughtSignal ? p.terminationStatus : nil
            let crashed = signal.map(LocalWorkers.faults.contains) ?? false
            let how =
                signal.map { crashed ? "crashed (signal \($0))" : "was killed by signal \($0)" }
                ?? "exited with status \(p.terminationStatus)"
            ended.report(name: name, reason: "(pid \(p.processIdentifier)) \(how)", crashed: crashed)
        }
        do { try p.run() } catch {
            // Said like an ended process, so that it is retried (and given up on) the same way.
            lastFailure = "could not be started: \(error.localizedDescription)"
            let ended = self.ended
            DispatchQueue.global().async {
                ended.report(name: name, reason: "could not be started (\(error.localizedDescription))")
            }
            return false
        }
        processes.append(p)
        return true
    }

    /// Starts the worker named `name` again, if its slot has restarts left; returns a line for the log.
    public func restart(_ name: String) -> String? {
        lock.lock()
        guard let slot = slots[name], name == workerName(slot: slot, restart: restarts[slot, default: 0]), !stopping
        else {
            lock.unlock(); return nil
        }
        let done = restarts[slot, default: 0]
        if done >= maxRestarts {
            exhausted.insert(slot)
            lock.unlock()
            return "worker \(name) ended; local worker \(slot) was started \(maxRestarts + 1) times, not again"
        }
        restarts[slot] = done + 1
        lock.unlock()
        return start(slot: slot)
            ? "started local worker \(slot) again as \(workerName(slot: slot, restart: done + 1))" : nil
    }

    /// Why no worker runs any more, once every slot has ended and may not start again (nil while one may).
    public var allGone: String? {
        lock.lock(); defer { lock.unlock() }
        guard slotCount > 0, exhausted.count == slotCount else { return nil }
        return "every local worker process ended, each started \(maxRestarts + 1) times"
            + (lastFailure.isEmpty ? "" : " (the last \(lastFailure))")
    }

    /// After the run: waits up to 5 s for the workers to follow the coordinator's
    /// shutdown, then terminates any left (none may outlive `train`).
    public func reap() {
        lock.lock(); stopping = true; let all = processes; lock.unlock()
        let deadline = Date().addingTimeInterval(5)
        for c in all {
            while c.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            if c.isRunning { c.terminate() }
        }
    }
}

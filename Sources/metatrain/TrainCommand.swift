import ArgumentParser
import Core
import Foundation
import Runtime

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Starts a coordinator and N local worker processes and waits for the run to end.",
        discussion: """
        Exits with the coordinator's status. Ctrl-C stops the coordinator and
        every worker; --resume continues from the newest checkpoint. A worker
        that dies mid-run is started again (at most 3 times per worker) and its
        units go to the others at once; the weights do not change.
        Example:
          metatrain train --data data/dataset.h5 --config configs/fomaml.yaml --run-dir runs/fomaml --workers 2
        """)

    @OptionGroup var options: MetaRunOptions
    @Option(help: "Number of local worker processes.") var workers = 2
    @Option(help: ArgumentHelp("Endpoint for the coordinator (default: a private ipc:// socket, the fastest for local workers; tcp://HOST:PORT also lets other machines' workers join, port 0 picks free ports).", valueName: "endpoint"))
    var bind: String?
    @Option(help: ArgumentHelp("Write every process's event timeline to DIR (coordinator.jsonl, worker-N.jsonl) when the run ends.", valueName: "dir"))
    var trace: String?
    @Flag(help: "Workers send results and take weights through the socket instead of through shared memory.")
    var noSharedMemory = false

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
    }

    func run() throws {
        let stop = StopFlag()
        stop.installSignalHandlers()
        let endpoint = bind ?? privateEndpoint()
        defer { removeSocketFiles(endpoint) }
        let shell = try options.makeShell(endpoint: endpoint, stop: stop, progress: ConsoleProgress())
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        let workers = LocalWorkers(data: options.data, traceDir: trace, socketOnly: noSharedMemory)
        shell.endedWorkers = workers.ended
        let n = self.workers
        shell.onBound = { endpoint in workers.startAll(n, endpoint: endpoint) }
        shell.onWorkerEnded = { name in workers.restart(name) }
        let code: Int32
        do { code = try shell.run() } catch { workers.reap(); throw error }
        workers.reap()
        if let trace { try shell.trace?.write(to: trace + "/coordinator.jsonl") }
        if code != 0 { removeSocketFiles(endpoint); Foundation.exit(code) }
    }
}

/// `train`'s worker processes. A worker that dies while the run goes on (killed,
/// out of memory, crashed) is reported to the coordinator, which re-queues its
/// units at once instead of waiting for the worker timeout, and is started again
/// under a new name (`local-2`, then `local-2.1`, …), at most `maxRestarts` times
/// per slot so that a worker that cannot start does not loop.
final class LocalWorkers: @unchecked Sendable {
    let ended = EndedWorkers()
    let maxRestarts = 3
    private let lock = NSLock()
    private let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    private let data: String, traceDir: String?, socketOnly: Bool
    private var endpoint = ""
    private var processes: [Process] = []
    private var restarts: [Int: Int] = [:]   // by slot
    private var slots: [String: Int] = [:]    // by worker name
    private var stopping = false

    init(data: String, traceDir: String?, socketOnly: Bool) {
        self.data = data; self.traceDir = traceDir; self.socketOnly = socketOnly
    }

    /// Starts workers 1...n, connecting to `endpoint`.
    func startAll(_ n: Int, endpoint: String) {
        lock.lock(); self.endpoint = endpoint; lock.unlock()
        for slot in 1...n { start(slot: slot) }
    }

    static func name(slot: Int, restart: Int) -> String { restart == 0 ? "local-\(slot)" : "local-\(slot).\(restart)" }

    /// Starts the worker of `slot` (1-based); returns false if it could not be started.
    @discardableResult
    func start(slot: Int) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { return false }
        let restart = restarts[slot, default: 0]
        let name = LocalWorkers.name(slot: slot, restart: restart)
        slots[name] = slot
        let p = Process()
        p.executableURL = exe
        p.arguments = ["worker", "--connect", endpoint, "--data", data, "--name", name, "--exit-with-parent", "\(getpid())"]
        if let traceDir { p.arguments! += ["--trace", traceDir + "/worker-\(name.dropFirst("local-".count)).jsonl"] }
        if socketOnly { p.arguments! += ["--no-shared-memory"] }
        let ended = self.ended
        p.terminationHandler = { [weak self] p in
            // Exit 0 follows the coordinator's shutdown and 130 an interrupt: only other ends are failures.
            guard let self, p.terminationReason == .uncaughtSignal || (p.terminationStatus != 0 && p.terminationStatus != 130) else { return }
            self.lock.lock(); let stopping = self.stopping; self.lock.unlock()
            if stopping { return }
            let how = p.terminationReason == .uncaughtSignal ? "was killed by signal \(p.terminationStatus)" : "exited with status \(p.terminationStatus)"
            ended.report(name: name, reason: "(pid \(p.processIdentifier)) \(how)")
        }
        do { try p.run() } catch {
            FileHandle.standardError.write(Data("could not start worker \(name): \(error)\n".utf8))
            return false
        }
        processes.append(p)
        return true
    }

    /// Starts the worker named `name` again, if its slot has restarts left; returns a line for the log.
    func restart(_ name: String) -> String? {
        lock.lock()
        guard let slot = slots[name], name == LocalWorkers.name(slot: slot, restart: restarts[slot, default: 0]), !stopping else {
            lock.unlock(); return nil
        }
        let done = restarts[slot, default: 0]
        if done >= maxRestarts {
            lock.unlock()
            return "worker \(name) ended; local worker \(slot) was started \(maxRestarts + 1) times, not again"
        }
        restarts[slot] = done + 1
        lock.unlock()
        return start(slot: slot) ? "started local worker \(slot) again as \(LocalWorkers.name(slot: slot, restart: done + 1))" : nil
    }

    /// After the run: waits up to 5 s for the workers to follow the coordinator's
    /// shutdown, then terminates any left (none may outlive `train`).
    func reap() {
        lock.lock(); stopping = true; let all = processes; lock.unlock()
        let deadline = Date().addingTimeInterval(5)
        for c in all {
            while c.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
            if c.isRunning { c.terminate() }
        }
    }
}

/// A Unix-domain (ipc://) endpoint private to this process, for local workers:
/// a 1.5 MB gradient costs less CPU over it than over TCP loopback, and on a
/// machine whose cores all run workers that CPU comes out of the workers' share.
func privateEndpoint() -> String {
    "ipc://" + NSTemporaryDirectory() + "metatrain-\(getpid()).sock"
}

/// Removes an ipc:// endpoint's socket files (ROUTER and PUB) once the run is over.
func removeSocketFiles(_ endpoint: String) {
    guard endpoint.hasPrefix("ipc://") else { return }
    let path = String(endpoint.dropFirst("ipc://".count))
    for p in [path, path + ".pub"] { unlink(p) }
}

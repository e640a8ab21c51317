import ArgumentParser
import Core
import Foundation
import Link
import Runtime

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Starts a coordinator and N local worker processes and waits for the run to end.",
        discussion: """
            Exits with the coordinator's status. The N workers run under one host
            agent (as `worker --procs N` does on every machine), which takes each
            weights version once and returns one summed gradient per block. Ctrl-C
            stops the coordinator and every worker; --resume continues from the
            newest checkpoint. A worker that dies mid-run is started again (at
            most 3 times per worker) and its units go to the others at once; the
            weights do not change.
            Example:
              metatrain train --data data/dataset.h5 --config configs/fomaml.yaml \\
                  --run-dir runs/fomaml --workers 2
            """)

    @OptionGroup var options: MetaRunOptions
    @Option(help: "Number of local worker processes.") var workers = 2
    @Option(
        help: ArgumentHelp(
            "Endpoint for the coordinator (default: a private ipc:// socket, the fastest for local workers; tcp://HOST:PORT also lets other machines' workers join, port 0 picks free ports).",
            valueName: "endpoint"))
    var bind: String?
    @Option(
        help: ArgumentHelp(
            "Write every process's event timeline to DIR (coordinator.jsonl, worker-N.jsonl, agents/local.jsonl) when the run ends.",
            valueName: "dir"))
    var trace: String?
    @Flag(help: "Workers send results and take weights through the socket instead of through shared memory.")
    var noSharedMemory = false
    @OptionGroup var security: SecurityOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
    }

    func run() throws {
        let stop = StopFlag()
        stop.installSignalHandlers()
        let endpoint = bind ?? privateEndpoint()
        defer { removeSocketFiles(endpoint) }
        let shell = try options.makeShell(
            endpoint: endpoint, stop: stop, progress: ConsoleProgress(), security: security)
        // With keys, the local workers join with the coordinator's own (always let in).
        let keyArgs = security.key.map { ["--key", $0, "--coordinator-key", "-"] } ?? []
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        // One host agent named "local" whose processes are local-1 … local-N; a lone worker is local-1.
        let n = self.workers, trace = self.trace, socketOnly = noSharedMemory
        let workers = LocalWorkers(
            data: options.data,
            name: { _, restart in
                (n == 1 ? "local-1" : "local") + (restart == 0 ? "" : ".\(restart)")
            },
            extra: { _ in
                ["--procs", "\(n)"] + (socketOnly ? ["--no-shared-memory"] : []) + keyArgs
                    + (trace.map {
                        n == 1
                            ? ["--trace", $0 + "/worker-1.jsonl"]
                            : ["--trace", $0 + "/agents/local.jsonl", "--trace-dir", $0]
                    } ?? [])
            })
        shell.endedWorkers = workers.ended
        shell.onBound = { endpoint in workers.startAll(1, endpoint: endpoint) }
        shell.onWorkerEnded = { name in workers.restart(name) }
        shell.localWorkersGone = { workers.allGone }
        let code: Int32
        do { code = try shell.run() } catch { workers.reap(); throw error }
        workers.reap()
        if let trace { try shell.trace?.write(to: trace + "/coordinator.jsonl") }
        if code != 0 { removeSocketFiles(endpoint); Foundation.exit(code) }
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

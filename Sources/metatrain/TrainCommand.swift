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
        every worker; --resume continues from the newest checkpoint.
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
        var children: [Process] = []
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let data = options.data, n = workers, traceDir = trace, socketOnly = noSharedMemory
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        shell.onBound = { endpoint in
            for i in 0..<n {
                let p = Process()
                p.executableURL = exe
                p.arguments = ["worker", "--connect", endpoint, "--data", data, "--name", "local-\(i + 1)",
                               "--exit-with-parent", "\(getpid())"]
                if let traceDir { p.arguments! += ["--trace", traceDir + "/worker-\(i + 1).jsonl"] }
                if socketOnly { p.arguments! += ["--no-shared-memory"] }
                do { try p.run(); children.append(p) } catch {
                    FileHandle.standardError.write(Data("could not start worker \(i + 1): \(error)\n".utf8))
                }
            }
        }
        func reapWorkers() {
            // Workers exit on the coordinator's shutdown; make sure none outlives us.
            let deadline = Date().addingTimeInterval(5)
            for c in children {
                while c.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
                if c.isRunning { c.terminate() }
            }
        }
        let code: Int32
        do { code = try shell.run() } catch { reapWorkers(); throw error }
        reapWorkers()
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

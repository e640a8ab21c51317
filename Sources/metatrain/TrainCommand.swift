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
        var training = LocalTraining(
            request: try options.request(endpoint: endpoint, security: security), workers: workers)
        training.endpoint = endpoint
        training.trace = trace
        training.sharedMemory = !noSharedMemory
        training.workerKey = security.key
        let code = try training.run(stop: stop, progress: ConsoleProgress())
        if code != 0 { Foundation.exit(code) }
    }
}

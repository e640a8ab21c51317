import ArgumentParser
import Configuration
import Core
import Foundation
import Kernels
import Runtime
import Storage
import Training
import Wire

/// Options shared by `coordinator` and `train`.
struct MetaRunOptions: ParsableArguments {
    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Run directory for config.yaml, metrics.jsonl, checkpoints and logs.") var runDir: String
    @Flag(help: "Continue from the newest checkpoint in the run directory.") var resume = false
    @Option(help: "Seconds of silence after which a worker is dropped and its units re-queued (default: cluster.heartbeat_s × cluster.liveness, 3).")
    var workerTimeout: Double?
    @OptionGroup var config: ConfigOptions

    /// The config to run with: on --resume, the run's own config.yaml (plus any --set).
    func loadConfig() throws -> Config {
        if resume, config.config == nil, FileManager.default.fileExists(atPath: runDir + "/config.yaml") {
            return try Config.load(path: runDir + "/config.yaml", overrides: config.overrides + (config.seed.map { ["seed=\($0)"] } ?? []))
        }
        return try config.load()
    }

    func makeShell(endpoint: String, stop: StopFlag, progress: ConsoleProgress) throws -> CoordinatorShell {
        BLAS.useSingleThread()
        let cfg = try loadConfig()
        let dataset = try DatasetFile.read(data)
        let run = try RunDirectory(runDir, logName: "coordinator.log")
        if !resume, try MetaTrainer.latestCheckpoint(in: run) != nil {
            throw MetatrainError("\(runDir) already holds checkpoints; pass --resume to continue it or choose another --run-dir")
        }
        let trainer = try MetaTrainer(config: cfg, dataset: dataset, run: run, resume: resume)
        let shell = CoordinatorShell(trainer: trainer, endpoint: endpoint, stop: stop, progress: progress)
        shell.workerTimeout = workerTimeout
        return shell
    }
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Runs the meta-training coordinator and waits for workers to connect.",
        discussion: """
        Binds a ROUTER socket at --bind for work and a PUB socket at the next port
        for weight broadcasts. Start workers on any machine with
        `metatrain worker --connect tcp://HOST:PORT --data DATASET`.
        Example:
          metatrain coordinator --data data/dataset.h5 --config configs/fomaml.yaml \\
              --run-dir runs/fomaml --bind tcp://*:5555
        """)

    @OptionGroup var options: MetaRunOptions
    @Option(help: "Endpoint to bind (tcp://*:PORT or ipc://PATH; PORT+1 carries weights).") var bind = "tcp://*:5555"
    @Option(help: ArgumentHelp("Write this process's event timeline to FILE (JSON lines) when it ends.", valueName: "file"))
    var trace: String?

    func run() throws {
        let stop = StopFlag()
        stop.installSignalHandlers()
        let shell = try options.makeShell(endpoint: bind, stop: stop, progress: ConsoleProgress())
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        let result = Result { try shell.run() }
        if let trace { try shell.trace?.write(to: trace) }
        let code = try result.get()
        if code != 0 { Foundation.exit(code) }
    }
}

import Core
import ExperimentConfig
import Foundation
import Kernels
import Link
import Storage
import Training

/// How a meta-training run starts, as `coordinator` and `train` (and a study's
/// task) start it: which run directory, whether it continues a run there, and
/// the coordinator's settings.
public struct MetaRunRequest {
    /// Whether a start continues the run its directory holds.
    public enum Continuation: Sendable {
        /// Start the run (a directory holding one is refused unless `overwrite`).
        case start
        /// Continue from the newest checkpoint; an error if there is none (`--resume`).
        case resume
        /// Continue if there is a checkpoint, else start (`--resume-or-start`, for launchers).
        case resumeOrStart
    }

    public var data: String
    public var runDirectory: String
    /// The config file (nil: defaults) and `key=value` overrides (a seed among them).
    public var configPath: String?
    public var overrides: [String]
    public var continuation: Continuation = .start
    /// Remove the run the directory holds and start afresh.
    public var overwrite = false
    public var workerTimeout: Double?
    public var verify = 0.0
    /// CURVE keys to bind with (nil: none).
    public var curve: CurveServerKeys?
    /// The command line that continues this run (with these iterations, if given), for the
    /// line an interrupted or finished run ends with; nil: none is said.
    public var resumeCommand: ((Int?) -> String)?

    public init(data: String, runDirectory: String, configPath: String?, overrides: [String]) {
        self.data = data; self.runDirectory = runDirectory; self.configPath = configPath; self.overrides = overrides
    }

    /// Whether this start continues a run: `.resume` (which needs a checkpoint), or
    /// `.resumeOrStart` in a run directory that has one.
    public func resuming() throws -> Bool {
        let checkpoints = MetaTrainer.periodicCheckpoints(inRunDirectory: runDirectory)
        if continuation == .resume && checkpoints.isEmpty {
            throw MetatrainError(
                FileManager.default.fileExists(atPath: runDirectory)
                    ? "\(runDirectory) has no checkpoint to resume from (checkpoints/ holds none); start the run without --resume"
                    : "\(runDirectory) does not exist; there is nothing to resume (start the run without --resume)")
        }
        return continuation == .resume || (continuation == .resumeOrStart && !checkpoints.isEmpty)
    }

    /// The config to run with: on a resume without a config file, the run's own config.yaml (plus the overrides).
    public func loadConfig(resume: Bool) throws -> Config {
        if resume, configPath == nil, FileManager.default.fileExists(atPath: runDirectory + "/config.yaml") {
            return try Config.load(path: runDirectory + "/config.yaml", overrides: overrides)
        }
        return try Config.load(path: configPath, overrides: overrides)
    }

    /// Takes the run directory (refused while a live run holds it, or when it holds a run
    /// this start neither continues nor overwrites) and makes the coordinator's shell.
    public func makeShell(endpoint: String, stop: StopFlag, progress: ProgressSink) throws -> CoordinatorShell {
        BLAS.useSingleThread()
        let runDir = runDirectory
        let resume = try resuming()
        let cfg = try loadConfig(resume: resume)
        if !resume { try MetaTrainer.checkWarmStart(cfg) }
        let dataset = try DatasetFile.read(data)
        // A directory a live run holds is refused as in use, whatever it holds.
        if let holder = RunDirectory.holder(ofRunDirectory: runDir) {
            throw MetatrainError("\(runDir) is in use by another run (\(holder)); stop it or use another --run-dir")
        }
        let held = MetaTrainer.runContents(inRunDirectory: runDir)
        if !resume && !held.isEmpty && !overwrite && continuation != .resumeOrStart {
            throw MetatrainError(
                "\(runDir) already holds a run (\(held.map(\.description).joined(separator: ", "))): pass --resume to continue it, --resume-or-start to continue it if it has a checkpoint and start it otherwise, or --overwrite to remove it and start afresh (or choose another --run-dir)"
            )
        }
        // The directory is this process's before anything in it is removed.
        let run = try RunDirectory(runDir, logName: "coordinator.log")
        try run.lock()
        if !resume && !held.isEmpty {
            progress.log(
                "removing \(runDir)'s earlier run to start afresh: "
                    + held.map(\.description).joined(separator: ", "))
            for item in held { try FileManager.default.removeItem(atPath: runDir + "/" + item.name) }
        }
        let trainer = try MetaTrainer(config: cfg, dataset: dataset, run: run, resume: resume)
        if let from = trainer.resumedFrom {
            progress.log("resumed from \(from) at iteration \(trainer.iteration) of \(trainer.iterations)")
        }
        try run.recordStart(datasetPath: data, fingerprint: dataset.fingerprint, resumedFrom: trainer.resumedFrom)
        let shell = CoordinatorShell(trainer: trainer, endpoint: endpoint, stop: stop, progress: progress)
        shell.workerTimeout = workerTimeout
        shell.verifyFraction = verify
        shell.curve = curve
        shell.resumeCommand = resumeCommand
        return shell
    }
}

/// `train`: a coordinator in this process and N local compute processes under
/// one host agent (a lone worker when N is 1), until the run ends.
public struct LocalTraining {
    public var request: MetaRunRequest
    public var workers: Int
    /// The coordinator's endpoint (nil: a private ipc:// socket, the fastest for local workers).
    public var endpoint: String?
    /// Write every process's timeline to this directory when the run ends.
    public var trace: String?
    /// Results and weights through shared memory (else through the socket).
    public var sharedMemory = true
    /// With keys, the local workers join with this secret key file (the coordinator's own, always let in).
    public var workerKey: String?

    public init(request: MetaRunRequest, workers: Int) { self.request = request; self.workers = workers }

    /// Runs the training; the coordinator's exit status.
    public func run(stop: StopFlag, progress: ProgressSink) throws -> Int32 {
        let endpoint = self.endpoint ?? privateEndpoint()
        defer { removeSocketFiles(endpoint) }
        let shell = try request.makeShell(endpoint: endpoint, stop: stop, progress: progress)
        let keyArgs = workerKey.map { ["--key", $0, "--coordinator-key", "-"] } ?? []
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        // One host agent named "local" whose processes are local-1 … local-N; a lone worker is local-1.
        let n = workers, trace = self.trace, socketOnly = !sharedMemory
        let local = LocalWorkers(
            data: request.data,
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
        shell.endedWorkers = local.ended
        shell.onBound = { endpoint in local.startAll(1, endpoint: endpoint) }
        shell.onWorkerEnded = { name in local.restart(name) }
        shell.localWorkersGone = { local.allGone }
        let code: Int32
        do { code = try shell.run() } catch { local.reap(); throw error }
        local.reap()
        if let trace { try shell.trace?.write(to: trace + "/coordinator.jsonl") }
        return code
    }
}

/// A Unix-domain (ipc://) endpoint private to this process, for local workers:
/// a 1.5 MB gradient costs less CPU over it than over TCP loopback, and on a
/// machine whose cores all run workers that CPU comes out of the workers' share.
public func privateEndpoint() -> String {
    "ipc://" + NSTemporaryDirectory() + "metatrain-\(getpid()).sock"
}

/// Removes an ipc:// endpoint's socket files (ROUTER and PUB) once the run is over.
public func removeSocketFiles(_ endpoint: String) {
    guard endpoint.hasPrefix("ipc://") else { return }
    let path = String(endpoint.dropFirst("ipc://".count))
    for p in [path, path + ".pub"] { unlink(p) }
}

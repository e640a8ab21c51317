import ArgumentParser
import Core
import ExperimentConfig
import Foundation
import Kernels
import Link
import Runtime
import Storage
import Training
import Wire

/// Options shared by `coordinator` and `train`.
struct MetaRunOptions: ParsableArguments {
    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Run directory for config.yaml, metrics.jsonl, checkpoints and logs.") var runDir: String
    @Flag(help: "Continue from the newest checkpoint in the run directory (an error if it has none).") var resume =
        false
    @Flag(
        help:
            "Continue from the newest checkpoint if the run directory has one, otherwise start the run (for launchers that restart the coordinator)."
    )
    var resumeOrStart = false
    @Flag(
        help:
            "Remove the run the run directory holds (config, metrics, checkpoints, final.h5, TensorBoard events) and start afresh; says what it removes."
    )
    var overwrite = false
    @Option(
        help:
            "Seconds of silence after which a worker is dropped and its units re-queued (default: cluster.heartbeat_s × cluster.liveness, 3)."
    )
    var workerTimeout: Double?
    @Option(
        help: ArgumentHelp(
            "Spot checks: compute this fraction of units (seeded, 0 to 1) a second time on another worker and compare the bits; a worker that disagrees with the majority is dropped. Needs hosts that run the same kernels.",
            valueName: "F"))
    var verify = 0.0
    @OptionGroup var config: ConfigOptions

    func validate() throws {
        if resume && resumeOrStart { throw ValidationError("--resume and --resume-or-start: give one") }
        if overwrite && (resume || resumeOrStart) {
            throw ValidationError(
                "--overwrite removes the run and --resume\(resume ? "" : "-or-start") continues it; give one")
        }
        guard verify >= 0, verify <= 1 else {
            throw ValidationError("--verify takes a fraction from 0 to 1, not \(verify)")
        }
    }

    /// What these flags ask for, with the keys to bind `endpoint` with.
    func request(endpoint: String, security: SecurityOptions) throws -> MetaRunRequest {
        var r = MetaRunRequest(
            data: data, runDirectory: runDir, configPath: config.config,
            overrides: config.overrides + (config.seed.map { ["seed=\($0)"] } ?? []))
        r.continuation = resume ? .resume : resumeOrStart ? .resumeOrStart : .start
        r.overwrite = overwrite
        r.workerTimeout = workerTimeout
        r.verify = verify
        r.curve = try security.serverKeys(for: endpoint)
        r.resumeCommand = { resumeCommand(iterations: $0) }
        return r
    }

    /// The command line that continues this run: the one that started it, without
    /// --overwrite or --resume-or-start, with --resume (and with `iterations`, if
    /// given, in place of any maml.iterations it set).
    func resumeCommand(iterations: Int?) -> String {
        var args: [String] = []
        var rest = Array(CommandLine.arguments.dropFirst())[...]
        while let a = rest.popFirst() {
            if ["--overwrite", "--resume", "--resume-or-start"].contains(a) { continue }
            if iterations != nil {
                if a == "--set", rest.first?.hasPrefix("maml.iterations=") == true { rest.removeFirst(); continue }
                if a.hasPrefix("--set=maml.iterations=") { continue }
            }
            args.append(a)
        }
        args.append("--resume")
        if let iterations { args += ["--set", "maml.iterations=\(iterations)"] }
        return ([CommandLine.arguments.first ?? "metatrain"] + args).map(shellQuoted).joined(separator: " ")
    }
}

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Runs the meta-training coordinator and waits for workers to connect.",
        discussion: """
            Binds a ROUTER socket at --bind for work and a PUB socket at the next port
            for weight broadcasts. Start workers on any machine with
            `metatrain worker --connect tcp://HOST:PORT --data DATASET` (plus --key
            and --coordinator-key when the coordinator has keys). An address other
            machines can reach (the default tcp://*:5555 included) needs --key and
            --authorized-keys, or --insecure; without keys bind loopback
            (tcp://127.0.0.1:PORT) or ipc://.
            Example:
              metatrain coordinator --data data/dataset.h5 --config configs/fomaml.yaml \\
                  --run-dir runs/fomaml --bind tcp://*:5555 \\
                  --key keys/coordinator.secret --authorized-keys keys/authorized
            """)

    @OptionGroup var options: MetaRunOptions
    @Option(help: "Endpoint to bind (tcp://*:PORT or ipc://PATH; PORT+1 carries weights).") var bind = "tcp://*:5555"
    @OptionGroup var security: SecurityOptions
    @Option(
        help: ArgumentHelp("Write this process's event timeline to FILE (JSON lines) when it ends.", valueName: "file"))
    var trace: String?

    func run() throws {
        let stop = StopFlag()
        stop.installSignalHandlers()
        let progress = ConsoleProgress()
        let shell = try options.request(endpoint: bind, security: security).makeShell(
            endpoint: bind, stop: stop, progress: progress)
        if trace != nil { shell.trace = Trace(process: "coordinator") }
        let result = Result { try shell.run() }
        if let trace { try shell.trace?.write(to: trace) }
        let code = try result.get()
        if code != 0 { Foundation.exit(code) }
    }
}

/// CURVE authentication for a coordinator (`coordinator`, and `train` with `--bind`).
struct SecurityOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The coordinator's secret key (metatrain keygen); with --authorized-keys, every socket uses CURVE.",
            valueName: "file"))
    var key: String?
    @Option(
        help: ArgumentHelp(
            "Public keys of the workers let in: a file (one per line) or a directory of *.pub files.",
            valueName: "file-or-dir"))
    var authorizedKeys: String?
    @Flag(help: "Bind an address other machines can reach without keys: anyone who reaches it could join.")
    var insecure = false

    func validate() throws {
        if (key == nil) != (authorizedKeys == nil) { throw ValidationError("--key and --authorized-keys go together") }
        if key != nil && insecure { throw ValidationError("--insecure makes no sense with --key") }
    }

    /// The keys to bind `endpoint` with; nil for none, which only loopback or --insecure allows.
    func serverKeys(for endpoint: String) throws -> CurveServerKeys? {
        if let key, let authorizedKeys {
            let pair = try KeyFiles.readSecret(key)
            return CurveServerKeys(
                pair: pair, authorized: try KeyFiles.authorized(authorizedKeys).union([pair.publicKey]))
        }
        if !KeyFiles.isLoopback(endpoint) && !insecure {
            throw MetatrainError(
                "\(endpoint) can be reached from other machines, and without keys anyone who reaches it could join "
                    + "and send results: give --key and --authorized-keys (see metatrain keygen), or --insecure to accept that"
            )
        }
        return nil
    }
}

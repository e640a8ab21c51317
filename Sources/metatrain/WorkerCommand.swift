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

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Runs a machine's meta-training workers: one connection to the coordinator for N processes.",
        discussion: """
            Run one per machine. With --procs N (default: the machine's cores) this
            process is a host agent: it starts N compute processes, takes each
            weights version from the coordinator once, hands them blocks of tasks
            through shared memory and returns one summed gradient per block. With
            --procs 1 it computes alone. Every process opens the dataset itself;
            its fingerprint must match the coordinator's.
            Example:
              metatrain worker --connect tcp://coordinator:5555 --data data/dataset.h5 \\
                  --procs 8 --key keys/host1.secret --coordinator-key keys/coordinator.pub
            """)

    @Option(help: "Coordinator endpoint (tcp://HOST:PORT or ipc://PATH).") var connect: String
    @Option(help: "Dataset file; must be the coordinator's (same fingerprint).") var data: String
    @Option(help: "Name shown in the coordinator's log (default HOST:PID).") var name: String?
    @Option(help: "Compute processes on this machine (default: its cores); 1 computes in this process.") var procs: Int?
    @Option(
        help: ArgumentHelp(
            "This worker's secret key (metatrain keygen); with --coordinator-key, it connects with CURVE.",
            valueName: "file"))
    var key: String?
    @Option(help: ArgumentHelp("The coordinator's public key file ('-': the one --key belongs to).", valueName: "file"))
    var coordinatorKey: String?
    @Option(help: "Seconds without word from the coordinator before giving up.") var coordinatorTimeout = 120.0
    @Option(help: ArgumentHelp("Protocol version to speak (testing only).", visibility: .hidden)) var protocolVersion:
        UInt16?
    @Option(help: ArgumentHelp("Exit when this parent process exits (set by train).", visibility: .hidden))
    var exitWithParent: Int32?
    // Fault injection exists only in builds made for tests (-Xswiftc -DMETATRAIN_TEST_HOOKS).
    #if METATRAIN_TEST_HOOKS
    @Option(help: ArgumentHelp("Fail with an error when asked for unit N+1 (testing only).", visibility: .hidden))
    var failAfterUnits: Int?
    @Option(help: ArgumentHelp("Never finish unit N+1, heartbeating all the same (testing only).", visibility: .hidden))
    var hangAfterUnits: Int?
    #else
    var failAfterUnits: Int? { nil }
    var hangAfterUnits: Int? { nil }
    #endif
    @Flag(help: "Log every protocol event.") var verbose = false
    @Option(
        help: ArgumentHelp("Write this process's event timeline to FILE (JSON lines) when it ends.", valueName: "file"))
    var trace: String?
    @Option(
        help: ArgumentHelp(
            "Host agent: each compute process writes DIR/worker-N.jsonl (set by train --trace).", visibility: .hidden))
    var traceDir: String?
    @Flag(
        help:
            "Send results and take weights through the socket even with a coordinator on this machine (by default they go through shared memory)."
    )
    var noSharedMemory = false

    func validate() throws {
        if let procs, procs < 1 { throw ValidationError("--procs must be at least 1") }
        if (key == nil) != (coordinatorKey == nil) { throw ValidationError("--key and --coordinator-key go together") }
    }

    /// The CURVE keys to connect with, if any.
    func clientKeys() throws -> CurveClientKeys? {
        guard let key, let coordinatorKey else { return nil }
        let pair = try KeyFiles.readSecret(key)
        return CurveClientKeys(
            pair: pair, serverKey: coordinatorKey == "-" ? pair.publicKey : try KeyFiles.readPublic(coordinatorKey))
    }

    func run() throws {
        #if METATRAIN_TEST_HOOKS
        if exitWithParent != nil, ProcessInfo.processInfo.environment["METATRAIN_TEST_FAIL_AT_START"] == "1" {
            throw MetatrainError("injected failure at start (METATRAIN_TEST_FAIL_AT_START, testing only)")
        }
        #endif
        let stop = StopFlag()
        stop.installSignalHandlers()
        let host = ProcessInfo.processInfo.hostName
        let label = name ?? "\(host):\(getpid())"
        let verbose = verbose
        let log: (String) -> Void = { line in
            if verbose { FileHandle.standardError.write(Data("worker \(label): \(line)\n".utf8)) }
        }
        // A worker someone started by hand says when it joins, why it cannot, and when its run
        // ends; one that `train` or a host agent started leaves that to its parent.
        let announce = exitWithParent == nil
        let notice: (String) -> Void = { line in
            if announce || verbose { FileHandle.standardError.write(Data("worker \(label): \(line)\n".utf8)) }
        }
        let n = procs ?? ProcessInfo.processInfo.activeProcessorCount
        let curve = try clientKeys()
        let result: Result<Int32, Error>
        let exitReason: () -> String
        if n > 1 {
            let agent = HostAgent(
                endpoint: connect, dataPath: data, name: label, procs: n,
                protocolVersion: protocolVersion ?? Envelope.protocolVersion, stop: stop, log: log)
            agent.coordinatorTimeout = coordinatorTimeout
            agent.exitWithParent = exitWithParent
            agent.sharedMemory = !noSharedMemory
            agent.traceDir = traceDir
            agent.curve = curve
            agent.notice = { line in FileHandle.standardError.write(Data("worker \(label): \(line)\n".utf8)) }
            agent.announce = notice
            if trace != nil { agent.trace = Trace(process: label) }
            result = Result { try agent.run() }
            if let trace { try agent.trace?.write(to: trace) }
            exitReason = { agent.exitReason }
        } else {
            let shell = WorkerShell(
                endpoint: connect, dataPath: data, name: label,
                protocolVersion: protocolVersion ?? Envelope.protocolVersion, stop: stop, log: log)
            shell.coordinatorTimeout = coordinatorTimeout
            shell.exitWithParent = exitWithParent
            shell.failAfterUnits = failAfterUnits
            shell.hangAfterUnits = hangAfterUnits
            shell.curve = curve
            shell.notice = notice
            shell.sharedMemory = !noSharedMemory
            if trace != nil { shell.trace = Trace(process: label) }
            result = Result { try shell.run() }
            if let trace { try shell.trace?.write(to: trace) }
            exitReason = { shell.exitReason }
        }
        let code = try result.get()
        if code == 0 || code == 130 {
            notice("left: \(exitReason())")
            if code != 0 { Foundation.exit(code) }
        } else {
            throw MetatrainError("worker \(label): \(exitReason())")
        }
    }
}

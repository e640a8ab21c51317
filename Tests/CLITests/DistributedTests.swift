import Foundation
import Link
import MetaLearning
import Runtime
import Storage
import Transport
import Wire
import XCTest

/// Meta-training over real ZeroMQ sockets between real processes.
final class DistributedTests: XCTestCase {
    static let dir = freshDir("dist")
    static let data = dir + "/data.h5"
    nonisolated(unsafe) static var prepared = false
    /// Small but real: 8 tasks per iteration in chunks of 2, validation and checkpoints on the way.
    let small = [
        "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12", "--set", "maml.meta_batch_size=8",
        "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2", "--set", "maml.inner_lr=0.1",
        "--set", "maml.outer_lr=0.01", "--set", "eval.every=5", "--set", "eval.val_episodes=8",
        "--set", "checkpoint.every=4", "--set", "checkpoint.keep=2"
    ]

    override func setUpWithError() throws {
        if DistributedTests.prepared { return }
        var r = try metatrain([
            "synth", "--out", DistributedTests.dir + "/e.csv", "--users", "100", "--courses", "20", "--seed", "3"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(["prepare", "--events", DistributedTests.dir + "/e.csv", "--out", DistributedTests.data])
        XCTAssertEqual(r.status, 0, r.stderr)
        DistributedTests.prepared = true
    }

    func bytes(_ p: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: p)) }

    func testWeightsAreBitIdenticalForOneTwoAndThreeWorkers() throws {
        var finals: [Data] = []
        // Results go through shared memory, except in the last run (through the socket).
        for (n, socket) in [(1, false), (2, false), (3, false), (2, true)] {
            let run = DistributedTests.dir + "/w\(n)" + (socket ? "-socket" : "")
            // The first 2-worker run also records its timeline: tracing must not change the bits.
            let trace = n == 2 && !socket ? ["--trace", run + "/trace"] : []
            let r = try metatrain(
                [
                    "train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "\(n)",
                    "--set", "maml.iterations=12"
                ] + small + trace + (socket ? ["--no-shared-memory"] : []))
            XCTAssertEqual(r.status, 0, r.stderr)
            if !trace.isEmpty { try checkTrace(run + "/trace") }
            let log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
            XCTAssertEqual(log.contains("results through shared memory"), !socket, log)
            XCTAssertFalse(log.contains("results through the socket"), log)
            XCTAssertTrue(r.stderr.contains("finished 12 iterations"), r.stderr)
            finals.append(try bytes(run + "/final.h5"))
            let metrics = try String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            XCTAssertEqual(metrics.count, 12)
            XCTAssertTrue(metrics[4].contains("val_hr@10"), String(metrics[4]))
            XCTAssertEqual(
                try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints").sorted(),
                ["iter-000008.h5", "iter-000012.h5"])
            XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/best.h5"))
        }
        XCTAssertEqual(finals[0], finals[1], "1 vs 2 workers")
        XCTAssertEqual(finals[0], finals[2], "1 vs 3 workers")
        XCTAssertEqual(finals[0], finals[3], "shared memory vs socket")
    }

    /// Second-order MAML with a residual meta-loss, and second-order Meta-SGD (whose
    /// rates travel next to θ in every result and broadcast): 1 worker and 2 give the
    /// same bits, through shared memory and through the socket alike.
    func testMAMLAndMetaSGDAreBitIdenticalForOneAndTwoWorkers() throws {
        for (name, variant) in [
            ("maml", ["maml.algorithm=maml", "maml.residual_lambda=0.1"]),
            ("metasgd", ["maml.algorithm=metasgd", "maml.second_order=true", "maml.inner_lr=0.05"])
        ] {
            var finals: [Data] = []
            for (n, socket) in [(1, false), (2, false), (2, true)] {
                let run = DistributedTests.dir + "/\(name)-w\(n)" + (socket ? "-socket" : "")
                let r = try metatrain(
                    [
                        "train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "\(n)",
                        "--set", "maml.iterations=6"
                    ] + small + variant.flatMap { ["--set", $0] }
                        + (socket ? ["--no-shared-memory"] : []))
                XCTAssertEqual(r.status, 0, r.stderr)
                finals.append(try bytes(run + "/final.h5"))
            }
            XCTAssertEqual(finals[0], finals[1], "\(name): 1 vs 2 workers")
            XCTAssertEqual(finals[0], finals[2], "\(name): shared memory vs socket")
        }
    }

    /// Every unit the coordinator sent came back from the host agent, which sent on
    /// a result for every unit it was given, and each process computed what it received.
    func checkTrace(_ dir: String) throws {
        let coordinator = try Trace.read(dir + "/coordinator.jsonl")
        let published = coordinator.filter { $0.event == .published }.map(\.n)
        XCTAssertEqual(published, Array(0...12), "one broadcast per version")
        let sent = Set(coordinator.filter { $0.event == .send }.map(\.n))
        XCTAssertEqual(Set(coordinator.filter { $0.event == .result }.map(\.n)), sent)
        // One connection for the host: one train block per iteration (the whole tree) plus the eval units.
        XCTAssertEqual(
            coordinator.filter { $0.event == .result }.count, 12 + 2 * 4, "12 blocks and 2 validations of 4 units")
        let agent = try Trace.read(dir + "/agents/local.jsonl")
        XCTAssertTrue(agent.allSatisfy { $0.process == "local" })
        XCTAssertEqual(Set(agent.filter { $0.event == .computed }.map(\.n)), sent)
        XCTAssertEqual(agent.filter { $0.event == .sent }.map(\.n), agent.filter { $0.event == .computed }.map(\.n))
        let versions = agent.filter { $0.event == .weights }.map(\.n)
        XCTAssertEqual(Set(versions), Set(0...12), "the agent takes every version")
        XCTAssertLessThanOrEqual(
            versions.count, 13 + agent.filter { $0.event == .fetch }.count, "once (or fetched once more)")
        var merged = coordinator
        for w in 1...2 {
            let records = try Trace.read(dir + "/worker-\(w).jsonl")
            XCTAssertTrue(records.allSatisfy { $0.process == "local-\(w)" })
            let c = records.filter { $0.event == .computed }.map(\.n)
            XCTAssertEqual(records.filter { $0.event == .sent }.map(\.n), c)
            // Broadcasts arrive through shared memory: a worker fetches when it joins, not every iteration.
            XCTAssertLessThanOrEqual(records.filter { $0.event == .fetch }.count, 4, "worker \(w) fetched weights")
            merged += records
        }
        XCTAssertFalse(sent.isEmpty)
        XCTAssertGreaterThan(IterationBreakdown(merged, versions: 2...12).iterations, 0)
        // tools/trace_summary.py reads the same files.
        if (try? python(["--version"]))?.0 == 0 {
            let (status, text) = try python([
                toolsDirectory.appendingPathComponent("trace_summary.py").path, dir, "--skip", "1"
            ])
            XCTAssertEqual(status, 0, text)
            XCTAssertTrue(text.contains("11 iterations, 2 worker(s)"), text)
        }
    }

    func testResumeAfterSIGKILLEndsBitIdentical() throws {
        let args = ["--data", DistributedTests.data, "--workers", "2", "--set", "maml.iterations=300"] + small
        let whole = DistributedTests.dir + "/whole"
        let r = try metatrain(["train", "--run-dir", whole] + args)
        XCTAssertEqual(r.status, 0, r.stderr)
        // Same run, killed (coordinator and workers, SIGKILL) once a few checkpoints exist.
        let killed = DistributedTests.dir + "/killed"
        let p = try startDetached(["train", "--run-dir", killed] + args)
        // (A checkpoint being written shows first as a hidden temporary file: wait for a whole one.)
        let deadline = Date().addingTimeInterval(120)
        while ((try? FileManager.default.contentsOfDirectory(atPath: killed + "/checkpoints")) ?? []).filter({
            !$0.hasPrefix(".")
        }).isEmpty
            && Date() < deadline
        {
            Thread.sleep(forTimeInterval: 0.005)
        }
        Thread.sleep(forTimeInterval: Double.random(in: 0...0.05)) // anywhere: mid-iteration, mid-eval, mid-write
        p.killGroup() // SIGKILL the train process (the coordinator)
        p.wait()
        // Its workers notice their parent is gone and exit on their own.
        let gone = Date().addingTimeInterval(10)
        while workerProcesses(connectedTo: killed).count > 0 && Date() < gone { Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertEqual(workerProcesses(connectedTo: killed), [], "orphaned workers")
        XCTAssertFalse(FileManager.default.fileExists(atPath: killed + "/final.h5"), "killed before the end")
        let resumed = try metatrain(["train", "--run-dir", killed, "--resume"] + args)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertTrue(try String(contentsOfFile: killed + "/coordinator.log", encoding: .utf8).contains("resumed from"))
        XCTAssertEqual(try bytes(killed + "/final.h5"), try bytes(whole + "/final.h5"))
        // Killed mid-write or not, no temporary file is left behind.
        for dir in [killed, killed + "/checkpoints"] {
            XCTAssertEqual(
                try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }, [], dir)
        }
        let lines = try String(contentsOfFile: killed + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let wholeLines = try String(contentsOfFile: whole + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, wholeLines.count, "metrics.jsonl holds each iteration once")
        XCTAssertEqual(lines.last.map { $0.prefix(60) }, wholeLines.last.map { $0.prefix(60) })
        // A second start without --resume refuses to overwrite the run.
        let again = try metatrain(["train", "--run-dir", killed] + args)
        XCTAssertNotEqual(again.status, 0)
        XCTAssertTrue(again.stderr.contains("--resume"), again.stderr)
    }

    func testWorkersRejoinACoordinatorRestartedWithResume() throws {
        let args = ["--data", DistributedTests.data, "--set", "maml.iterations=300"] + small
        let whole = DistributedTests.dir + "/restart-whole"
        XCTAssertEqual(try metatrain(["train", "--run-dir", whole, "--workers", "2"] + args).status, 0)
        // Coordinator, a host agent of two processes (w0) and a plain worker (w1); SIGKILL only the
        // coordinator. Worker w1 sends everything through the socket, so weights are broadcast inline
        // while w0's results come through shared memory; after the restart w0 offers a new file.
        let run = DistributedTests.dir + "/restart"
        let first = try startDetached(["coordinator", "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args)
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let workers = try (0..<2).map { i in
            try startDetached(
                ["worker", "--connect", endpoint, "--data", DistributedTests.data, "--name", "w\(i)"]
                    + (i == 1 ? ["--no-shared-memory", "--procs", "1"] : ["--procs", "2"]))
        }
        defer { for w in workers { w.killGroup(); w.wait() } }
        // A whole checkpoint (not the temporary file one is written under) to resume from.
        let deadline = Date().addingTimeInterval(60)
        while !((try? FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints")) ?? []).contains(where: {
            $0.hasPrefix("iter-")
        })
            && Date() < deadline
        {
            Thread.sleep(forTimeInterval: 0.005)
        }
        first.killGroup()
        first.wait()
        // The same workers, still running, join the resumed coordinator on the same endpoint.
        let second = try metatrain(["coordinator", "--run-dir", run, "--bind", endpoint, "--resume"] + args)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(try bytes(run + "/final.h5"), try bytes(whole + "/final.h5"))
        // (w0 may have missed the first run on a loaded machine; it joins the resumed one with a file.)
        let log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
        let resumed = try XCTUnwrap(log.components(separatedBy: "resumed from").last)
        XCTAssertTrue(resumed.contains("worker w0: results through shared memory"), log)
        XCTAssertTrue(resumed.contains("worker w1 joined"), log)
        XCTAssertFalse(log.contains("worker w1: results through shared memory"), log)
        for w in workers { XCTAssertEqual(w.wait(), 0, "worker exits cleanly on the resumed run's shutdown") }
    }

    /// A coordinator that can open the worker's shared memory but not the other
    /// way round (here: the coordinator runs as root, the worker as nobody). The
    /// worker gives up shared memory and joins again, so broadcasts carry the
    /// weights and it does not fetch them every iteration.
    func testWorkerThatCannotReadTheCoordinatorsMemoryGoesThroughTheSocket() throws {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") else {
            throw XCTSkip("needs root and setpriv to run the worker as another user")
        }
        let run = DistributedTests.dir + "/asymmetric", traces = DistributedTests.dir + "/asymmetric-trace"
        try FileManager.default.createDirectory(
            atPath: traces, withIntermediateDirectories: true,
            attributes: [.posixPermissions: 0o777])
        // The other user needs the binary and the dataset, wherever the checkout lies.
        let binary = DistributedTests.dir + "/metatrain-other-user"
        try? FileManager.default.removeItem(atPath: binary)
        try FileManager.default.copyItem(atPath: metatrainPath(), toPath: binary)
        chmod(DistributedTests.dir, 0o755); chmod(binary, 0o755); chmod(DistributedTests.data, 0o644)
        let asNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", binary]
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        check.arguments = asNobody + ["--help"]
        check.standardOutput = FileHandle.nullDevice; check.standardError = FileHandle.nullDevice
        try check.run(); check.waitUntilExit()
        guard check.terminationStatus == 0 else { throw XCTSkip("user nobody cannot run \(binary)") }
        let coord = try startDetached(
            [
                "coordinator", "--data", DistributedTests.data, "--run-dir", run,
                "--bind", "tcp://127.0.0.1:0", "--set", "maml.iterations=12"
            ] + small)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        // A host agent of 2 processes: it joins again without shared memory while its processes start. It
        // starts in a directory its user cannot enter (as from a private checkout): its processes start all the same.
        let closed = DistributedTests.dir + "/closed"
        try FileManager.default.createDirectory(
            atPath: closed, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let p = try startDetached(
            [
                "worker", "--connect", endpoint, "--data", DistributedTests.data, "--name", "other-user",
                "--procs", "2", "--verbose", "--trace", traces + "/worker.jsonl"
            ],
            stderr: traces + "/worker.err",
            prefix: ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", closed, "/usr/bin/setpriv"] + asNobody.dropLast(),
            binary: binary)
        defer { p.killGroup(); p.wait() }
        let status = p.wait(seconds: 120)
        let stderr = (try? String(contentsOfFile: traces + "/worker.err", encoding: .utf8)) ?? ""
        guard let status else {
            let log = (try? String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)) ?? ""
            return XCTFail("the run did not end within 120 s\n--- worker:\n\(stderr)\n--- coordinator:\n\(log)")
        }
        XCTAssertEqual(status, 0, stderr)
        XCTAssertTrue(stderr.contains("cannot read the coordinator's shared memory"), stderr)
        XCTAssertTrue(stderr.contains("worker other-user-2 joined"), "both processes started: \(stderr)")
        XCTAssertEqual(coord.wait(), 0)
        let log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
        XCTAssertTrue(log.contains("worker other-user: results and weights through the socket from now on"), log)
        XCTAssertTrue(log.contains("finished 12 iterations"), log)
        let fetches = try Trace.read(traces + "/worker.jsonl").filter { $0.event == .fetch }.count
        XCTAssertLessThanOrEqual(fetches, 2, "the worker fetched weights \(fetches) times in 12 iterations")
    }

    /// `train --workers 2` runs one host agent (`local`) with two processes
    /// (`local-1`, `local-2`). The agent notices a process die, re-queues its
    /// units at once and starts it again; `train` does the same for the agent.
    /// No wait for a timeout, and the weights do not change.
    func testTrainStartsAKilledWorkerAgain() throws {
        let args = ["--data", DistributedTests.data, "--set", "maml.iterations=300"] + small
        let whole = DistributedTests.dir + "/kill-whole", run = DistributedTests.dir + "/kill"
        XCTAssertEqual(try metatrain(["train", "--run-dir", whole, "--workers", "1"] + args).status, 0)
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        let p = try startDetached(["train", "--run-dir", run, "--workers", "2"] + args, stderr: run + "/train.err")
        defer { p.killGroup(); p.wait() }
        /// The parent of a process (nil once it is gone).
        func parent(_ pid: Int32) -> Int32? {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return nil }
            return Int32(stat[stat.index(close, offsetBy: 2)...].split(separator: " ")[1])
        }
        /// The process below train running `worker --name NAME` (its child, or a child of its host agent).
        func localWorker(_ name: String) -> Int32? {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            return entries.compactMap { Int32($0) }.first { pid in
                guard let up = parent(pid), up == p.pid || parent(up) == p.pid,
                    let raw = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))
                else { return false }
                let cmd = String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
                return cmd.contains(" worker ") && cmd.contains("--name \(name) ")
            }
        }
        func read(_ f: String) -> String { (try? String(contentsOfFile: run + "/" + f, encoding: .utf8)) ?? "" }
        func iterations() -> Int { read("metrics.jsonl").split(separator: "\n").count }
        func waitUntil(_ what: String, _ condition: () -> Bool) {
            let deadline = Date().addingTimeInterval(60)
            while !condition() && Date() < deadline { Thread.sleep(forTimeInterval: 0.005) }
            XCTAssertTrue(condition(), what)
        }
        // Kill process local-2 once the run is under way: the agent starts it again.
        waitUntil("the run got going") { iterations() >= 20 && localWorker("local-2") != nil }
        let child = try XCTUnwrap(localWorker("local-2"), "no process local-2 below train \(p.pid)")
        kill(child, SIGKILL)
        waitUntil("local-2 was started again") { localWorker("local-2.1") != nil }
        // Then kill the agent itself: train starts it again, with new processes.
        let done = iterations()
        waitUntil("the run went on") { iterations() >= done + 20 }
        let agent = try XCTUnwrap(localWorker("local"), "no host agent below train \(p.pid)")
        kill(agent, SIGKILL)
        waitUntil("the agent was started again, with its processes") {
            localWorker("local.1") != nil && localWorker("local.1-1") != nil && localWorker("local.1-2") != nil
        }
        let survivors = ["local.1", "local.1-1", "local.1-2"].compactMap { localWorker($0) }
        XCTAssertEqual(p.wait(), 0)
        XCTAssertEqual(try bytes(run + "/final.h5"), try bytes(whole + "/final.h5"))
        let log = read("coordinator.log"), err = read("train.err")
        XCTAssertTrue(err.contains("worker local: worker local-2 (pid \(child)) was killed by signal 9; dropped"), err)
        XCTAssertTrue(err.contains("worker local: started local worker 2 again as local-2.1"), err)
        XCTAssertTrue(log.contains("worker local (pid \(agent)) was killed by signal 9; dropped"), log)
        XCTAssertTrue(log.contains("started local worker 1 again as local.1"), log)
        XCTAssertFalse(log.contains("silent for"), log)
        waitUntil("no process outlived train") { survivors.allSatisfy { kill($0, 0) != 0 } }
    }

    func testCtrlCStopsCoordinatorAndWorkersCleanly() throws {
        let run = DistributedTests.dir + "/interrupted"
        let args = ["--data", DistributedTests.data, "--workers", "2", "--set", "maml.iterations=100000"] + small
        let p = try startDetached(["train", "--run-dir", run] + args)
        let deadline = Date().addingTimeInterval(60)
        while ((try? String(contentsOfFile: run + "/metrics.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
            .count < 10
            && Date() < deadline
        { Thread.sleep(forTimeInterval: 0.01) }
        // One copy of the dataset on the host: the coordinator, the agent and both compute
        // processes each map the file rather than read it into memory of their own.
        let processes = [Int(p.pid)] + workerProcesses(connectedTo: run)
        XCTAssertEqual(processes.count, 4, "train, its host agent and 2 compute processes")
        for pid in processes {
            let maps = (try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)) ?? ""
            XCTAssertTrue(maps.contains(DistributedTests.data), "process \(pid) does not map the dataset")
        }
        kill(p.pid, SIGINT)
        XCTAssertEqual(p.wait(), 130)
        let log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
        XCTAssertTrue(log.contains("interrupted at iteration"), log)
        let gone = Date().addingTimeInterval(10)
        while workerProcesses(connectedTo: run).count > 0 && Date() < gone { Thread.sleep(forTimeInterval: 0.1) }
        XCTAssertEqual(workerProcesses(connectedTo: run), [], "workers still running after Ctrl-C")
        // The interruption left a checkpoint to resume from.
        let ckpts = try FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints")
        XCTAssertFalse(ckpts.isEmpty)
    }

    func testMismatchedDatasetAndProtocolAreRefusedOnBothSides() throws {
        let run = DistributedTests.dir + "/refuse"
        let coord = try startDetached(
            [
                "coordinator", "--data", DistributedTests.data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--set", "maml.iterations=5"
            ] + small)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        // Another dataset: fingerprint mismatch.
        var r = try metatrain([
            "synth", "--out", DistributedTests.dir + "/o.csv", "--users", "50", "--courses", "20", "--seed", "4"
        ])
        r = try metatrain([
            "prepare", "--events", DistributedTests.dir + "/o.csv", "--out", DistributedTests.dir + "/o.h5"
        ])
        r = try metatrain(["worker", "--connect", endpoint, "--data", DistributedTests.dir + "/o.h5"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains("dataset fingerprint mismatch"), r.stderr)
        // Another protocol version.
        r = try metatrain(["worker", "--connect", endpoint, "--data", DistributedTests.data, "--protocol-version", "99"]
        )
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(
            r.stderr.contains(
                "protocol version mismatch: worker speaks 99, coordinator speaks \(Envelope.protocolVersion)"), r.stderr
        )
        var log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
        XCTAssertTrue(log.contains("refused worker") && log.contains("dataset fingerprint"), log)
        XCTAssertTrue(log.contains("speaks protocol version 99"), log)
        // Garbage on the socket is logged and dropped; the coordinator keeps running and a good worker still trains.
        let ctx = ZMQContext()
        let junk = try ZMQSocket(ctx, .dealer)
        try junk.connect(endpoint)
        try junk.send([Array("GET / HTTP/1.1".utf8)])
        let v = Envelope.protocolVersion
        // A valid header, a truncated body.
        try junk.send([Array("MTRN".utf8) + [UInt8(v & 0xff), UInt8(v >> 8), 5, 3, 0, 0, 0]])
        try junk.send([[1, 2], [3, 4]]) // two frames
        func said(_ s: String) -> Bool {
            ((try? String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)) ?? "").contains(s)
        }
        XCTAssertTrue(eventually(within: 30) { said("not a metatrain message") && said("truncated message") })
        r = try metatrain(["worker", "--connect", endpoint, "--data", DistributedTests.data])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/final.h5"))
        log = try String(contentsOfFile: run + "/coordinator.log", encoding: .utf8)
        XCTAssertTrue(log.contains("not a metatrain message"), log)
        XCTAssertTrue(log.contains("truncated message"), log)
    }

    func testEarlyStoppingAfterPatienceEvaluations() throws {
        // No learning (outer_lr 0): the first validation is the best, the next two are not.
        let run = DistributedTests.dir + "/early"
        let r = try metatrain(
            ["train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "1"] + small
                + [
                    "--set", "maml.iterations=50", "--set", "maml.outer_lr=0", "--set", "eval.every=2", "--set",
                    "eval.patience=2"
                ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("early stop at iteration 6"), r.stderr)
        XCTAssertEqual(try CheckpointFile.read(run + "/final.h5").iteration, 6)
        XCTAssertEqual(try CheckpointFile.read(run + "/best.h5").iteration, 2)
    }

    func testWarmStartLoadsPretrainedWeightsAndChecksShapes() throws {
        let pre = DistributedTests.dir + "/pre"
        var r = try metatrain([
            "pretrain", "--data", DistributedTests.data, "--run-dir", pre, "--set", "pretrain.epochs=1",
            "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        // Zero iterations: final.h5 holds exactly the warm-start weights.
        let run = DistributedTests.dir + "/warm"
        r = try metatrain(
            ["train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "1"] + small
                + ["--set", "maml.iterations=0", "--set", "warm_start.checkpoint=\(pre)/best.h5"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(
            try CheckpointFile.read(run + "/final.h5").params.array,
            try CheckpointFile.read(pre + "/best.h5").params.array)
        // Frozen embeddings stay exactly the pretrained ones while the rest learns.
        let frozen = DistributedTests.dir + "/frozen"
        r = try metatrain(
            ["train", "--data", DistributedTests.data, "--run-dir", frozen, "--workers", "1"] + small
                + [
                    "--set", "maml.iterations=5", "--set", "warm_start.checkpoint=\(pre)/best.h5",
                    "--set", "warm_start.freeze_embeddings=true"
                ])
        XCTAssertEqual(r.status, 0, r.stderr)
        let a = try CheckpointFile.read(frozen + "/final.h5"), b = try CheckpointFile.read(pre + "/best.h5")
        let emb = a.layout["embedding.weight"].range
        XCTAssertEqual(Array(a.params.array[emb]), Array(b.params.array[emb]))
        XCTAssertNotEqual(Array(a.params.array[emb.upperBound...]), Array(b.params.array[emb.upperBound...]))
        // Another model size is refused with both shapes named.
        r = try metatrain(
            ["train", "--data", DistributedTests.data, "--run-dir", DistributedTests.dir + "/badwarm", "--workers", "1"]
                + small + ["--set", "model.hidden_dim=16", "--set", "warm_start.checkpoint=\(pre)/best.h5"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("warm-start checkpoint has E 8, H 12"), r.stderr)
    }

    /// Local processes that cannot run at all (each fails as it starts) are
    /// started again 3 times, then given up on: a host agent whose processes are
    /// all gone leaves, and `train` stops with an error once its own are gone too,
    /// instead of waiting for workers for ever.
    func testTrainStopsWhenNoLocalWorkerCanRun() throws {
        for n in [1, 2] {
            let run = DistributedTests.dir + "/nostart-\(n)"
            let p = try startDetached(
                [
                    "train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "\(n)",
                    "--set", "maml.iterations=5"
                ] + small, stderr: run + ".err", environment: ["METATRAIN_TEST_FAIL_AT_START": "1"])
            defer { p.killGroup(); p.wait() }
            let status = p.wait(seconds: 120)
            let err = (try? String(contentsOfFile: run + ".err", encoding: .utf8)) ?? ""
            XCTAssertEqual(status, 1, "train --workers \(n) did not stop: \(err)")
            XCTAssertTrue(err.contains("error: every local worker process ended, each started 4 times"), err)
        }
    }

    /// A unit that crashes the processes computing it (a trap, as on a bug that
    /// this unit's data hits) stops the run after two crashes, with an error
    /// that names its episodes and the processes, and keeps the last good
    /// checkpoint: with one plain worker (train restarts it, and it crashes
    /// again), and under a host agent (two of its processes crash, it gives the
    /// block back, and the coordinator, which has no other worker, stops).
    /// A crash is a fault signal; a process that is killed is no crash (see testTrainStartsAKilledWorkerAgain).
    func testAUnitThatCrashesWorkersTwiceStopsTheRun() throws {
        let seed = 20260107
        let episode = MetaBatchSampler(
            dataset: try DatasetFile.read(DistributedTests.data), seed: UInt64(seed), batchSize: 8
        )
        .batch(iteration: 6)[0]
        for n in [1, 2] {
            let run = DistributedTests.dir + "/crash-\(n)"
            let r = try metatrain(
                [
                    "train", "--data", DistributedTests.data, "--run-dir", run, "--workers", "\(n)",
                    "--set", "maml.iterations=40", "--set", "seed=\(seed)"
                ] + small,
                environment: ["METATRAIN_TEST_CRASH_ON_EPISODE": "\(episode)", "SWIFT_BACKTRACE": "enable=no"])
            XCTAssertEqual(r.status, 1, r.stderr)
            let error = r.stderr.split(separator: "\n").last { $0.hasPrefix("error: ") }.map(String.init) ?? ""
            XCTAssertTrue(error.contains("crashed the processes that computed it"), r.stderr)
            XCTAssertTrue(error.contains("(signal "), error)
            XCTAssertTrue(
                error.range(of: "episodes ([0-9]+,)*\(episode)[,)]", options: .regularExpression) != nil,
                "episode \(episode): \(error)")
            if n == 2 { XCTAssertTrue(error.contains("failed on worker local, the only one live"), error) }
            XCTAssertTrue(r.stderr.contains("kept the last good state"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/final.h5"))
        }
    }
}

/// A `metatrain` process started as the leader of its own process group, so a
/// test can SIGKILL it together with the workers it started.
struct GroupProcess {
    let pid: pid_t
    func killGroup() { kill(-pid, SIGKILL) }
    /// Waits and returns the exit status (or 128 + signal).
    @discardableResult
    func wait() -> Int32 {
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return GroupProcess.decode(status)
    }

    /// Waits at most `seconds`; nil if the process is still running then.
    func wait(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while Date() < deadline {
            if waitpid(pid, &status, WNOHANG) == pid { return GroupProcess.decode(status) }
            Thread.sleep(forTimeInterval: 0.02)
        }
        return nil
    }

    static func decode(_ status: Int32) -> Int32 { (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f) }
}

/// Starts `metatrain ARGS` in its own process group; its stderr goes to `stderr` (a file) if given. With a
/// `prefix` (e.g. `ip netns exec NS`) that command runs metatrain (it MUST exec it, keeping the pid).
/// `environment` is added to the child's environment only (never the test runner's).
func startDetached(
    _ args: [String], stderr: String? = nil, prefix: [String] = [], binary: String? = nil,
    environment: [String: String] = [:]
) throws -> GroupProcess {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP))
    posix_spawnattr_setpgroup(&attr, 0)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(
        &actions, 2, stderr ?? "/dev/null", stderr == nil ? O_WRONLY : O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let command = prefix + [binary ?? metatrainPath()] + args
    let argv = command.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var env = ProcessInfo.processInfo.environment
    for (k, v) in environment { env[k] = v }
    let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { envp.forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, command[0], &actions, &attr, argv, envp)
    guard rc == 0 else { throw NSError(domain: "posix_spawn failed", code: Int(rc)) }
    return GroupProcess(pid: pid)
}

/// Checks `condition` every 20 ms for up to `seconds`; whether it came to hold. Tests wait
/// on what they need to see, not for a fixed time; a test that must show something does
/// NOT happen waits for it (the failure) and expects this to return false.
@discardableResult
func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() >= deadline { return false }
        Thread.sleep(forTimeInterval: 0.02)
    }
    return true
}

/// The coordinator's endpoint, read from its log once it is listening.
func waitForEndpoint(_ log: String) throws -> String {
    let deadline = Date().addingTimeInterval(60)
    while Date() < deadline {
        if let text = try? String(contentsOfFile: log, encoding: .utf8), let r = text.range(of: "listening on ") {
            let rest = text[r.upperBound...]
            return String(rest.prefix { $0 != " " && $0 != "\n" })
        }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw NSError(domain: "coordinator did not start", code: 1)
}

/// Pids of `metatrain worker` processes whose command line mentions `needle`.
func workerProcesses(connectedTo needle: String) -> [Int] {
    let dataPath = needle.components(separatedBy: "/").dropLast().joined(separator: "/")
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { Int($0) }.filter { pid in
        guard let raw = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return false }
        let cmd = String(decoding: raw.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        return cmd.contains(" worker ") && cmd.contains(dataPath + "/data.h5")
    }
}

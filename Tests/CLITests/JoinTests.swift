import Foundation
import Kernels
import Storage
import XCTest

/// Separate `metatrain worker` processes joining, failing and leaving a real
/// coordinator: the joins race weight broadcasts, and a worker that fails or is
/// interrupted says goodbye so that its units are re-queued at once.
final class JoinTests: XCTestCase {
    static let dir = freshDir("join")
    /// A large vocabulary (9,000 courses) and many long-history users (75,000
    /// train episodes): every worker takes a while to open the dataset and a
    /// broadcast is 7 MB, which is what let a broadcast overtake a welcome.
    static let bigData = dir + "/big.h5"
    nonisolated(unsafe) static var prepared = false

    override func setUpWithError() throws {
        if JoinTests.prepared { return }
        XCTAssertEqual(
            try syntheticDataset(in: JoinTests.dir, name: "big", users: 6000, courses: 9000, seed: 5), JoinTests.bigData
        )
        let big = try DatasetFile.read(JoinTests.bigData)
        XCTAssertGreaterThan(big.nItems, 8_000, "a large vocabulary")
        JoinTests.prepared = true
    }

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// Many rounds of a coordinator and 2–3 separate workers (plain workers and
    /// host agents of two processes, alternately) started together
    /// (staggered by up to 0.9 s, as machines and loaders make them), through
    /// the socket and through shared memory. No worker may fail and no round may
    /// need the worker timeout (600 s here: a stall fails the round's deadline).
    func testSeparateWorkersJoiningTogetherNeverCrashOrStall() throws {
        var rounds = 0
        for socketOnly in [true, false] {
            for r in 0..<6 {
                let name = "round-\(socketOnly ? "socket" : "shm")-\(r)"
                let run = JoinTests.dir + "/" + name
                let coord = try startDetached([
                    "coordinator", "--data", JoinTests.bigData, "--run-dir", run,
                    "--bind", "tcp://127.0.0.1:0", "--worker-timeout", "600",
                    "--set", "maml.meta_batch_size=16", "--set", "maml.iterations=10",
                    "--set", "eval.every=100", "--set", "checkpoint.every=100"
                ])
                defer { coord.killGroup(); coord.wait() }
                let endpoint = try waitForEndpoint(run + "/coordinator.log")
                let n = 2 + r % 2
                let delays = (0..<n).map { k in Double((r * 7 + k * 3) % 10) / 10 }
                var workers: [(String, GroupProcess)] = []
                var started = 0.0
                for k in (0..<n).sorted(by: { delays[$0] < delays[$1] }) {
                    Thread.sleep(forTimeInterval: delays[k] - started)
                    started = delays[k]
                    let err = run + "-w\(k).err"
                    workers.append(
                        (
                            err,
                            try startDetached(
                                [
                                    "worker", "--connect", endpoint, "--data", JoinTests.bigData,
                                    "--name", "w\(k)", "--procs", "\(1 + (k + r) % 2)"
                                ]
                                    + (socketOnly ? ["--no-shared-memory"] : []),
                                stderr: err)
                        ))
                }
                defer { for (_, w) in workers { w.killGroup(); w.wait() } }
                let status = coord.wait(seconds: 120)
                let log = read(run + "/coordinator.log")
                XCTAssertEqual(status, 0, "\(name): coordinator did not finish in time\n\(log)")
                for (err, w) in workers {
                    XCTAssertEqual(w.wait(seconds: 20), 0, "\(name): \(err): \(read(err))")
                    XCTAssertFalse(read(err).contains("internal"), "\(name): \(read(err))")
                }
                XCTAssertTrue(log.contains("finished 10 iterations"), "\(name): \(log)")
                XCTAssertFalse(log.contains("silent for"), "\(name): \(log)")
                XCTAssertFalse(log.contains(" left ("), "\(name): a worker left\n\(log)")
                rounds += 1
            }
        }
        XCTAssertEqual(rounds, 12)
    }

    /// A worker that fails mid-run says goodbye with its error and a host agent
    /// that is interrupted (SIGTERM) says so, and stops its processes: the coordinator drops each at once and its
    /// units go to the remaining worker, with the worker timeout far away. The
    /// weights are those of a run that never lost a worker.
    func testFailingAndInterruptedWorkersSayGoodbyeAndTheirUnitsAreRequeuedAtOnce() throws {
        let small = try smallDataset()
        let args = [
            "--data", small, "--set", "maml.iterations=40", "--set", "model.embedding_dim=8", "--set",
            "model.hidden_dim=12",
            "--set", "maml.meta_batch_size=8", "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2",
            "--set", "eval.every=10", "--set", "eval.val_episodes=8", "--set", "checkpoint.every=100"
        ]
        let whole = JoinTests.dir + "/goodbye-whole"
        XCTAssertEqual(try metatrain(["train", "--run-dir", whole, "--workers", "1"] + args).status, 0)
        let run = JoinTests.dir + "/goodbye"
        let coord = try startDetached(
            ["coordinator", "--run-dir", run, "--bind", "tcp://127.0.0.1:0", "--worker-timeout", "600"] + args)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        func worker(_ name: String, _ extra: [String] = []) throws -> GroupProcess {
            try startDetached(
                ["worker", "--connect", endpoint, "--data", small, "--name", name] + extra, stderr: run + "-\(name).err"
            )
        }
        // The failing and the interrupted worker join first, so that they surely hold units.
        let failing = try worker("failing", ["--fail-after-units", "3", "--procs", "1"])
        let interrupted = try worker("interrupted", ["--procs", "2"])
        defer { failing.killGroup(); interrupted.killGroup() }
        let deadline = Date().addingTimeInterval(60)
        while !(read(run + "/coordinator.log").contains("host agent interrupted of 2 processes joined")
            && read(run + "/coordinator.log").contains("worker failing joined")) && Date() < deadline
        {
            Thread.sleep(forTimeInterval: 0.01)
        }
        kill(interrupted.pid, SIGTERM)
        XCTAssertEqual(interrupted.wait(seconds: 20), 130)
        XCTAssertEqual(failing.wait(seconds: 60), 1)
        XCTAssertTrue(
            read(run + "-failing.err").contains("injected failure computing unit"),
            read(run + "-failing.err"))
        // Only now does a worker join that can finish the run.
        let steady = try worker("steady", ["--procs", "2"])
        defer { steady.killGroup() }
        let status = coord.wait(seconds: 120)
        let log = read(run + "/coordinator.log")
        XCTAssertEqual(status, 0, log)
        XCTAssertEqual(steady.wait(seconds: 20), 0)
        XCTAssertTrue(log.contains("worker interrupted left (interrupted); dropped"), log)
        XCTAssertTrue(log.contains("worker failing left (injected failure computing unit"), log)
        XCTAssertFalse(log.contains("silent for"), log)
        // Every join names the kernels this machine's OpenBLAS picked; all workers here share them.
        XCTAssertTrue(log.contains("host agent steady of 2 processes joined (1 live; OpenBLAS "), log)
        XCTAssertFalse(log.contains("warning: worker"), log)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: whole + "/final.h5")))
    }

    /// A worker runs this CPU's own kernel family even where OpenBLAS falls back to a generic
    /// one (`BLAS.kernels`, as this test process does); OPENBLAS_CORETYPE pins another, and the
    /// coordinator warns once that two workers run different kernels.
    func testWorkersRunTheCPUsOwnKernelsUnlessPinned() throws {
        if BLAS.kernels.pinned { throw XCTSkip("OPENBLAS_CORETYPE is set for the tests; nothing to choose") }
        let own = BLAS.kernels.runs, other = own == "Prescott" ? "Nehalem" : "Prescott"
        let small = try smallDataset()
        let run = JoinTests.dir + "/kernels"
        let coord = try startDetached([
            "coordinator", "--data", small, "--run-dir", run, "--bind", "tcp://127.0.0.1:0", "--set",
            "maml.iterations=100000", "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12"
        ])
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        func worker(_ name: String, prefix: [String] = [], environment: [String: String] = [:]) throws -> GroupProcess {
            try startDetached(
                ["worker", "--connect", endpoint, "--data", small, "--name", name, "--procs", "1"],
                stderr: run + "-\(name).err", prefix: prefix, environment: environment)
        }
        // This test process set OPENBLAS_CORETYPE when it settled its own kernels: unset for the worker.
        let first = try worker("own", prefix: ["/usr/bin/env", "-u", "OPENBLAS_CORETYPE"])
        defer { first.killGroup(); first.wait() }
        let log = { self.read(run + "/coordinator.log") }
        XCTAssertTrue(eventually(within: 30) { log().contains("worker own joined") }, log() + read(run + "-own.err"))
        XCTAssertTrue(log().contains("worker own joined (1 live; OpenBLAS \(own) on "), log())
        let second = try worker("pinned", environment: ["OPENBLAS_CORETYPE": other])
        defer { second.killGroup(); second.wait() }
        XCTAssertTrue(
            eventually(within: 30) { log().contains("warning: worker pinned runs OpenBLAS \(other) on ") },
            log() + read(run + "-pinned.err"))
        XCTAssertTrue(log().contains("worker pinned joined (2 live; OpenBLAS \(other) on "), log())
    }

    /// A coordinator without workers says so once, not every second.
    func testNoWorkersIsSaidOnce() throws {
        let small = try smallDataset()
        let run = JoinTests.dir + "/lonely"
        let coord = try startDetached([
            "coordinator", "--data", small, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
            "--set", "maml.iterations=2", "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12"
        ])
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        func said() -> Int { read(run + "/coordinator.log").components(separatedBy: "no worker connected").count - 1 }
        XCTAssertTrue(eventually(within: 60) { said() >= 1 })
        // Once, not every second: a second line within the next 3.5 s (3 ticks) is the failure waited for.
        XCTAssertFalse(eventually(within: 3.5) { said() > 1 }, read(run + "/coordinator.log"))
        let log = read(run + "/coordinator.log")
        XCTAssertTrue(log.contains("waiting for workers (metatrain worker --connect \(endpoint) --data DATASET)"), log)
        let w = try metatrain(["worker", "--connect", endpoint, "--data", small])
        XCTAssertEqual(w.status, 0, w.stderr)
        XCTAssertEqual(coord.wait(seconds: 60), 0)
    }

    func smallDataset() throws -> String { try syntheticDataset(in: JoinTests.dir, name: "small") }
}

import Foundation
import Link
import Runtime
import XCTest

/// Liveness in seconds (docs/PROTOCOL.md): heartbeats flow while workers
/// compute, so a stopped, killed or frozen worker costs seconds, not minutes;
/// a worker that heartbeats but never finishes loses its units; a worker
/// notices a dead coordinator in seconds and joins a resumed one by itself.
/// Every run still ends with the weights of an undisturbed one.
final class LivenessTests: XCTestCase {
    static let dir = freshDir("liveness")
    let args = [
        "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12", "--set", "maml.meta_batch_size=8",
        "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2", "--set", "eval.every=100", "--set",
        "eval.val_episodes=8",
        "--set", "checkpoint.every=50", "--set", "maml.iterations=600"
    ]

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }
    func iterations(_ run: String) -> Int { read(run + "/metrics.jsonl").split(separator: "\n").count }
    func waitFor(_ seconds: Double, _ what: String, _ condition: () -> Bool) -> Double? {
        let start = Date(), deadline = start.addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { XCTFail("timed out waiting for \(what)"); return nil }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return Date().timeIntervalSince(start)
    }

    func reference() throws -> (data: String, final: Data) {
        let data = try syntheticDataset(in: LivenessTests.dir)
        let whole = LivenessTests.dir + "/whole"
        if !FileManager.default.fileExists(atPath: whole + "/final.h5") {
            let r = try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + args)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        return (data, try bytes(whole + "/final.h5"))
    }

    /// SIGSTOP, then SIGKILL, of separate workers: each is dropped and its units re-issued within 5 s.
    func testAStoppedOrKilledWorkerCostsSeconds() throws {
        // Long enough that the other worker is still at it when the victim's silence runs out.
        let args = self.args.map { $0 == "maml.iterations=600" ? "maml.iterations=4000" : $0 }
        let data = try syntheticDataset(in: LivenessTests.dir)
        let whole = LivenessTests.dir + "/whole-long"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + args).status, 0)
        let final = try bytes(whole + "/final.h5")
        for (signal, name) in [(SIGSTOP, "stop"), (SIGKILL, "kill")] {
            let run = LivenessTests.dir + "/" + name
            let coord = try startDetached(
                ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args)
            defer { coord.killGroup(); coord.wait() }
            let endpoint = try waitForEndpoint(run + "/coordinator.log")
            let victim = try startDetached([
                "worker", "--connect", endpoint, "--data", data, "--name", "victim", "--procs", "1"
            ])
            let other = try startDetached([
                "worker", "--connect", endpoint, "--data", data, "--name", "other", "--procs", "1"
            ])
            defer { for w in [victim, other] { kill(w.pid, SIGCONT); w.killGroup(); w.wait() } }
            _ = waitFor(60, "both workers and 50 iterations") {
                read(run + "/coordinator.log").contains("worker victim joined")
                    && read(run + "/coordinator.log").contains("worker other joined")
                    && iterations(run) >= 50
            }
            kill(victim.pid, signal)
            let took = waitFor(30, "the victim to be dropped") {
                read(run + "/coordinator.log").contains("worker victim silent for")
            }
            XCTAssertLessThan(took ?? 99, 5, "\(name): dropped \(took ?? -1) s after the signal")
            if signal == SIGSTOP { kill(victim.pid, SIGCONT) } // it comes back and joins again
            XCTAssertEqual(coord.wait(seconds: 120), 0, read(run + "/coordinator.log"))
            XCTAssertEqual(try bytes(run + "/final.h5"), final, name)
        }
    }

    /// A worker that keeps heartbeating but never finishes its unit loses it to
    /// the unit's deadline (from measured unit times), and is not dropped.
    func testAWorkerThatNeverFinishesLosesItsUnits() throws {
        let (data, final) = try reference()
        let run = LivenessTests.dir + "/hang"
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let hung = try startDetached([
            "worker", "--connect", endpoint, "--data", data, "--name", "hung", "--procs", "1",
            "--hang-after-units", "5"
        ])
        defer { hung.killGroup(); hung.wait() }
        _ = waitFor(30, "the hung worker to join") { read(run + "/coordinator.log").contains("worker hung joined") }
        let honest = try startDetached([
            "worker", "--connect", endpoint, "--data", data, "--name", "honest", "--procs", "1"
        ])
        defer { honest.killGroup(); honest.wait() }
        XCTAssertEqual(coord.wait(seconds: 120), 0, read(run + "/coordinator.log"))
        let log = read(run + "/coordinator.log")
        XCTAssertTrue(
            log.contains("worker hung has held unit") && log.contains("past its deadline of 5s; it goes out again"), log
        )
        XCTAssertFalse(log.contains("worker hung silent for"), "it heartbeats: \(log)")
        XCTAssertEqual(try bytes(run + "/final.h5"), final)
    }

    /// The coordinator is killed: a worker notices within 5 s, keeps saying
    /// hello with backoff, and joins the coordinator resumed on its endpoint.
    func testAWorkerNoticesADeadCoordinatorAndJoinsTheResumedOne() throws {
        let (data, final) = try reference()
        let run = LivenessTests.dir + "/dead"
        let first = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args)
        defer { first.killGroup(); first.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let err = LivenessTests.dir + "/dead-worker.err"
        let worker = try startDetached(
            ["worker", "--connect", endpoint, "--data", data, "--name", "w", "--procs", "1", "--verbose"],
            stderr: err)
        defer { worker.killGroup(); worker.wait() }
        _ = waitFor(60, "a whole checkpoint") {
            ((try? FileManager.default.contentsOfDirectory(atPath: run + "/checkpoints")) ?? []).contains {
                $0.hasPrefix("iter-")
            }
        }
        first.killGroup(); first.wait()
        let took = waitFor(30, "the worker to notice") { read(err).contains("no word from the coordinator for") }
        XCTAssertLessThan(took ?? 99, 5, "noticed \(took ?? -1) s after the coordinator died")
        let second = try metatrain(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", endpoint, "--resume"] + args)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(worker.wait(seconds: 20), 0, "the worker followed the resumed run to its end")
        XCTAssertEqual(try bytes(run + "/final.h5"), final)
    }

    /// 20 random SIGKILL and SIGSTOP events against separate workers over one
    /// run (a killed worker is replaced, a stopped one continued after 0.5–2 s):
    /// the run ends with the weights of an undisturbed one, so no unit was lost
    /// or counted twice, and every result the coordinator counted was for a
    /// unit it had sent.
    func testTwentyRandomKillsAndStopsLeaveTheWeightsAlone() throws {
        let data = try syntheticDataset(in: LivenessTests.dir)
        let chaosArgs = args.map { $0 == "maml.iterations=600" ? "maml.iterations=5000" : $0 }
        let whole = LivenessTests.dir + "/chaos-whole"
        XCTAssertEqual(
            try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + chaosArgs).status, 0)
        let run = LivenessTests.dir + "/chaos"
        let coord = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--trace", LivenessTests.dir + "/chaos-trace.jsonl"
            ] + chaosArgs)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        var spawned = 0
        func worker() throws -> GroupProcess {
            spawned += 1
            return try startDetached([
                "worker", "--connect", endpoint, "--data", data, "--name", "c\(spawned)", "--procs", "1"
            ])
        }
        var workers = try (0..<3).map { _ in try worker() }
        var all = workers
        defer { for w in all { kill(w.pid, SIGCONT); w.killGroup(); w.wait() } }
        var state: UInt64 = 20_261_202
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407; return Int(state >> 33) % n
        }
        _ = waitFor(60, "the run to get going") { iterations(run) >= 20 }
        var kills = 0, stops = 0, exited: Int32?
        for _ in 0..<20 {
            if exited == nil { exited = coord.wait(seconds: 0) }
            guard exited == nil else { break }
            Thread.sleep(forTimeInterval: 0.2 + Double(next(10)) / 20)
            let i = next(workers.count), victim = workers[i]
            if next(2) == 0 {
                kill(victim.pid, SIGKILL); victim.wait(); kills += 1
                workers[i] = try worker()
                all.append(workers[i])
            } else {
                kill(victim.pid, SIGSTOP); stops += 1
                Thread.sleep(forTimeInterval: 0.5 + Double(next(15)) / 10)
                kill(victim.pid, SIGCONT)
            }
        }
        XCTAssertEqual(kills + stops, 20, "all 20 events happened while the run went on")
        XCTAssertEqual(exited ?? coord.wait(seconds: 300), 0, read(run + "/coordinator.log"))
        XCTAssertEqual(
            try bytes(run + "/final.h5"), try bytes(whole + "/final.h5"),
            "\(kills) kills and \(stops) stops changed the weights")
        // Every counted result answers a unit that was sent out.
        let trace = try Trace.read(LivenessTests.dir + "/chaos-trace.jsonl")
        let sent = Set(trace.filter { $0.event == .send }.map(\.n))
        XCTAssertTrue(Set(trace.filter { $0.event == .result }.map(\.n)).isSubset(of: sent))
    }

    /// Host agents rejoin while their blocks run: the coordinator is frozen past
    /// the agents' liveness (they join again holding blocks and queued inner
    /// units), then one agent is frozen past the coordinator's (it is dropped,
    /// comes back to "unknown worker" and joins again while its processes still
    /// compute). Twice each; the run ends with the weights of an undisturbed one.
    func testHostAgentsRejoinWhileTheirBlocksRun() throws {
        let data = try syntheticDataset(in: LivenessTests.dir)
        let longArgs = args.map { $0 == "maml.iterations=600" ? "maml.iterations=4000" : $0 }
        let whole = LivenessTests.dir + "/agents-whole"
        XCTAssertEqual(
            try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + longArgs).status, 0)
        let run = LivenessTests.dir + "/agents"
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + longArgs)
        defer { kill(coord.pid, SIGCONT); coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let errs = ["a", "b"].map { LivenessTests.dir + "/agent-\($0).err" }
        let agents = try ["a", "b"].enumerated().map { i, name in
            try startDetached(
                ["worker", "--connect", endpoint, "--data", data, "--name", name, "--procs", "2", "--verbose"],
                stderr: errs[i])
        }
        defer { for a in agents { kill(a.pid, SIGCONT); a.killGroup(); a.wait() } }
        _ = waitFor(60, "both agents and 50 iterations") {
            let log = read(run + "/coordinator.log")
            return log.contains("host agent a of 2") && log.contains("host agent b of 2") && iterations(run) >= 50
        }
        for (victim, pause) in [(coord.pid, 4.0), (agents[0].pid, 4.0), (coord.pid, 3.6), (agents[0].pid, 4.4)] {
            guard coord.wait(seconds: 0) == nil else { break }
            kill(victim, SIGSTOP)
            Thread.sleep(forTimeInterval: pause)
            kill(victim, SIGCONT)
            Thread.sleep(forTimeInterval: 1.5)
        }
        XCTAssertEqual(coord.wait(seconds: 240), 0, read(run + "/coordinator.log"))
        let log = read(run + "/coordinator.log")
        XCTAssertTrue(log.contains("worker a silent for"), "agent a was frozen past its liveness: \(log)")
        XCTAssertTrue(read(errs[1]).contains("no word from the coordinator"), read(errs[1]))
        XCTAssertEqual(
            try bytes(run + "/final.h5"), try bytes(whole + "/final.h5"), "rejoining agents changed the weights")
        for (i, a) in agents.enumerated() { XCTAssertEqual(a.wait(seconds: 30), 0, read(errs[i])) }
    }
}

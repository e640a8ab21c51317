import Foundation
import XCTest

/// What a new user meets: a run directory is never replaced without a word, every
/// stop says how to continue, a worker that cannot get in says why, numbers keep
/// their digits, and counts are of processes and hosts.
final class EverydayUseTests: XCTestCase {
    static let dir = freshDir("everyday")
    let args = [
        "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12", "--set", "maml.meta_batch_size=8",
        "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2", "--set", "eval.every=4",
        "--set", "eval.val_episodes=8", "--set", "checkpoint.every=5"
    ]
    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// A finished run refuses a plain start (naming all three ways on and what it
    /// holds) and loses nothing; its last iteration is a checkpoint even off the
    /// checkpoint grid, so the command it prints extends it to the bits of a
    /// straight run; --overwrite says what it removes.
    func testAFinishedRunIsNeverOverwrittenWithoutAWordAndExtendsToAStraightRun() throws {
        let data = try syntheticDataset(in: EverydayUseTests.dir)
        let a = EverydayUseTests.dir + "/a", straight = EverydayUseTests.dir + "/straight"
        let base = ["--data", data, "--workers", "2"] + args
        var r = try metatrain(["train", "--run-dir", a, "--set", "maml.iterations=7"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: a + "/checkpoints/iter-000007.h5"), r.stderr)
        XCTAssertTrue(
            r.stderr.contains("the newest checkpoint is checkpoints/iter-000007.h5; train further with: "), r.stderr)
        let advice = r.stderr.components(separatedBy: "train further with: ").last!.prefix { $0 != "\n" }
        XCTAssertTrue(advice.hasSuffix("--resume --set maml.iterations=14"), String(advice))
        XCTAssertFalse(advice.contains("maml.iterations=7"), String(advice))
        let metrics = try bytes(a + "/metrics.jsonl"), final = try bytes(a + "/final.h5")

        r = try metatrain(["train", "--run-dir", a, "--set", "maml.iterations=3"] + base)
        XCTAssertEqual(r.status, 1)
        for word in [
            "already holds a run", "--resume", "--resume-or-start", "--overwrite", "metrics.jsonl", "final.h5",
            "newest iter-000007.h5"
        ] {
            XCTAssertTrue(r.stderr.contains(word), "missing \(word): \(r.stderr)")
        }
        XCTAssertEqual(try bytes(a + "/metrics.jsonl"), metrics)
        XCTAssertEqual(try bytes(a + "/final.h5"), final)
        // The coordinator refuses the same way (before binding anything).
        r = try metatrain(
            ["coordinator", "--run-dir", a, "--bind", "ipc:///tmp/mt-everyday-\(getpid())"]
                + base.filter { $0 != "--workers" && $0 != "2" })
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("already holds a run"), r.stderr)
        XCTAssertEqual(try bytes(a + "/metrics.jsonl"), metrics)

        // The printed command, as printed (through a shell), extends the run.
        let sh = Process()
        sh.executableURL = URL(fileURLWithPath: "/bin/sh")
        sh.arguments = ["-c", String(advice)]
        sh.standardOutput = FileHandle.nullDevice; sh.standardError = FileHandle.nullDevice
        try sh.run(); sh.waitUntilExit()
        XCTAssertEqual(sh.terminationStatus, 0)
        r = try metatrain(["train", "--run-dir", straight, "--set", "maml.iterations=14"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try bytes(a + "/final.h5"), try bytes(straight + "/final.h5"), "7 + 7 iterations = 14 at once")
        XCTAssertEqual(read(a + "/metrics.jsonl").split(separator: "\n").count, 14)

        // Metrics count processes and hosts, not connections; numbers keep every digit.
        let lines = read(straight + "/metrics.jsonl").split(separator: "\n")
        for line in lines {
            let j = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            XCTAssertEqual(j["processes"] as? Int, 2, String(line))
            XCTAssertEqual(j["hosts"] as? Int, 1, String(line))
            XCTAssertNil(j["workers"], String(line))
            let time = String(line).components(separatedBy: "\"time\":").last!.prefix { $0 != "," && $0 != "}" }
            XCTAssertFalse(time.contains("e"), "time \(time) lost its digits")
            XCTAssertGreaterThan(time.count, 10, "time \(time) lost its digits")
        }
        XCTAssertTrue(r.stderr.contains("2 processes on 1 host"), r.stderr)

        // --overwrite says what it removes, and the new run stands alone.
        r = try metatrain(["train", "--run-dir", a, "--overwrite", "--set", "maml.iterations=3"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(
            r.stderr.contains("removing \(a)'s earlier run to start afresh: config.yaml, metrics.jsonl"), r.stderr)
        XCTAssertEqual(read(a + "/metrics.jsonl").split(separator: "\n").count, 3)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: a + "/tb").count, 1)
        r = try metatrain(["train", "--run-dir", a, "--overwrite", "--resume"] + base)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("give one"), r.stderr)
    }

    /// Ctrl-C says which checkpoint it wrote and the exact command to continue, which works.
    func testCtrlCSaysTheCheckpointAndTheCommandToContinue() throws {
        let data = try syntheticDataset(in: EverydayUseTests.dir)
        let run = EverydayUseTests.dir + "/interrupted", log = EverydayUseTests.dir + "/interrupted.err"
        let p = try startDetached(
            ["train", "--data", data, "--run-dir", run, "--workers", "1", "--set", "maml.iterations=100000"] + args,
            stderr: log)
        defer { p.killGroup(); p.wait() }
        let deadline = Date().addingTimeInterval(120)
        while read(run + "/metrics.jsonl").split(separator: "\n").count < 6 && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
        }
        kill(p.pid, SIGINT)
        XCTAssertEqual(p.wait(seconds: 60), 130)
        let text = read(log)
        XCTAssertTrue(text.contains("interrupted at iteration "), text)
        XCTAssertTrue(text.contains("the newest checkpoint is checkpoints/iter-"), text)
        guard let command = text.components(separatedBy: "continue with: ").last?.prefix(while: { $0 != "\n" }) else {
            return XCTFail(text)
        }
        XCTAssertTrue(command.hasSuffix("--resume"), String(command))
        // Continue it as told (shorter, so that it ends).
        let sh = Process(), err = Pipe()
        sh.executableURL = URL(fileURLWithPath: "/bin/sh")
        sh.arguments = ["-c", command + " --set maml.iterations=12"]
        sh.standardOutput = FileHandle.nullDevice; sh.standardError = err
        try sh.run()
        let said = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        sh.waitUntilExit()
        XCTAssertEqual(sh.terminationStatus, 0, said)
        XCTAssertTrue(said.contains("resumed from "), said)
    }

    /// A worker that cannot get in says why within seconds (naming the flag), and the
    /// coordinator logs a peer that offered no key; key files given the wrong way round are refused as such.
    func testAWorkerSaysWhyItCannotGetIn() throws {
        let data = try syntheticDataset(in: EverydayUseTests.dir)
        let keys = EverydayUseTests.dir + "/keys"
        for k in ["coordinator", "host1", "stranger"] {
            XCTAssertEqual(try metatrain(["keygen", "--out", keys + "/" + k]).status, 0)
        }
        try FileManager.default.createDirectory(atPath: keys + "/authorized", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: keys + "/host1.pub", toPath: keys + "/authorized/host1.pub")
        var r = try metatrain([
            "worker", "--connect", "tcp://127.0.0.1:9", "--data", data, "--key", keys + "/host1.pub",
            "--coordinator-key", keys + "/coordinator.pub"
        ])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("host1.pub is a public key; --key takes the secret half"), r.stderr)
        r = try metatrain([
            "worker", "--connect", "tcp://127.0.0.1:9", "--data", data, "--key", keys + "/host1.secret",
            "--coordinator-key", keys + "/coordinator.secret"
        ])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("coordinator.secret is a secret key; give the public half"), r.stderr)

        let run = EverydayUseTests.dir + "/keyed", clog = EverydayUseTests.dir + "/keyed.err"
        let coord = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0", "--key",
                keys + "/coordinator.secret", "--authorized-keys", keys + "/authorized", "--set",
                "maml.iterations=100000"
            ] + args, stderr: clog)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let cases: [(String, [String], String)] = [
            ("keyless", [], "requires CURVE keys: give --key WORKER.secret and --coordinator-key"),
            (
                "stranger", ["--key", keys + "/stranger.secret", "--coordinator-key", keys + "/coordinator.pub"],
                "refused this worker's key"
            ),
            (
                "wrongserver", ["--key", keys + "/host1.secret", "--coordinator-key", keys + "/stranger.pub"],
                "is --coordinator-key the public half of the coordinator's --key?"
            ),
            ("nobody", ["--connect-override"], "cannot reach the coordinator")
        ]
        var workers: [GroupProcess] = []
        defer { for w in workers { w.killGroup(); w.wait() } }
        for (name, extra, _) in cases {
            let target = extra == ["--connect-override"] ? "tcp://127.0.0.1:9" : endpoint
            workers.append(
                try startDetached(
                    ["worker", "--connect", target, "--data", data, "--procs", "1", "--name", name]
                        + extra.filter { $0 != "--connect-override" }, stderr: EverydayUseTests.dir + "/\(name).err"))
        }
        for (name, _, expected) in cases {
            let path = EverydayUseTests.dir + "/\(name).err"
            let deadline = Date().addingTimeInterval(10)
            while !read(path).contains(expected) && Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
            XCTAssertTrue(read(path).contains(expected), "\(name) within 10 s: \(read(path))")
            XCTAssertEqual(read(path).components(separatedBy: "\n").filter { !$0.isEmpty }.count, 1, read(path))
        }
        let deadline = Date().addingTimeInterval(10)
        while !read(run + "/coordinator.log").contains("the peer offered no CURVE key") && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertTrue(
            read(run + "/coordinator.log").contains("the peer offered no CURVE key"), read(run + "/coordinator.log"))
        XCTAssertTrue(
            read(run + "/coordinator.log").contains("--key WORKER.secret --coordinator-key COORDINATOR.pub)"),
            read(run + "/coordinator.log"))
        // A listed worker says once that it joined, and once that it left.
        let good = try metatrain(
            [
                "worker", "--connect", endpoint, "--data", data, "--procs", "1", "--name", "good", "--key",
                keys + "/host1.secret", "--coordinator-key", keys + "/coordinator.pub", "--coordinator-timeout", "5"
            ], stopAfter: 8)
        XCTAssertTrue(good.stderr.contains("worker good: joined run "), good.stderr)
        XCTAssertTrue(good.stderr.contains("worker good: left: "), good.stderr)
    }

    /// A warm start whose checkpoint is missing names the key and how to make one, and touches nothing.
    func testAMissingWarmStartNamesTheKeyAndHowToMakeIt() throws {
        let data = try syntheticDataset(in: EverydayUseTests.dir)
        let run = EverydayUseTests.dir + "/warm"
        let r = try metatrain(
            ["train", "--data", data, "--run-dir", run, "--set", "warm_start.checkpoint=nowhere/best.h5"] + args)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(
            r.stderr.contains(
                "error: warm_start.checkpoint: nowhere/best.h5 does not exist; make it with `metatrain pretrain"),
            r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/config.yaml"))
    }

    /// bench (short) and the everyday commands, several times each: no crash report, ever.
    func testCommandsAndBenchExitWithoutACrash() throws {
        let data = try syntheticDataset(in: EverydayUseTests.dir)
        for i in 0..<2 {
            let b = try metatrain([
                "bench", "--seconds", "0.05", "--users", "300", "--meta-iterations", "3", "--rounds", "1"
            ])
            XCTAssertEqual(b.status, 0, b.stderr)
            XCTAssertFalse(crashed(b.stdout + b.stderr), "bench \(i): \(b.stderr)")
            let t = try metatrain(
                [
                    "train", "--data", data, "--run-dir", EverydayUseTests.dir + "/clean-\(i)", "--workers", "2",
                    "--set", "maml.iterations=5"
                ] + args)
            XCTAssertEqual(t.status, 0, t.stderr)
            XCTAssertFalse(crashed(t.stdout + t.stderr), "train \(i): \(t.stderr)")
        }
    }

    func crashed(_ text: String) -> Bool {
        text.contains("Program crashed") || text.contains("Fatal error") || text.contains("Segmentation fault")
    }
}

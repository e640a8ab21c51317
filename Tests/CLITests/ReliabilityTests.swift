import Foundation
import XCTest

/// Run directories that survive what happens to real runs: a full disk, a
/// damaged checkpoint, a second coordinator started on the same directory.
final class ReliabilityTests: XCTestCase {
    static let dir = freshDir("reliability")
    let args = [
        "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12", "--set", "maml.meta_batch_size=8",
        "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2", "--set", "eval.every=1000", "--set",
        "eval.val_episodes=8"
    ]

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// A 2 MB file system (tmpfs) mounted at `dir`; call what it returns to unmount it. The
    /// test is skipped where that cannot be done (it needs root).
    func smallDisk(_ dir: String) throws -> () -> Void {
        guard getuid() == 0 else { throw XCTSkip("mounting a small file system needs root") }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let mounted = Process()
        mounted.executableURL = URL(fileURLWithPath: "/bin/mount")
        mounted.arguments = ["-t", "tmpfs", "-o", "size=2m", "tmpfs", dir]
        try mounted.run(); mounted.waitUntilExit()
        guard mounted.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here") }
        return {
            let u = Process(); u.executableURL = URL(fileURLWithPath: "/bin/umount"); u.arguments = [dir]
            try? u.run(); u.waitUntilExit()
        }
    }
    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    /// `prepare` on a disk too small for the dataset, or for the sort's spill file: a clear
    /// error naming the file and the full file system, exit 1 (no crash), the dataset that was
    /// there left as it was, and no temporary or spill file left behind.
    func testPrepareOnAFullDiskLeavesNothingHalfWritten() throws {
        let dir = ReliabilityTests.dir
        var r = try metatrain(["synth", "--out", dir + "/big.csv", "--users", "3000", "--courses", "200"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(["synth", "--out", dir + "/small.csv", "--users", "30", "--courses", "20"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let disk = dir + "/prepare-disk"
        let unmount = try smallDisk(disk)
        defer { unmount() }
        let out = disk + "/data.h5"
        r = try metatrain(["prepare", "--events", dir + "/small.csv", "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        let before = try bytes(out)
        // The dataset does not fit (its spill file goes elsewhere); then the spill file does not.
        for (extra, what) in [
            (["--spill-dir", dir], "data.h5"), (["--memory", "1M", "--spill-dir", disk], "spill file")
        ] {
            r = try metatrain(["prepare", "--events", dir + "/big.csv", "--out", out] + extra)
            XCTAssertEqual(r.status, 1, "\(extra): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(what), "\(extra): \(r.stderr)")
            XCTAssertTrue(
                r.stderr.contains("full") || r.stderr.contains("No space left"), "\(extra): \(r.stderr)")
            XCTAssertEqual(try bytes(out), before, "the dataset that was there is left as it was")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: disk), ["data.h5"], "\(extra)")
        }
    }

    /// The disk fills up mid-run: the checkpoint being written is abandoned,
    /// the previous ones stay whole, the run ends with a clear error and a
    /// non-zero exit (no crash), and once there is room it resumes to the
    /// weights of a run that never ran out.
    func testAFullDiskKeepsThePreviousCheckpointAndTheRunResumes() throws {
        let data = try syntheticDataset(in: ReliabilityTests.dir)
        let run = ["--set", "maml.iterations=2000", "--set", "checkpoint.every=20"] + args
        let whole = ReliabilityTests.dir + "/whole"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + run).status, 0)
        let disk = ReliabilityTests.dir + "/disk"
        let unmount = try smallDisk(disk)
        defer { unmount() }
        let runDir = disk + "/run"
        let p = try startDetached(
            ["train", "--data", data, "--run-dir", runDir, "--workers", "1"] + run,
            stderr: ReliabilityTests.dir + "/full.err")
        defer { p.killGroup(); p.wait() }
        let deadline = Date().addingTimeInterval(60)
        while ((try? FileManager.default.contentsOfDirectory(atPath: runDir + "/checkpoints")) ?? []).count < 2
            && Date() < deadline
        {
            Thread.sleep(forTimeInterval: 0.01)
        }
        // Fill what is left.
        let filler = disk + "/filler"
        _ = FileManager.default.createFile(atPath: filler, contents: nil)
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: filler))
        while (try? h.write(contentsOf: Data(count: 4096))) != nil {}
        try h.close()
        let status = p.wait(seconds: 60)
        let err = read(ReliabilityTests.dir + "/full.err")
        XCTAssertEqual(status, 1, "a clear error and exit 1, not a crash: \(err)")
        // Whichever write meets the full disk first (a checkpoint, or a line of metrics.jsonl) says so.
        XCTAssertTrue(
            err.contains("error: \(runDir)") && (err.contains("is full") || err.contains("enough space")), err)
        let left = try FileManager.default.contentsOfDirectory(atPath: runDir + "/checkpoints")
        XCTAssertFalse(left.contains { $0.hasPrefix(".") }, "no temporary file left: \(left)")
        // Room again: the run resumes from what it kept and ends as if nothing happened.
        try FileManager.default.removeItem(atPath: filler)
        let resumed = try metatrain(["train", "--data", data, "--run-dir", runDir, "--workers", "1", "--resume"] + run)
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        XCTAssertEqual(try bytes(runDir + "/final.h5"), try bytes(whole + "/final.h5"))
    }

    /// `--resume` skips a damaged newest checkpoint (truncated, or a flipped
    /// byte in a tensor that only the checksum catches), says so, and resumes
    /// from the one before.
    func testResumeSkipsDamagedCheckpoints() throws {
        let data = try syntheticDataset(in: ReliabilityTests.dir)
        let run = ["--set", "maml.iterations=12", "--set", "checkpoint.every=4", "--set", "checkpoint.keep=3"] + args
        let whole = ReliabilityTests.dir + "/resume-whole"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + run).status, 0)
        let damaged = ReliabilityTests.dir + "/damaged"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", damaged, "--workers", "1"] + run).status, 0)
        try FileManager.default.removeItem(atPath: damaged + "/final.h5")
        // iter-12 truncated, iter-8 with one tensor byte flipped: only iter-4 is whole.
        let c12 = damaged + "/checkpoints/iter-000012.h5", c8 = damaged + "/checkpoints/iter-000008.h5"
        try bytes(c12).prefix(5000).write(to: URL(fileURLWithPath: c12))
        var b8 = try bytes(c8)
        let params = try bytes(whole + "/checkpoints/iter-000008.h5")
        XCTAssertEqual(b8, params, "same run, same bytes")
        // Flip a byte inside the first tensor's data: find 16 bytes of the embedding after the header.
        let at = b8.count / 3
        b8[at] ^= 0x40
        try b8.write(to: URL(fileURLWithPath: c8))
        let r = try metatrain(["train", "--data", data, "--run-dir", damaged, "--workers", "1", "--resume"] + run)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("warning: skipped \(c12) for --resume"), r.stderr)
        XCTAssertTrue(r.stderr.contains("warning: skipped \(c8) for --resume"), r.stderr)
        XCTAssertTrue(read(damaged + "/coordinator.log").contains("resumed from \(damaged)/checkpoints/iter-000004.h5"))
        XCTAssertEqual(try bytes(damaged + "/final.h5"), try bytes(whole + "/final.h5"))
        // With nothing whole left, --resume is an error rather than a fresh start.
        for f in try FileManager.default.contentsOfDirectory(atPath: damaged + "/checkpoints") {
            try Data("junk".utf8).write(to: URL(fileURLWithPath: damaged + "/checkpoints/" + f))
        }
        let none = try metatrain(["train", "--data", data, "--run-dir", damaged, "--workers", "1", "--resume"] + run)
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.stderr.contains("no checkpoint in checkpoints/ reads back whole"), none.stderr)
    }

    /// A second pretrain on a directory in use is refused, naming the holder,
    /// before it touches anything there (even with --overwrite).
    func testASecondPretrainOnARunDirectoryIsRefused() throws {
        let data = try syntheticDataset(in: ReliabilityTests.dir)
        let run = ReliabilityTests.dir + "/busy-pretrain"
        let first = try startDetached(["pretrain", "--data", data, "--run-dir", run, "--set", "pretrain.epochs=100000"])
        defer { first.killGroup(); first.wait() }
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: run + "/last.h5") && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: run + "/last.h5"), "the first pretrain wrote no epoch in 60 s")
        let second = try metatrain(["pretrain", "--data", data, "--run-dir", run, "--overwrite"])
        XCTAssertEqual(second.status, 1)
        XCTAssertTrue(
            second.stderr.contains("\(run) is in use by another run (process \(first.pid) on "), second.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/last.h5"), "the refused pretrain removed files")
    }

    /// A second coordinator on a run directory in use is refused and names the holder.
    func testASecondCoordinatorOnARunDirectoryIsRefused() throws {
        let data = try syntheticDataset(in: ReliabilityTests.dir)
        let run = ReliabilityTests.dir + "/busy"
        let first = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--set", "maml.iterations=100"
            ] + args)
        defer { first.killGroup(); first.wait() }
        _ = try waitForEndpoint(run + "/coordinator.log")
        let second = try metatrain(
            ["train", "--data", data, "--run-dir", run, "--workers", "1", "--set", "maml.iterations=100"] + args)
        XCTAssertEqual(second.status, 1)
        XCTAssertTrue(
            second.stderr.contains("\(run) is in use by another run (process \(first.pid) on "), second.stderr)
        // Once the holder is gone (killed outright, even), the directory is free again.
        first.killGroup(); first.wait()
        let third = try metatrain(
            [
                "train", "--data", data, "--run-dir", run, "--workers", "1", "--resume-or-start", "--set",
                "maml.iterations=100"
            ] + args)
        XCTAssertEqual(third.status, 0, third.stderr)
    }

    /// Run directories never surprise: --resume without a checkpoint is an error
    /// that says so; a finished run is extended by raising maml.iterations on
    /// resume (to the weights of a run that was that long from the start), and
    /// the console says where it resumed from; a key that would change the
    /// weights is refused with its name and both values; --resume-or-start
    /// starts a fresh directory and continues one with checkpoints.
    func testResumeRules() throws {
        let data = try syntheticDataset(in: ReliabilityTests.dir)
        let base = ["--data", data, "--workers", "1", "--set", "checkpoint.every=5"] + args
        var r = try metatrain(["train", "--run-dir", ReliabilityTests.dir + "/nowhere", "--resume"] + base)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("nowhere does not exist; there is nothing to resume"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: ReliabilityTests.dir + "/nowhere/metrics.jsonl"))
        try FileManager.default.createDirectory(
            atPath: ReliabilityTests.dir + "/empty", withIntermediateDirectories: true)
        r = try metatrain(["train", "--run-dir", ReliabilityTests.dir + "/empty", "--resume"] + base)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("empty has no checkpoint to resume from"), r.stderr)

        let long = ReliabilityTests.dir + "/long", short = ReliabilityTests.dir + "/short"
        XCTAssertEqual(try metatrain(["train", "--run-dir", long, "--set", "maml.iterations=30"] + base).status, 0)
        XCTAssertEqual(try metatrain(["train", "--run-dir", short, "--set", "maml.iterations=20"] + base).status, 0)
        // Metrics also go to TensorBoard (RUN/tb), one event file per process that wrote to the run.
        let events = try FileManager.default.contentsOfDirectory(atPath: long + "/tb")
        XCTAssertEqual(events.count, 1); XCTAssertTrue(events[0].hasPrefix("events.out.tfevents."), "\(events)")
        XCTAssertGreaterThan(try bytes(long + "/tb/" + events[0]).count, 30 * 60)
        // TensorBoard itself (when installed) reads every iteration's meta-loss at its step.
        let script = """
            import sys
            try:
                from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
            except ImportError:
                sys.exit(3)
            ea = EventAccumulator(sys.argv[1]); ea.Reload()
            s = ea.Scalars("meta_loss")
            print(len(s), s[0].step, s[-1].step, "%.4f" % s[-1].value)
            """
        let tb = Process(), out = Pipe()
        let py = pythonCommand()
        tb.executableURL = URL(fileURLWithPath: py[0])
        tb.arguments = Array(py.dropFirst()) + ["-c", script, long + "/tb"]
        tb.standardOutput = out; tb.standardError = FileHandle.nullDevice
        if (try? tb.run()) != nil {
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            tb.waitUntilExit()
            if tb.terminationStatus == 3 {
                print("note: tensorboard is not installed; its reading of the event file was not checked")
            } else {
                let last = read(long + "/metrics.jsonl").split(separator: "\n").last.flatMap {
                    try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                }
                let loss = (last?["meta_loss"] as? Double).map { String(format: "%.4f", Float($0)) } ?? "?"
                XCTAssertEqual(text.trimmingCharacters(in: .whitespacesAndNewlines), "30 1 30 \(loss)")
            }
        }
        r = try metatrain(
            ["train", "--run-dir", short, "--resume", "--set", "maml.inner_lr=0.2", "--set", "maml.iterations=30"]
                + base)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(
            r.stderr.contains("cannot resume with another maml.inner_lr (checkpoint: 0.05, now: 0.2)")
                || r.stderr.contains("cannot resume with another maml.inner_lr"), r.stderr)
        XCTAssertTrue(r.stderr.contains("only maml.iterations, eval.every"), r.stderr)
        r = try metatrain(["train", "--run-dir", short, "--resume", "--set", "maml.iterations=30"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(
            r.stderr.contains("resumed from \(short)/checkpoints/iter-000020.h5 at iteration 20 of 30"), r.stderr)
        XCTAssertEqual(
            try bytes(short + "/final.h5"), try bytes(long + "/final.h5"), "20 then 10 more iterations = 30 at once")
        XCTAssertEqual(read(short + "/metrics.jsonl").split(separator: "\n").count, 30)
        // run.json keeps the first start and lists the resume, with where it resumed from.
        let record =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: short + "/run.json")))
            as! [String: Any]
        XCTAssertTrue((record["command"] as? [String] ?? []).contains("maml.iterations=20"), "\(record)")
        let resumes = record["resumes"] as? [[String: Any]] ?? []
        XCTAssertEqual(resumes.count, 1, "\(record)")
        XCTAssertEqual(resumes.first?["resumed_from"] as? String, short + "/checkpoints/iter-000020.h5")

        let auto = ReliabilityTests.dir + "/auto"
        r = try metatrain(["train", "--run-dir", auto, "--resume-or-start", "--set", "maml.iterations=10"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(r.stderr.contains("resumed from"), r.stderr)
        r = try metatrain(["train", "--run-dir", auto, "--resume-or-start", "--set", "maml.iterations=30"] + base)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("resumed from"), r.stderr)
        XCTAssertEqual(try bytes(auto + "/final.h5"), try bytes(long + "/final.h5"))
    }
}

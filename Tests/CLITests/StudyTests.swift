import Foundation
import XCTest

/// `metatrain study` end to end: real runs, real files, a killed study started again.
final class StudyTests: XCTestCase {
    /// Every method is FOMAML warm-started from its seed's pretrained GRU4Rec
    /// for 5 tiny steps. The baseline adapts to each learner with a rate that
    /// overfits the support set (inner_lr 0.5, 5 steps); "same" differs from it
    /// only by its seeds; "planted" adapts gently (inner_lr 0.0001), which is
    /// the advantage planted here: its few-shot ranks are better user after user.
    static let plan = """
        seeds: 2
        baseline: base
        set: [model.embedding_dim=8, model.hidden_dim=16, eval.sampled_negatives=10, maml.iterations=5,
              maml.outer_lr=0.0001, maml.meta_batch_size=4, eval.every=100, checkpoint.every=100]
        pretrain:
          set: [pretrain.epochs=4, pretrain.batch_size=64, pretrain.lr=0.01]
        evaluation: {permutations: 4000, bootstrap_samples: 500}
        methods:
          base:
            warm_start: true
            set: [maml.inner_lr=0.5, maml.inner_steps=5]
          same:
            warm_start: true
            set: [maml.inner_lr=0.5, maml.inner_steps=5]
            seed_offset: 100
          planted:
            warm_start: true
            set: [maml.inner_lr=0.0001]
        """

    func study(_ dir: String, data: String, extra: [String] = []) throws -> Run {
        try metatrain(
            ["study", "--data", data, "--plan", dir + "/plan.yaml", "--out", dir + "/out", "--parallel", "2"] + extra)
    }

    func testPlantedEffectIsSignificantAndASeedOnlyDifferenceIsNot() throws {
        let dir = freshDir("study")
        try Self.plan.write(toFile: dir + "/plan.yaml", atomically: true, encoding: .utf8)
        let data = try syntheticDataset(in: dir, users: 400, courses: 40, seed: 5)
        let r = try study(dir, data: data)
        XCTAssertEqual(r.status, 0, r.stderr + r.stdout)
        for f in ["per_query.csv", "results.json", "report.md", "study.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/" + f), f)
        }
        let results =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/results.json")))
            as! [String: Any]
        XCTAssertEqual(results["baseline"] as? String, "base")
        let methods = results["methods"] as! [String: Any]
        XCTAssertEqual(Set(methods.keys), ["base", "same", "planted"])
        let planted = methods["planted"] as! [String: Any]
        let seeds = planted["seeds"] as! [String: Any]
        XCTAssertEqual(Set(seeds.keys), ["1", "2"])
        let mean = (planted["mean"] as! [String: Any])["few_shot"] as! [String: Double]
        for k in [
            "acc@1", "hr@1", "hr@5", "hr@10", "hr@20", "ndcg@1", "ndcg@5", "ndcg@10", "ndcg@20", "mrr",
            "hr@10_sampled10"
        ] {
            XCTAssertNotNil(mean[k], k)
        }
        let ci = ((planted["ci95"] as! [String: Any])["few_shot"] as! [String: [Double]])["hr@10"]!
        XCTAssertLessThanOrEqual(ci[0], mean["hr@10"]!); XCTAssertGreaterThanOrEqual(ci[1], mean["hr@10"]!)
        let comparisons = results["comparisons"] as! [[String: Any]]
        XCTAssertEqual(comparisons.count, 2 * 2 * 20) // 2 methods × 2 settings × (10 + 10 sampled metrics)
        func comparison(_ m: String, _ s: String, _ k: String) -> [String: Any] {
            comparisons.first {
                $0["method"] as? String == m && $0["setting"] as? String == s && $0["metric"] as? String == k
            }!
        }
        // The planted advantage is significant after adjustment ...
        for k in ["mrr", "ndcg@10"] {
            let c = comparison("planted", "few_shot", k)
            XCTAssertGreaterThan(c["diff"] as! Double, 0.02, k)
            XCTAssertLessThan(c["p_bh"] as! Double, 0.05, k)
            XCTAssertGreaterThan((c["ci95"] as! [Double])[0], 0, k)
        }
        // ... and a method that differs only by its seeds is never significant.
        for c in comparisons where c["method"] as? String == "same" {
            XCTAssertGreaterThanOrEqual(c["p_bh"] as! Double, 0.05, "\(c)")
        }
        // per_query.csv holds every query of every run: 2 seeds × (2 + 2 + 2 settings) × test users × Q.
        let lines = try String(contentsOfFile: dir + "/out/per_query.csv", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.first, "method,seed,setting,user,episode,query,label,rank,rank_sampled10")
        XCTAssertEqual((lines.count - 1) % (3 * 2 * 2), 0)
        let report = try String(contentsOfFile: dir + "/out/report.md", encoding: .utf8)
        XCTAssertTrue(report.contains("| planted | few-shot | mrr |") && report.contains("✱"), report)
        // The plot tool reads the study (skipped where matplotlib is missing).
        if (try? python(["-c", "import matplotlib"]))?.0 == 0 {
            let (status, text) = try python([toolsDirectory.appendingPathComponent("plot_study.py").path, dir + "/out"])
            XCTAssertEqual(status, 0, text)
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/out/plots/hr@10.png"), text)
        }
        // A mistyped key fails before any task starts, naming the method.
        try (Self.plan.replacingOccurrences(of: "maml.inner_lr=0.0001", with: "maml.innerlr=0.0001"))
            .write(toFile: dir + "/typo.yaml", atomically: true, encoding: .utf8)
        let typo = try metatrain(["study", "--data", data, "--plan", dir + "/typo.yaml", "--out", dir + "/typo"])
        XCTAssertEqual(typo.status, 1)
        XCTAssertTrue(
            typo.stderr.contains("typo.yaml: method planted: ")
                && typo.stderr.contains("did you mean 'maml.inner_lr'?"),
            typo.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/typo/runs"))
        // A study directory refuses another plan.
        try (Self.plan + "\n# changed\n").write(toFile: dir + "/plan.yaml", atomically: true, encoding: .utf8)
        let again = try study(dir, data: data)
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("holds a study with another plan_sha256"), again.stderr)
    }

    /// A study killed after some runs finished, started again, redoes none of
    /// them and ends with the bits of a study that was never interrupted.
    func testKilledStudyResumesWithoutRedoingFinishedRuns() throws {
        let dir = freshDir("study-kill")
        try Self.plan.write(toFile: dir + "/plan.yaml", atomically: true, encoding: .utf8)
        let data = try syntheticDataset(in: dir, users: 400, courses: 40, seed: 5)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: metatrainPath())
        p.arguments = ["study", "--data", data, "--plan", dir + "/plan.yaml", "--out", dir + "/out", "--parallel", "1"]
        p.standardOutput = FileHandle.nullDevice; p.standardError = FileHandle.nullDevice
        try p.run()
        let first = dir + "/out/runs/base/seed-1/ranks.csv"
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: first) && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: first), "no run finished in 120 s")
        // The whole study at once, orchestrator and task, as a lost machine would.
        let killer = Process()
        killer.executableURL = URL(fileURLWithPath: "/usr/bin/pkill")
        killer.arguments = ["-KILL", "-f", "study .*\(dir)/out"]
        try killer.run(); killer.waitUntilExit()
        p.waitUntilExit()
        let finished = try FileManager.default.subpathsOfDirectory(atPath: dir + "/out/runs").filter {
            $0.hasSuffix("ranks.csv")
        }
        XCTAssertFalse(finished.isEmpty)
        func mtime(_ rel: String) throws -> Date {
            try FileManager.default.attributesOfItem(atPath: dir + "/out/runs/" + rel)[.modificationDate] as! Date
        }
        let before = try finished.map(mtime)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out/results.json"))
        let r = try study(dir, data: data)
        XCTAssertEqual(r.status, 0, r.stderr + r.stdout)
        XCTAssertTrue(r.stdout.contains("tasks already finished"), r.stdout)
        XCTAssertEqual(try finished.map(mtime), before, "finished runs were redone")
        // --list says every task is done.
        let list = try study(dir, data: data, extra: ["--list"])
        XCTAssertEqual(list.stdout.split(separator: "\n").count, 8)
        XCTAssertFalse(list.stdout.contains("to do"), list.stdout)
        // The same study uninterrupted, with its tasks run one by one (as a Slurm array would).
        let other = freshDir("study-straight")
        try Self.plan.write(toFile: other + "/plan.yaml", atomically: true, encoding: .utf8)
        for t in 0..<8 {
            let r = try study(other, data: data, extra: ["--task", "\(t)"])
            XCTAssertEqual(r.status, 0, "task \(t): " + r.stderr)
        }
        XCTAssertEqual(try study(other, data: data).status, 0)
        for f in ["per_query.csv", "results.json"] {
            XCTAssertEqual(
                try Data(contentsOf: URL(fileURLWithPath: dir + "/out/" + f)),
                try Data(contentsOf: URL(fileURLWithPath: other + "/out/" + f)), f)
        }
    }

    /// A slow method and the popularity baseline: one task that runs for a while.
    static let slowPlan = """
        seeds: 1
        baseline: pop
        set: [model.embedding_dim=8, model.hidden_dim=16, maml.meta_batch_size=4, eval.every=100000,
              checkpoint.every=200]
        methods:
          pop:
            popularity: true
          slow:
            set: [maml.iterations=ITERATIONS]
        """

    /// Study processes (orchestrators and tasks) whose command line names `out`.
    func studyProcesses(_ out: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return false }
            let words = cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return words.contains("study") && words.contains(out)
        }
    }

    /// An orchestrator that died while its task ran on: the restart waits for that task
    /// instead of failing on its run directory's lock, and finishes the study. Ctrl-C on
    /// a study stops its tasks (they keep their checkpoints) and says how to continue;
    /// --list needs neither --quick nor --seeds again.
    func testARestartWaitsForARunningTaskAndCtrlCStopsTheTasks() throws {
        let dir = freshDir("study-adopt")
        try Self.slowPlan.replacingOccurrences(of: "ITERATIONS", with: "8000")
            .write(toFile: dir + "/plan.yaml", atomically: true, encoding: .utf8)
        let data = try syntheticDataset(in: dir, users: 200, courses: 30, seed: 5)
        let out = dir + "/out"
        let first = try startDetached(["study", "--data", data, "--plan", dir + "/plan.yaml", "--out", out])
        defer { first.killGroup(); first.wait() }
        let metrics = out + "/runs/slow/seed-1/metrics.jsonl"
        var deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: metrics) && Date() < deadline { usleep(20_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: metrics), "the slow task never started")
        kill(first.pid, SIGKILL) // the orchestrator alone; its task runs on
        XCTAssertEqual(first.wait(seconds: 30), 128 + SIGKILL)
        let r = try study(dir, data: data, extra: ["--parallel", "1"])
        XCTAssertEqual(r.status, 0, r.stderr + r.stdout)
        XCTAssertTrue(r.stdout.contains("still running from an earlier start"), r.stdout)
        XCTAssertTrue(r.stdout.contains("finished 1 slow/seed-1  (started earlier)"), r.stdout)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/results.json"))
        let results =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/results.json")))
            as! [String: Any]
        let c = (results["comparisons"] as! [[String: Any]]).first { $0["metric"] as? String == "hr@10" }!
        let perSeed = c["per_seed"] as! [String: Any]
        XCTAssertEqual((perSeed["diffs"] as! [Double]).count, 1)
        XCTAssertEqual(perSeed["seeds"] as? Int, 1)
        let list = try metatrain(["study", "--data", data, "--plan", dir + "/plan.yaml", "--out", out, "--list"])
        XCTAssertEqual(list.status, 0, list.stderr)
        XCTAssertFalse(list.stdout.contains("to do"), list.stdout)

        // Ctrl-C: every task stops, keeping its checkpoint.
        let other = freshDir("study-interrupt")
        try Self.slowPlan.replacingOccurrences(of: "ITERATIONS", with: "1000000")
            .write(toFile: other + "/plan.yaml", atomically: true, encoding: .utf8)
        let out2 = other + "/out", log = other + "/study.out"
        let p = try startDetached(["study", "--data", data, "--plan", other + "/plan.yaml", "--out", out2], stderr: log)
        defer { p.killGroup(); p.wait() }
        let checkpoints = out2 + "/runs/slow/seed-1/checkpoints"
        deadline = Date().addingTimeInterval(120)
        while ((try? FileManager.default.contentsOfDirectory(atPath: checkpoints)) ?? []).isEmpty && Date() < deadline {
            usleep(20_000)
        }
        kill(p.pid, SIGINT)
        XCTAssertEqual(p.wait(seconds: 150), 1)
        XCTAssertTrue(
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("study interrupted"),
            (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
        deadline = Date().addingTimeInterval(30)
        while !studyProcesses(out2).isEmpty && Date() < deadline { usleep(50_000) }
        XCTAssertEqual(studyProcesses(out2), [], "tasks kept running after Ctrl-C")
        let taskLog = (try? String(contentsOfFile: out2 + "/logs/slow_seed-1.log", encoding: .utf8)) ?? ""
        XCTAssertTrue(taskLog.contains("interrupted at iteration"), taskLog)
    }
}

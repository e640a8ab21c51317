import ArgumentParser
import Core
import Datasets
import Evaluation
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import Runtime
import Storage
import Studies
import Training

/// A progress line, written at once (print's buffer would hold it back from a log file).
private func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

struct StudyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "study",
        abstract: "Runs a plan's methods over several seeds and compares them with paired statistics.",
        discussion: """
            Pretrains once per seed (shared by every method that warm-starts from it),
            runs each method on each seed in OUT/runs/METHOD/seed-S, ranks every query of
            the evaluation split, and writes per_query.csv, results.json and report.md
            (docs/FORMATS.md, "Studies"). A study that is stopped or killed and started
            again redoes nothing that finished. --task I runs one task alone (e.g. one
            Slurm array index; --list shows them); a later plain run writes the report.
            Examples:
              metatrain study --data data/dataset.h5 --plan studies/seeds.yaml \\
                  --out studies/out --quick --parallel 2
              metatrain study --data data/dataset.h5 --plan studies/seeds.yaml \\
                  --out studies/out --task 3
            """)

    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Study plan (YAML): methods, baseline, seeds, evaluation.") var plan: String
    @Option(help: "Study directory: runs, logs and results.") var out: String
    @Option(help: "Use seeds 1...N instead of the plan's.") var seeds: Int?
    @Option(help: "Tasks run at once (each a process).") var parallel = 1
    @Option(help: "Local worker processes of each meta-training run.") var workers = 1
    @Flag(help: "Add the plan's quick overrides (fewer iterations and epochs) to every run.") var quick = false
    @Option(help: "Run only this task (an index from --list) and exit.") var task: Int?
    @Flag(help: "List the tasks with their indices and state, and exit.") var list = false

    func validate() throws {
        if let seeds, seeds < 1 { throw ValidationError("--seeds must be at least 1") }
        guard parallel >= 1 else { throw ValidationError("--parallel must be at least 1") }
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
    }

    func loadPlan() throws -> StudyPlan {
        var p = try StudyPlan.load(plan)
        if let seeds { p.seeds = (1...seeds).map { UInt64($0) } }
        return p
    }

    func run() throws {
        // --list describes the study as it was started: its --quick and --seeds need not be given again.
        if list, !quick, let old = try? JSON.parse(String(contentsOfFile: out + "/study.json", encoding: .utf8)) {
            var me = self
            if case .bool(true)? = old["quick"] { me.quick = true }
            if me.seeds == nil, let s = old["seeds"]?.array?.compactMap({ $0.double.map { Int($0) } }), !s.isEmpty,
                s == Array(1...s.count)
            {
                me.seeds = s.count
            }
            if me.quick != quick || me.seeds != seeds { return try me.runStudy() }
        }
        try runStudy()
    }

    func runStudy() throws {
        BLAS.useSingleThread()
        let p = try loadPlan()
        let fingerprint = try DatasetFile.fingerprint(of: data)
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try recordStudy(p, fingerprint: fingerprint)
        let tasks = p.tasks()
        let runner = StudyTaskRunner(plan: p, data: data, out: out, quick: quick, workers: workers)
        if list {
            for t in tasks {
                print(
                    "\(t.index)\t\(t.name)\t\(runner.isDone(t) ? "done" : "to do")"
                        + (t.dependsOn.map { "\t(after task \($0))" } ?? ""))
            }
            return
        }
        if let task {
            guard tasks.indices.contains(task) else {
                throw MetatrainError("--task \(task): the plan has tasks 0...\(tasks.count - 1) (see --list)")
            }
            let code = try runner.run(tasks[task], progress: ConsoleProgress())
            if code != 0 { throw ExitCode(code) }
            return
        }
        try runner.checkConfigurations(planPath: plan)
        try orchestrate(tasks, runner: runner)
        try report(p, fingerprint: fingerprint, runner: runner)
    }

    /// study.json: what this directory is a study of. Starting again with another
    /// plan, seeds, --quick or dataset is refused, so finished runs are never mixed up.
    func recordStudy(_ p: StudyPlan, fingerprint: String) throws {
        var hash = SHA256()
        hash.update(string: (try? String(contentsOfFile: plan, encoding: .utf8)) ?? "")
        let record: [(String, JSON)] = [
            ("plan_sha256", .string(hash.finalizeHex())), ("seeds", .array(p.seeds.map { .int(Int($0)) })),
            ("quick", .bool(quick)), ("dataset_fingerprint", .string(fingerprint))
        ]
        let path = out + "/study.json"
        if let text = try? String(contentsOfFile: path, encoding: .utf8), let old = try? JSON.parse(text) {
            for (k, v) in record where old[k] != nil && old[k]! != v {
                throw MetatrainError(
                    "\(out) holds a study with another \(k) (\(old[k]!.compact), now \(v.compact)); use another --out")
            }
            return
        }
        try writeFileAtomically(
            path,
            contents: JSON.object(
                record + [
                    ("plan", .string(plan)), ("dataset", .string(data)),
                    ("metatrain_version", .string(metatrainVersion))
                ]
            ).pretty)
    }

    /// Runs every unfinished task as a child process (`--task I`), up to --parallel at
    /// once, each after the task it depends on; stops starting new ones after a failure.
    func orchestrate(_ tasks: [StudyTask], runner: StudyTaskRunner) throws {
        let logs = out + "/logs"
        try FileManager.default.createDirectory(atPath: logs, withIntermediateDirectories: true)
        var pending = tasks.filter { !runner.isDone($0) }
        let done = tasks.count - pending.count
        if done > 0 { say("\(done) of \(tasks.count) tasks already finished") }
        var running: [(task: StudyTask, process: Process, started: Date)] = []
        // Tasks an earlier orchestrator started that still run (it died, they did not): waited for, not run twice.
        var adopted: [(task: StudyTask, started: Date)] = []
        var finished = Set(tasks.filter { runner.isDone($0) }.map(\.index))
        var failed: [String] = []
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // Ctrl-C (or SIGTERM) stops the tasks too: each is asked to stop as `train` is (it keeps a checkpoint).
        let stop = StopFlag()
        stop.installSignalHandlers()
        while !pending.isEmpty || !running.isEmpty || !adopted.isEmpty {
            if stop.isSet {
                try interrupt(running.map { ($0.task, $0.process) }, adopted: adopted.map(\.task))
            }
            while failed.isEmpty, running.count + adopted.count < parallel,
                let i = pending.firstIndex(where: { $0.dependsOn.map { finished.contains($0) } ?? true })
            {
                let t = pending.remove(at: i)
                if let holder = RunDirectory.holder(
                    ofRunDirectory: runner.directory(t), lockFile: StudyTaskRunner.taskLock)
                {
                    adopted.append((t, Date()))
                    say("waiting  \(t.index) \(t.name): still running from an earlier start (\(holder))")
                    continue
                }
                let log = logs + "/" + t.name.replacingOccurrences(of: "/", with: "_") + ".log"
                // Appended to: a retried task's log keeps what the failed attempt said.
                if !FileManager.default.fileExists(atPath: log) {
                    _ = FileManager.default.createFile(atPath: log, contents: nil)
                }
                let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
                _ = try handle.seekToEnd()
                let proc = Process()
                proc.executableURL = exe
                proc.arguments =
                    [
                        "study", "--data", data, "--plan", plan, "--out", out, "--workers", "\(workers)", "--task",
                        "\(t.index)"
                    ]
                    + (seeds.map { ["--seeds", "\($0)"] } ?? []) + (quick ? ["--quick"] : [])
                proc.standardOutput = handle; proc.standardError = handle
                try proc.run()
                try? handle.close()
                running.append((t, proc, Date()))
                say("started  \(t.index) \(t.name)  (log: \(log))")
            }
            if !failed.isEmpty && running.isEmpty && adopted.isEmpty { break }
            if running.isEmpty && adopted.isEmpty && !pending.isEmpty {
                throw MetatrainError(
                    "study: tasks \(pending.map(\.name).joined(separator: ", ")) wait for tasks that cannot run")
            }
            usleep(100_000)
            for (k, a) in adopted.enumerated().reversed()
            where RunDirectory.holder(ofRunDirectory: runner.directory(a.task), lockFile: StudyTaskRunner.taskLock)
                == nil
            {
                adopted.remove(at: k)
                if runner.isDone(a.task) {
                    finished.insert(a.task.index)
                    say("finished \(a.task.index) \(a.task.name)  (started earlier)")
                } else {
                    // It stopped before finishing: run it here (it continues from its checkpoint).
                    pending.insert(a.task, at: 0)
                }
            }
            for (k, r) in running.enumerated().reversed() where !r.process.isRunning {
                running.remove(at: k)
                let secs = String(format: "%.1f", Date().timeIntervalSince(r.started))
                if r.process.terminationStatus == 0 {
                    finished.insert(r.task.index)
                    say("finished \(r.task.index) \(r.task.name)  (\(secs) s)")
                } else {
                    failed.append(r.task.name)
                    say("FAILED   \(r.task.index) \(r.task.name)  (exit \(r.process.terminationStatus), \(secs) s)")
                }
            }
        }
        if !failed.isEmpty {
            let names = failed.map { "\($0) (log: \(logs)/\($0.replacingOccurrences(of: "/", with: "_")).log)" }
            throw MetatrainError(
                "study: \(failed.count) task(s) failed: \(names.joined(separator: ", ")); run the study again to retry them"
            )
        }
    }

    /// Asks every running task to stop (SIGINT: a meta-training run writes its checkpoint
    /// first), waits for them, and ends the study with how to continue it.
    func interrupt(_ running: [(StudyTask, Process)], adopted: [StudyTask]) throws -> Never {
        say("interrupted; stopping \(running.count) running task(s)")
        for (_, p) in running where p.isRunning { p.interrupt() }
        let deadline = Date().addingTimeInterval(120)
        while running.contains(where: { $0.1.isRunning }) && Date() < deadline { usleep(50_000) }
        for (t, p) in running where p.isRunning {
            say("task \(t.index) \(t.name) did not stop within 120 s; killing it")
            kill(p.processIdentifier, SIGKILL)
        }
        for t in adopted { say("left running: \(t.index) \(t.name) (started by an earlier study process)") }
        throw MetatrainError(
            "study interrupted; its runs keep their checkpoints: run the same command again to continue")
    }

    /// per_query.csv, results.json and report.md from every run's ranks.
    func report(_ p: StudyPlan, fingerprint: String, runner: StudyTaskRunner) throws {
        var ranks: [String: [UInt64: RunRanks]] = [:]
        var perQuery = "method,seed,setting,user,episode,query,label,rank"
        var sampled = 0
        for t in p.tasks() {
            guard case .run(let m, let s) = t.kind else { continue }
            let r = try RunRanks.read(runner.ranksPath(t))
            ranks[m, default: [:]][s] = r
            sampled = max(sampled, r.sampledNegatives)
        }
        if sampled > 0 { perQuery += ",rank_sampled\(sampled)" }
        perQuery += "\n"
        for t in p.tasks() {
            guard case .run(let m, let s) = t.kind, let r = ranks[m]?[s] else { continue }
            for line in r.rowLines { perQuery += "\(m),\(s)," + line }
        }
        try writeFileAtomically(out + "/per_query.csv", contents: perQuery)
        let results = try StudyResults(plan: p, ranks: ranks)
        try writeFileAtomically(out + "/results.json", contents: results.json.pretty)
        let users = Set(ranks[p.baseline]?[p.seeds[0]]?.rows.map(\.user) ?? []).count
        let notes = [
            "Plan `\(plan)`\(quick ? " with --quick" : ""); dataset `\(data)` (fingerprint \(fingerprint.prefix(12))…);",
            "\(p.split) split, \(users) users; seeds \(p.seeds.map(String.init).joined(separator: ", ")); baseline \(p.baseline)."
        ]
        let md = results.markdown(title: "Study: " + URL(fileURLWithPath: plan).lastPathComponent, notes: notes)
        try writeFileAtomically(out + "/report.md", contents: md)
        print(md, terminator: "")
        print("\nwrote \(out)/per_query.csv, \(out)/results.json, \(out)/report.md")
    }
}

import Core
import ExperimentConfig
import Foundation
import Runtime
import Training

/// Runs one study task in this process: the pretraining of a seed, or a method
/// on a seed (train, then rank every query), each resumable after a kill. Tasks
/// call the library as `pretrain` and `train` do (`Pretrainer.run`,
/// `LocalTraining`); the orchestration (which tasks, how many at once, in
/// which processes) is the CLI's.
public struct StudyTaskRunner {
    public let plan: StudyPlan, data: String, out: String, quick: Bool, workers: Int

    public init(plan: StudyPlan, data: String, out: String, quick: Bool, workers: Int) {
        self.plan = plan; self.data = data; self.out = out; self.quick = quick; self.workers = workers
    }

    public func directory(_ t: StudyTask) -> String { out + "/" + t.runDirectory }
    /// The lock file a running task holds in its run directory (RunDirectory.hold).
    public static let taskLock = ".task.lock"
    public func ranksPath(_ t: StudyTask) -> String { directory(t) + "/ranks.csv" }
    func pretrainDirectory(seed: UInt64) -> String { out + "/" + StudyPlan.pretrainDirectory(seed: seed) }

    public func isDone(_ t: StudyTask) -> Bool {
        switch t.kind {
        case .pretrain: return FileManager.default.fileExists(atPath: directory(t) + "/final.h5")
        case .run: return FileManager.default.fileExists(atPath: ranksPath(t))
        }
    }

    var quickSets: [String] { quick ? plan.quick : [] }

    /// A run's configuration: a file (nil: defaults) and overrides, its seed last.
    struct Configuration {
        var path: String?
        var overrides: [String]
        func load() throws -> Config { try Config.load(path: path, overrides: overrides) }
    }

    /// The configuration of a method's run on seed s.
    func configuration(_ m: StudyPlan.Method, seed s: UInt64) -> Configuration {
        var sets = plan.overrides + (m.kind == .pretrained ? plan.pretrainOverrides : []) + m.overrides + quickSets
        if m.kind == .meta(warmStart: true) {
            sets.append("warm_start.checkpoint=" + pretrainDirectory(seed: s) + "/best.h5")
        }
        let file = m.kind == .pretrained ? (m.config ?? plan.pretrainConfig) : m.config
        return Configuration(path: file, overrides: sets + ["seed=\(m.kind == .pretrained ? s : s + m.seedOffset)"])
    }

    /// The configuration of seed s's shared pretraining.
    func pretrainConfiguration(seed s: UInt64) -> Configuration {
        Configuration(
            path: plan.pretrainConfig, overrides: plan.overrides + plan.pretrainOverrides + quickSets + ["seed=\(s)"])
    }

    /// Resolves every run's configuration once before any task starts, so a
    /// missing config file or a mistyped key fails at once, naming the method.
    public func checkConfigurations(planPath: String) throws {
        let seed = plan.seeds[0]
        func check(_ what: String, _ c: Configuration) throws {
            do { _ = try c.load() } catch { throw MetatrainError("\(planPath): \(what): \(error)") }
        }
        if plan.needsPretraining { try check("pretrain", pretrainConfiguration(seed: seed)) }
        for m in plan.methods where m.kind != .popularity {
            try check("method \(m.name)", configuration(m, seed: seed))
        }
    }

    /// Runs task `t`; the exit status of its training (0 when it finished, or had already).
    public func run(_ t: StudyTask, progress: ProgressSink) throws -> Int32 {
        if isDone(t) { print("task \(t.index) (\(t.name)) is already finished"); return 0 }
        if let d = plan.tasks().first(where: { $0.index == t.dependsOn }), !isDone(d) {
            throw MetatrainError("task \(t.index) (\(t.name)) needs task \(d.index) (\(d.name)) to finish first")
        }
        let dir = directory(t)
        // The task's own lock, held from here to the end of the process: the run's `.lock` is let go
        // when training ends, before ranking, and a restarted study must wait for the ranking too.
        try RunDirectory.hold(dir, lockFile: StudyTaskRunner.taskLock)
        switch t.kind {
        case .pretrain(let s):
            // A killed pretraining continues from its last epoch; one that never finished an epoch starts afresh.
            let resume = FileManager.default.fileExists(atPath: dir + "/" + Pretrainer.resumeCheckpoint)
            let (r, run) = try Pretrainer.run(
                data: data, runDirectory: dir, config: try pretrainConfiguration(seed: s).load(), resume: resume,
                overwrite: !resume && FileManager.default.fileExists(atPath: dir), progress: progress)
            print(r.summary(bestCheckpoint: run.file("best.h5")))
        case .run(let name, let s):
            guard let m = plan.method(name) else { throw MetatrainError("study: no method \(name)") }
            let c = configuration(m, seed: s)
            let checkpoint: String?
            switch m.kind {
            case .meta:
                if !FileManager.default.fileExists(atPath: dir + "/final.h5") {
                    var request = MetaRunRequest(
                        data: data, runDirectory: dir, configPath: c.path, overrides: c.overrides)
                    request.continuation = .resumeOrStart
                    let stop = StopFlag()
                    stop.installSignalHandlers()
                    let code = try LocalTraining(request: request, workers: workers).run(stop: stop, progress: progress)
                    if code != 0 { return code }
                }
                checkpoint =
                    FileManager.default.fileExists(atPath: dir + "/best.h5") ? dir + "/best.h5" : dir + "/final.h5"
            case .pretrained: checkpoint = pretrainDirectory(seed: s) + "/best.h5"
            case .popularity: checkpoint = nil
            }
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try rank(checkpoint: checkpoint, config: try c.load(), seed: s, into: ranksPath(t))
        }
        return 0
    }

    /// Ranks every query of the plan's split with the run's checkpoint (RunRanks.rank), into ranks.csv.
    func rank(checkpoint: String?, config: Config, seed: UInt64, into path: String) throws {
        let (ranks, episodes) = try RunRanks.rank(
            data: data, checkpoint: checkpoint, config: config, plan: plan, seed: seed)
        try writeFileAtomically(path, contents: ranks.csv)
        print("ranked \(ranks.rows.count) queries of \(episodes) \(plan.split) episodes into \(path)")
    }
}

import Foundation
import XCTest
import Yams

@testable import metatrain

/// The launch recipes under cluster/ name only commands the CLI accepts.
final class ClusterRecipeTests: XCTestCase {
    static let cluster = toolsDirectory.deletingLastPathComponent().appendingPathComponent("cluster")

    /// Every container command in the Kubernetes manifests that runs metatrain parses
    /// with the CLI's own parser (options, values and validation), and the Service
    /// carries both of the coordinator's ports.
    func testKubernetesManifestsNameOnlyCommandsTheCLIAccepts() throws {
        let path = ClusterRecipeTests.cluster.appendingPathComponent("kubernetes/metatrain.yaml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var commands: [[String]] = [], kinds: [String] = [], servicePorts: [Int] = []
        for case let doc as [String: Any] in try Yams.load_all(yaml: text) {
            let kind = doc["kind"] as? String ?? "?"
            kinds.append(kind)
            if kind == "Service", let spec = doc["spec"] as? [String: Any],
                let ports = spec["ports"] as? [[String: Any]]
            {
                servicePorts += ports.compactMap { $0["port"] as? Int }
            }
            let spec = ((doc["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any]
            for case let c as [String: Any] in (spec?["containers"] as? [Any]) ?? [] {
                let command = ((c["command"] as? [Any]) ?? []) + ((c["args"] as? [Any]) ?? [])
                commands.append(command.map { "\($0)" })
            }
        }
        XCTAssertEqual(Set(kinds), ["PersistentVolumeClaim", "Service", "Job", "DaemonSet"])
        XCTAssertEqual(servicePorts.sorted(), [5555, 5556], "PORT for work and PORT+1 for weights")
        XCTAssertEqual(commands.count, 2)
        var subcommands: [String] = []
        for command in commands {
            XCTAssertEqual(command.first, "metatrain", "\(command)")
            let args = Array(command.dropFirst())
            XCTAssertNoThrow(try Metatrain.parseAsRoot(args), "\(command) is not a command metatrain accepts")
            subcommands.append(args.first ?? "")
        }
        XCTAssertEqual(subcommands.sorted(), ["coordinator", "worker"])
        let worker = try XCTUnwrap(commands.first { $0.dropFirst().first == "worker" })
        XCTAssertTrue(worker.contains("tcp://metatrain-coordinator:5555"), "workers connect to the Service: \(worker)")
        XCTAssertTrue(worker.contains("--procs"), "one host agent per node: \(worker)")
        for command in commands { XCTAssertTrue(command.contains("--key"), "every socket uses CURVE: \(command)") }
        // The check itself can fail: an option the CLI does not know is refused.
        XCTAssertThrowsError(
            try Metatrain.parseAsRoot(["worker", "--connect", "tcp://x:5555", "--data", "d.h5", "--procs", "4x"]))
    }

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// Runs a shell command; returns its status and merged output. (posix_spawn and
    /// waitpid: Foundation's Process missed the exit of a script whose daemons outlive it.)
    @discardableResult
    func sh(_ command: String, env: [String: String] = [:]) -> (Int32, String) {
        let out = NSTemporaryDirectory() + "mt-sh-\(getpid())-\(UUID().uuidString).out"
        defer { unlink(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let words: [String] = ["/bin/bash", "-c", command]
        let pairs: [String] = ProcessInfo.processInfo.environment.merging(env) { $1 }.map { "\($0.key)=\($0.value)" }
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = pairs.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/bin/bash", &actions, nil, argv, envp) == 0 else { return (-1, "posix_spawn failed") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (GroupProcess.decode(status), read(out))
    }

    /// Starts a throwaway single-node Slurm under `dir`/cluster on the given
    /// slurmctld and slurmd ports and returns its SLURM_CONF (nil, with a
    /// failure logged, when it does not start); the caller stops it. Skips
    /// without root or Slurm's packages.
    func startSlurm(in dir: String, ports: (Int, Int)) throws -> String? {
        guard getuid() == 0 else { throw XCTSkip("a test Slurm cluster needs root") }
        for tool in ["munged", "slurmctld", "slurmd", "sbatch"] where sh("command -v \(tool)").0 != 0 {
            throw XCTSkip("\(tool) is not installed (tools/install-deps.sh --tests installs Slurm)")
        }
        let slurm = ClusterRecipeTests.cluster.appendingPathComponent("slurm").path
        let env = ["SLURMCTLD_PORT": "\(ports.0)", "SLURMD_PORT": "\(ports.1)"]
        let (started, startLog) = sh("\(slurm)/single-node.sh start \(dir)/cluster", env: env)
        guard started == 0 else {
            XCTFail("Slurm did not start: \(startLog)")
            sh("\(slurm)/single-node.sh stop \(dir)/cluster")
            return nil
        }
        return "\(dir)/cluster/slurm.conf"
    }

    /// The sbatch recipe under a real single-node Slurm (munge, slurmctld and
    /// slurmd started by the test): a short job runs the coordinator and two
    /// compute processes under one host agent, is requeued once a checkpoint exists, resumes from it by itself,
    /// and ends with the weights of an uninterrupted `train` run.
    func testSlurmRecipeRunsAndResumesAfterARequeue() throws {
        let dir = freshDir("slurm")
        let slurm = ClusterRecipeTests.cluster.appendingPathComponent("slurm").path
        guard let conf = try startSlurm(in: dir, ports: (16917, 16918)) else { return }
        defer { sh("\(slurm)/single-node.sh stop \(dir)/cluster") }
        let slurmEnv = ["SLURM_CONF": conf, "METATRAIN": metatrainPath(), "METATRAIN_PORT": "17655"]

        _ = try syntheticDataset(in: dir)
        try """
        model: {embedding_dim: 8, hidden_dim: 12}
        maml: {meta_batch_size: 8, chunk_size: 2, inner_steps: 2, iterations: 2000}
        eval: {every: 50, val_episodes: 8, patience: 1000}
        checkpoint: {every: 100}
        """.write(toFile: dir + "/experiment.yaml", atomically: true, encoding: .utf8)
        let whole = try metatrain([
            "train", "--data", dir + "/data.h5", "--config", dir + "/experiment.yaml",
            "--run-dir", dir + "/whole", "--workers", "2"
        ])
        XCTAssertEqual(whole.status, 0, whole.stderr)

        let run = dir + "/run"
        let (submitted, jobText) = sh(
            "sbatch --parsable --nodes=1 --ntasks-per-node=1 --cpus-per-task=2 --output=\(dir)/job-%j.out "
                + "\(slurm)/metatrain.sbatch \(dir)/data.h5 \(dir)/experiment.yaml \(run)", env: slurmEnv)
        XCTAssertEqual(submitted, 0, jobText)
        let job = jobText.trimmingCharacters(in: .whitespacesAndNewlines)
        func state() -> String {
            sh("squeue -h -j \(job) -o %T", env: slurmEnv).1.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // Requeue once the first checkpoint is whole (as preemption or a failed node would).
        var deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: run + "/checkpoints/iter-000100.h5") && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: run + "/checkpoints/iter-000100.h5"), read(dir + "/job-\(job).out"))
        let (requeued, requeueText) = sh("scontrol requeue \(job)", env: slurmEnv)
        XCTAssertEqual(requeued, 0, requeueText)
        // Slurm holds a requeued job back for a while; let it start again now.
        deadline = Date().addingTimeInterval(180)
        while !state().isEmpty && Date() < deadline {
            if state() == "PENDING" { sh("scontrol update jobid=\(job) StartTime=now", env: slurmEnv) }
            Thread.sleep(forTimeInterval: 0.5)
        }
        let out = read(dir + "/job-\(job).out")
        XCTAssertEqual(state(), "", "the job did not end: \(out)")
        XCTAssertTrue(out.contains("(restart 1)") && out.contains("--resume"), out)
        XCTAssertTrue(out.contains("metatrain: coordinator exited with status 0"), out)
        XCTAssertTrue(read(run + "/coordinator.log").contains("resumed from"), read(run + "/coordinator.log"))
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: dir + "/whole/final.h5")), "requeued Slurm job vs train")
    }

    /// cluster/slurm/study.sh under a single-node Slurm: the pretraining array,
    /// then the runs' array, then the report, which equals a local study's bit for bit.
    func testSlurmStudyArraysRunEveryTaskThenTheReport() throws {
        let dir = freshDir("slurm-study")
        let slurm = ClusterRecipeTests.cluster.appendingPathComponent("slurm").path
        guard let conf = try startSlurm(in: dir, ports: (16927, 16928)) else { return }
        defer { sh("\(slurm)/single-node.sh stop \(dir)/cluster") }
        let slurmEnv = ["SLURM_CONF": conf, "METATRAIN": metatrainPath()]
        let data = try syntheticDataset(in: dir, users: 400, courses: 40, seed: 5)
        try StudyTests.plan.write(toFile: dir + "/plan.yaml", atomically: true, encoding: .utf8)
        let local = try metatrain(["study", "--data", data, "--plan", dir + "/plan.yaml", "--out", dir + "/local"])
        XCTAssertEqual(local.status, 0, local.stderr)

        let (submitted, text) = sh("\(slurm)/study.sh \(data) \(dir)/plan.yaml \(dir)/out", env: slurmEnv)
        XCTAssertEqual(submitted, 0, text)
        XCTAssertTrue(
            text.contains("pretraining: job") && text.contains("(tasks 2-7)") && text.contains("report: job"), text)
        let deadline = Date().addingTimeInterval(300)
        while !FileManager.default.fileExists(atPath: dir + "/out/report.md") && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.5)
        }
        let logs = (try? FileManager.default.contentsOfDirectory(atPath: dir + "/out/logs")) ?? []
        XCTAssertTrue(
            FileManager.default.fileExists(atPath: dir + "/out/report.md"),
            "no report: " + logs.map { read(dir + "/out/logs/" + $0) }.joined(separator: "\n"))
        for f in ["per_query.csv", "results.json"] {
            XCTAssertEqual(
                try? Data(contentsOf: URL(fileURLWithPath: dir + "/out/" + f)),
                try Data(contentsOf: URL(fileURLWithPath: dir + "/local/" + f)), f)
        }
    }
}

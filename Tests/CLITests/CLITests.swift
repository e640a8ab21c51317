import Foundation
import XCTest

/// Runs the real `metatrain` binary as a child process.
struct Run {
    let status: Int32, stdout: String, stderr: String
}

func metatrainPath() -> String {
    let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(
        "metatrain")
    let candidates =
        [bin.path]
        + Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent().appendingPathComponent("metatrain").path }
    return candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) ?? bin.path
}

/// With `stopAfter`, a run still going after that many seconds is interrupted (SIGINT), as Ctrl-C would.
func metatrain(
    _ args: [String], cwd: String? = nil, environment: [String: String] = [:], stopAfter: Double? = nil
) throws -> Run {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: metatrainPath())
    p.arguments = args
    if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
    if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let out = Pipe(), err = Pipe()
    p.standardOutput = out; p.standardError = err
    try p.run()
    if let stopAfter {
        DispatchQueue.global().asyncAfter(deadline: .now() + stopAfter) {
            if p.isRunning { kill(p.processIdentifier, SIGINT) }
        }
    }
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Run(
        status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
        stderr: String(decoding: e, as: UTF8.self))
}

/// A synthetic event log prepared into `dir/NAME.h5` (made once; later calls return the path).
func syntheticDataset(in dir: String, name: String = "data", users: Int = 100, courses: Int = 20, seed: Int = 3) throws
    -> String
{
    let path = dir + "/\(name).h5"
    if FileManager.default.fileExists(atPath: path) { return path }
    var r = try metatrain([
        "synth", "--out", dir + "/\(name).csv", "--users", "\(users)", "--courses", "\(courses)", "--seed", "\(seed)"
    ])
    guard r.status == 0 else { throw NSError(domain: "synth failed: \(r.stderr)", code: 1) }
    r = try metatrain(["prepare", "--events", dir + "/\(name).csv", "--out", path])
    guard r.status == 0 else { throw NSError(domain: "prepare failed: \(r.stderr)", code: 1) }
    try? FileManager.default.removeItem(atPath: dir + "/\(name).csv")
    return path
}

func freshDir(_ name: String) -> String {
    let d = NSTemporaryDirectory() + "mt-cli-\(name)-\(getpid())"
    try? FileManager.default.removeItem(atPath: d)
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

final class CLITests: XCTestCase {
    func testEverySubcommandHasHelpWithAnExample() throws {
        for sub in [
            "synth", "prepare", "pretrain", "coordinator", "worker", "train", "evaluate", "study", "config", "keygen",
            "demo", "bench"
        ] {
            let r = try metatrain([sub, "--help"])
            XCTAssertEqual(r.status, 0, sub)
            XCTAssertTrue(r.stdout.contains("Example"), "\(sub) --help has no example:\n\(r.stdout)")
            XCTAssertTrue(r.stdout.contains("OVERVIEW: "), sub)
            // Examples paste: at 80 columns no command is wrapped mid-line. Each line of an
            // example block starts a command or continues one whose line ended with "\\".
            var inExample = false, continued = false
            for line in r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
                if line.hasPrefix("Example") { inExample = true; continued = false; continue }
                if line.hasPrefix("USAGE:") || line.hasPrefix("OPTIONS:") { inExample = false }
                guard inExample, !line.isEmpty else { continue }
                let words = line.trimmingCharacters(in: .whitespaces)
                let starts = ["metatrain ", "swift ", "sudo ", "python3 ", "tools/", "export ", ".build/"].contains {
                    words.hasPrefix($0)
                }
                XCTAssertTrue(starts || continued, "\(sub) --help wraps an example: '\(line)'\n\(r.stdout)")
                XCTAssertLessThanOrEqual(line.count, 80, "\(sub) --help: '\(line)'")
                continued = words.hasSuffix("\\")
            }
        }
        // The top-level help names the whole pipeline, training and studies included.
        let top = try metatrain(["--help"])
        for step in ["prepare", "pretrain", "train", "evaluate", "study"] {
            XCTAssertTrue(
                top.stdout.contains("-> \(step)") || top.stdout.contains("\(step) ->"), "\(step): \(top.stdout)")
        }
    }

    /// `metatrain config` prints the resolved configuration (defaults, --config,
    /// --set) as a --config file with every key explained; docs/CONFIG.md is its
    /// Markdown table, so the documentation is exactly what the code accepts.
    func testConfigPrintsEveryKeyAndDocsMatch() throws {
        let dir = freshDir("config")
        var r = try metatrain(["config", "--set", "maml.algorithm=metasgd", "--seed", "7"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("  # fomaml (first-order MAML)"), r.stdout)
        XCTAssertTrue(r.stdout.contains("  algorithm: metasgd\n"), r.stdout)
        XCTAssertTrue(r.stdout.hasPrefix("# resolved configuration"), r.stdout)
        try r.stdout.write(toFile: dir + "/c.yaml", atomically: true, encoding: .utf8)
        let again = try metatrain(["config", "--config", dir + "/c.yaml"])
        XCTAssertEqual(again.stdout, r.stdout, "the output is a config file that resolves to itself")
        r = try metatrain(["config", "--set", "maml.algorithm=reptile"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(
            r.stderr,
            "error: config: 'maml.algorithm' has unknown value 'reptile'; allowed: 'fomaml', 'maml', 'metasgd'\n")
        let table = try metatrain(["config", "--markdown"]).stdout
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
            .appendingPathComponent("docs/CONFIG.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        XCTAssertTrue(
            text.contains(table),
            "docs/CONFIG.md is out of date: regenerate its table with `metatrain config --markdown`")
    }

    func testPipelineEndToEnd() throws {
        let dir = freshDir("e2e")
        let small = [
            "--set", "model.embedding_dim=16", "--set", "model.hidden_dim=16", "--set", "pretrain.batch_size=64"
        ]
        var r = try metatrain([
            "synth", "--out", dir + "/events.csv", "--users", "120", "--courses", "25", "--groups", "3", "--seed", "5"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(
            ["prepare", "--events", dir + "/events.csv", "--out", dir + "/data.h5", "--seed", "5"] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("users: train 96, val 12, test 12"), r.stdout)
        XCTAssertTrue(r.stdout.contains("fingerprint: "), r.stdout)
        r = try metatrain(
            ["pretrain", "--data", dir + "/data.h5", "--run-dir", dir + "/run", "--set", "pretrain.epochs=2"] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("epoch 2/2"), r.stderr)
        for f in ["config.yaml", "metrics.jsonl", "best.h5", "final.h5", "pretrain.log", "run.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/run/" + f), f)
        }
        // run.json says how the run was started, with which build, on what data, where and when.
        let record =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/run/run.json")))
            as! [String: Any]
        XCTAssertEqual((record["command"] as? [String])?.dropFirst().first, "pretrain")
        XCTAssertEqual(
            record["metatrain_version"] as? String,
            try metatrain(["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        XCTAssertEqual((record["dataset"] as? [String: Any])?["path"] as? String, dir + "/data.h5")
        XCTAssertEqual(((record["dataset"] as? [String: Any])?["fingerprint"] as? String)?.count, 64)
        XCTAssertNotNil(record["host"] as? String); XCTAssertNotNil(record["started"] as? String)
        let epochs = try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertTrue(epochs.allSatisfy { $0.contains("\"time\":") }, "every metrics line has its wall-clock time")
        // A second pretrain into the same directory is refused; --overwrite starts it afresh.
        r = try metatrain(
            ["pretrain", "--data", dir + "/data.h5", "--run-dir", dir + "/run", "--set", "pretrain.epochs=2"] + small)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(
            r.stderr.contains(
                "already holds a run (metrics.jsonl, best.h5, last.h5, final.h5, pretrain.log, run.json, config.yaml, tb); pass --overwrite"
            ), r.stderr)
        r = try metatrain(
            [
                "pretrain", "--data", dir + "/data.h5", "--run-dir", dir + "/run", "--set", "pretrain.epochs=2",
                "--overwrite"
            ] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(
            try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 2)
        // --resume continues it, here to a third epoch; it needs a run to continue.
        r = try metatrain(
            [
                "pretrain", "--data", dir + "/data.h5", "--run-dir", dir + "/run", "--set", "pretrain.epochs=3",
                "--resume"
            ] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(
            r.stderr.contains("resumed from \(dir)/run/last.h5 at epoch 2") && r.stderr.contains("epoch 3/3"), r.stderr)
        XCTAssertEqual(
            try String(contentsOfFile: dir + "/run/metrics.jsonl", encoding: .utf8).split(separator: "\n").count, 3)
        XCTAssertTrue(try String(contentsOfFile: dir + "/run/run.json", encoding: .utf8).contains("\"resumed_from\""))
        r = try metatrain(["pretrain", "--data", dir + "/data.h5", "--run-dir", dir + "/nothing", "--resume"] + small)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("no such run directory; nothing to resume"), r.stderr)
        r = try metatrain([
            "evaluate", "--data", dir + "/data.h5", "--checkpoint", dir + "/run/best.h5",
            "--checkpoint", dir + "/run/final.h5", "--split", "test", "--shots", "1,3", "--steps", "1,2",
            "--out", dir + "/report.json", "--set", "eval.bootstrap_samples=200", "--set", "eval.sampled_negatives=5"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("| run/best | few-shot |"), r.stdout)
        XCTAssertTrue(r.stdout.contains("Paired differences against run/best"), r.stdout)
        let report =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json")))
            as! [String: Any]
        XCTAssertEqual(report["split"] as? String, "test")
        XCTAssertEqual(report["n_episodes"] as? Int, 12)
        let methods = report["methods"] as! [String: Any]
        XCTAssertEqual(Set(methods.keys), ["popularity", "run/best", "run/final"])
        let pop = methods["popularity"] as! [String: Any]
        XCTAssertNil(pop["few_shot"])
        let g = methods["run/best"] as! [String: Any]
        for setting in ["zero_shot", "few_shot"] {
            let m = g[setting] as! [String: Any]
            for k in ["acc@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr"] {
                let v = try XCTUnwrap(m[k] as? Double, k)
                XCTAssertTrue((0...1).contains(v))
                let ci = (m["ci95"] as! [String: Any])[k] as! [Double]
                XCTAssertLessThanOrEqual(ci[0], v + 1e-9); XCTAssertGreaterThanOrEqual(ci[1], v - 1e-9)
            }
            XCTAssertEqual(m["n_queries"] as? Int, 120)
            // Sampled-negative metrics come beside the full-catalogue ones, never instead:
            // among 5 negatives a label ranks at most 6th, and never worse than over the whole catalogue.
            let hr5 = try XCTUnwrap(m["hr@5_sampled5"] as? Double), mrr = try XCTUnwrap(m["mrr_sampled5"] as? Double)
            XCTAssertGreaterThanOrEqual(hr5, m["hr@5"] as! Double)
            XCTAssertGreaterThanOrEqual(mrr, max(m["mrr"] as! Double, 1.0 / 6))
            XCTAssertNotNil((m["ci95"] as! [String: Any])["hr@10_sampled5"])
        }
        XCTAssertNotNil((methods["run/final"] as! [String: Any])["paired_vs_first"])
        let abl = report["ablations"] as! [String: Any]
        XCTAssertEqual(Set(((abl["shots"] as! [String: Any])["run/best"] as! [String: Any]).keys), ["1", "3"])
        XCTAssertEqual(Set(((abl["steps"] as! [String: Any])["run/best"] as! [String: Any]).keys), ["1", "2"])
        // A lone checkpoint is named by its run directory; --name overrides, one per checkpoint.
        r = try metatrain([
            "evaluate", "--data", dir + "/data.h5", "--checkpoint", dir + "/run/best.h5", "--episodes", "2"
        ])
        XCTAssertTrue(r.stdout.contains("| run | zero-shot |"), r.stdout)
        r = try metatrain([
            "evaluate", "--data", dir + "/data.h5", "--checkpoint", dir + "/run/best.h5", "--name", "gru4rec",
            "--checkpoint", dir + "/run/final.h5", "--name", "last epoch", "--episodes", "2"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(
            r.stdout.contains("| gru4rec | few-shot |") && r.stdout.contains("| last epoch | few-shot |"), r.stdout)
        r = try metatrain([
            "evaluate", "--data", dir + "/data.h5", "--checkpoint", dir + "/run/best.h5", "--name", "a", "--name", "b"
        ])
        XCTAssertEqual(r.status, 64)
        XCTAssertTrue(r.stderr.contains("--name is given 2 times for 1 --checkpoint"), r.stderr)

        // The checkpoint reads with h5py under PyTorch's state-dict names (tools/check_checkpoint.py).
        try checkWithH5py(dir + "/run/best.h5")

        // A checkpoint from another dataset is refused.
        r = try metatrain(["synth", "--out", dir + "/other.csv", "--users", "60", "--courses", "25", "--seed", "6"])
        r = try metatrain(["prepare", "--events", dir + "/other.csv", "--out", dir + "/other.h5"])
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(["evaluate", "--data", dir + "/other.h5", "--checkpoint", dir + "/run/best.h5"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains("not on this dataset"), r.stderr)
    }

    func testBadInputGetsOneLineErrorAndNoOutputFile() throws {
        let dir = freshDir("bad")
        try "username,course_id,time\nu,C1,100\nu,C2,soon\n".write(
            toFile: dir + "/bad.csv", atomically: true, encoding: .utf8)
        var r = try metatrain(["prepare", "--events", dir + "/bad.csv", "--out", dir + "/out.h5"])
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(
            r.stderr,
            "error: bad.csv:3: unparseable time 'soon' (column 'time') (use --skip-bad-rows to skip such rows)\n")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["bad.csv"])
        r = try metatrain(["prepare", "--events", dir + "/bad.csv", "--out", dir + "/out.h5", "--skip-bad-rows"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("(1 skipped)"), r.stdout)
        r = try metatrain(["prepare", "--events", dir + "/bad.csv", "--out", dir + "/x.h5", "--set", "maml.inner_lrr=1"]
        )
        XCTAssertEqual(r.status, 1)
        XCTAssertEqual(r.stderr, "error: --set: unknown key 'maml.inner_lrr'; did you mean 'maml.inner_lr'?\n")
        r = try metatrain(["prepare", "--events", dir + "/bad.csv", "--out", dir + "/x.h5", "--memory", "lots"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--memory: 'lots' is not a size"), r.stderr)
        // A bad row after the sort has spilled: the spill file goes with the run.
        let rows = (0..<9000).map { "u\($0 % 50),C\($0 % 7),\(1000 + $0)" }.joined(separator: "\n")
        try ("username,course_id,time\n" + rows + "\nu1,C1,later\n").write(
            toFile: dir + "/long.csv", atomically: true, encoding: .utf8)
        r = try metatrain(["prepare", "--events", dir + "/long.csv", "--out", dir + "/long.h5", "--memory", "16K"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("long.csv:9002: unparseable time 'later'"), r.stderr)
        XCTAssertEqual(
            try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["bad.csv", "long.csv", "out.h5"])
        r = try metatrain(["pretrain", "--data", dir + "/missing.h5", "--run-dir", dir + "/run"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.hasPrefix("error: ") && r.stderr.contains("missing.h5"), r.stderr)
        r = try metatrain(["evaluate", "--data", dir + "/out.h5", "--split", "train"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.hasPrefix("error: "), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
    }
}

/// The repository's tools/ directory.
let toolsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("tools")

/// The Python the tests run: tools/.venv's (tools/install-deps.sh makes it), else python3 on the PATH.
func pythonCommand() -> [String] {
    let venv = toolsDirectory.appendingPathComponent(".venv/bin/python3").path
    return FileManager.default.isExecutableFile(atPath: venv) ? [venv] : ["/usr/bin/env", "python3"]
}

/// Runs python3 with the arguments; returns its status and its merged stdout and stderr.
func python(_ args: [String]) throws -> (Int32, String) {
    let p = Process()
    let command = pythonCommand()
    p.executableURL = URL(fileURLWithPath: command[0])
    p.arguments = Array(command.dropFirst()) + args
    let out = Pipe()
    p.standardOutput = out; p.standardError = out
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, text)
}

/// Runs tools/check_checkpoint.py (h5py) on a checkpoint; skipped where python3 has no h5py.
func checkWithH5py(_ path: String) throws {
    guard (try? python(["-c", "import h5py"]))?.0 == 0 else {
        throw XCTSkip("python3 with h5py not available; install it with `pip install h5py`")
    }
    let (status, text) = try python([toolsDirectory.appendingPathComponent("check_checkpoint.py").path, path])
    XCTAssertEqual(status, 0, text)
}

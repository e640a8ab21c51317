import ArgumentParser
import Core
import Datasets
import Foundation
import Storage

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Runs synth, prepare, pretrain, train and evaluate end to end in a fresh directory.",
        discussion: """
            Everything lands in --dir: events.csv, dataset.h5, runs/gru4rec/,
            runs/fomaml/ and report.json; the comparison table is printed, then the
            meta-trained model recommends for one test learner (learner.csv) from
            their events before their first query course.
            Example:
              metatrain demo --dir demo-run
            """)

    @Option(help: "Directory to create for the demo's files (must not exist or be empty).") var dir = "demo-run"
    @Option(help: "Synthetic users.") var users = 3000
    @Option(help: "Synthetic courses.") var courses = 400
    @Option(help: "Pretraining epochs.") var epochs = 5
    @Option(help: "Meta-training iterations (FOMAML, warm-started from the pretrained model).") var iterations = 300
    @Option(help: "Random seed.") var seed: UInt64 = 20_260_107

    func run() throws {
        let fm = FileManager.default
        if let items = try? fm.contentsOfDirectory(atPath: dir), !items.isEmpty {
            throw MetatrainError("\(dir): demo directory exists and is not empty; pass another --dir")
        }
        try fm.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let events = dir + "/events.csv", data = dir + "/dataset.h5", run = dir + "/runs/gru4rec",
            meta = dir + "/runs/fomaml"
        func step(_ title: String, _ body: () throws -> Void) rethrows {
            print("\n== \(title)")
            try body()
        }
        try step("synth: \(users) users, \(courses) courses") {
            let c = try SynthCommand.parse([
                "--out", events, "--users", "\(users)", "--courses", "\(courses)", "--seed", "\(seed)"
            ])
            try c.run()
        }
        try step("prepare") {
            let c = try PrepareCommand.parse(["--events", events, "--out", data, "--seed", "\(seed)"])
            try c.run()
        }
        try step("pretrain GRU4Rec (\(epochs) epochs)") {
            let c = try PretrainCommand.parse([
                "--data", data, "--run-dir", run, "--seed", "\(seed)", "--set", "pretrain.epochs=\(epochs)"
            ])
            try c.run()
        }
        try step("meta-train FOMAML with 2 local workers (\(iterations) iterations, warm start)") {
            let c = try TrainCommand.parse([
                "--data", data, "--run-dir", meta, "--workers", "2", "--seed", "\(seed)",
                "--set", "maml.iterations=\(iterations)", "--set", "warm_start.checkpoint=\(run)/best.h5",
                "--set", "maml.inner_lr=0.05", "--set", "eval.every=100", "--set", "eval.val_episodes=100",
                "--set", "checkpoint.every=100"
            ])
            try c.run()
        }
        try step("evaluate on test users") {
            let c = try EvaluateCommand.parse([
                "--data", data, "--checkpoint", run + "/best.h5", "--checkpoint", meta + "/final.h5", "--split", "test",
                "--shots", "1,3,5", "--steps", "1,5,10", "--out", dir + "/report.json", "--seed", "\(seed)"
            ])
            try c.run()
        }
        try step("recommend for one test learner") {
            let (user, next) = try Self.writeFirstTestLearner(events: events, data: data, to: dir + "/learner.csv")
            print("learner \(user)'s events up to their first query are in \(dir)/learner.csv")
            let c = try RecommendCommand.parse([
                "--checkpoint", meta + "/final.h5", "--events", dir + "/learner.csv", "--top", "5"
            ])
            try c.run()
            print("(the course they actually took next: \(next))")
        }
    }

    /// The first test learner's rows of the log from before their first query pair, written
    /// to `out`; returns the learner and the course of that query.
    static func writeFirstTestLearner(events: String, data: String, to out: String) throws -> (String, String) {
        let (header, learners) = try testLearners(events: events, dataset: try DatasetFile.read(data))
        guard let first = learners.first else { throw MetatrainError("\(data): no test episodes to recommend for") }
        try writeFileAtomically(out, contents: ([header] + first.rows).joined(separator: "\n") + "\n")
        return (first.user, first.next)
    }

    /// Every test learner's rows of the log `events` (synth's layout) from before their first
    /// query pair, with their episode and that query's course: what recommend sees of them when
    /// evaluation asks for that query. Also the log's header line.
    static func testLearners(events: String, dataset: Dataset) throws -> (
        header: String, learners: [(episode: Int, user: String, rows: [String], next: String)]
    ) {
        let lines = try String(contentsOfFile: events, encoding: .utf8).split(separator: "\n").map(String.init)
        guard let headerLine = lines.first else { throw MetatrainError("\(events): empty") }
        let header = headerLine.split(separator: ",").map(String.init)
        guard let cu = header.firstIndex(of: "username"), let ct = header.firstIndex(of: "time") else {
            throw MetatrainError("\(events): no username or time column")
        }
        var byUser: [String: [(time: Int64, row: String)]] = [:]
        for line in lines.dropFirst() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false)
            guard f.count > max(cu, ct), let t = parseTime(String(f[ct])) else { continue }
            byUser[String(f[cu]), default: []].append((t, line))
        }
        let ep = dataset.episodes(.test)
        let learners = (0..<ep.count).compactMap { e -> (Int, String, [String], String)? in
            guard let first = ep.queryPairs(e).first else { return nil }
            let user = dataset.userIds[Int(ep.user[e])], cutoff = dataset.timestamp[Int(first)]
            let rows = (byUser[user] ?? []).filter { $0.time < cutoff }.map(\.row)
            return (e, user, rows, dataset.itemIds[Int(dataset.label[Int(first)])])
        }
        return (headerLine, learners.map { (episode: $0.0, user: $0.1, rows: $0.2, next: $0.3) })
    }
}

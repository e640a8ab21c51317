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
        let dataset = try DatasetFile.read(data)
        let ep = dataset.episodes(.test)
        guard ep.count > 0, let first = ep.queryPairs(0).first else {
            throw MetatrainError("\(data): no test episodes to recommend for")
        }
        let user = dataset.userIds[Int(ep.user[0])]
        let cutoff = dataset.timestamp[Int(first)]
        let lines = try String(contentsOfFile: events, encoding: .utf8).split(separator: "\n").map(String.init)
        let header = lines[0].split(separator: ",").map(String.init)
        guard let cu = header.firstIndex(of: "username"), let ct = header.firstIndex(of: "time") else {
            throw MetatrainError("\(events): no username or time column")
        }
        var kept = [lines[0]]
        for line in lines.dropFirst() {
            let f = line.split(separator: ",", omittingEmptySubsequences: false)
            if f.count > max(cu, ct), f[cu] == user, let t = parseTime(String(f[ct])), t < cutoff { kept.append(line) }
        }
        try writeFileAtomically(out, contents: kept.joined(separator: "\n") + "\n")
        return (user, dataset.itemIds[Int(dataset.label[Int(first)])])
    }
}

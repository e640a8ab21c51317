import ArgumentParser
import Core
import Foundation

struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Runs synth, prepare, pretrain, train and evaluate end to end in a fresh directory.",
        discussion: """
            Everything lands in --dir: events.csv, dataset.h5, runs/gru4rec/,
            runs/fomaml/ and report.json; the comparison table is printed at the end.
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
    }
}

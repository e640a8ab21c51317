import Core
import Datasets
import Evaluation
import ExperimentConfig
import Storage
import XCTest

@testable import Training

final class PretrainTests: XCTestCase {
    /// A fresh directory NAME-PID holding a synthetic event log, e.csv.
    func synthesized(_ name: String, users: Int, courses: Int, groups: Int, seed: UInt64) throws -> String {
        let dir = NSTemporaryDirectory() + "\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var o = SynthOptions(); o.users = users; o.courses = courses; o.groups = groups; o.seed = seed
        _ = try Synth.write(to: dir + "/e.csv", options: o)
        return dir
    }

    /// On synthetic data with planted transition patterns, the pretrained model
    /// beats popularity by a wide margin, best.h5 and final.h5 load, and two
    /// runs with the same seed give the same bits.
    func testLearnsPlantedTransitionsAndIsDeterministic() throws {
        let dir = try synthesized("mt-pretrain", users: 150, courses: 60, groups: 6, seed: 3)
        let config = try Config.load(
            path: nil,
            overrides: [
                "model.embedding_dim=16", "model.hidden_dim=24", "pretrain.epochs=4",
                "pretrain.batch_size=64", "pretrain.lr=0.01", "data.val_fraction=0.2"
            ])
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: config)
        func train(_ name: String) throws -> Pretrainer.Result {
            try Pretrainer(
                dataset: d, fingerprint: d.fingerprint, config: config,
                run: try RunDirectory(dir + "/" + name, logName: "pretrain.log"), progress: nil
            ).train()
        }
        let r = try train("a")
        _ = try train("b")
        let pop = Evaluator(dataset: d, split: .val).popularity().reduce(MetricSums(), +).mean(.hr10)
        print("pretrain val HR@10 \(r.bestHR10), popularity \(pop)")
        XCTAssertGreaterThan(r.bestHR10, pop + 0.15, "GRU4Rec \(r.bestHR10) vs popularity \(pop)")
        let a = try CheckpointFile.read(dir + "/a/final.h5", expectedFingerprint: d.fingerprint)
        let b = try CheckpointFile.read(dir + "/b/final.h5", expectedFingerprint: d.fingerprint)
        XCTAssertEqual(a.params.array, b.params.array)
        XCTAssertEqual(a.kind, .pretrain)
        XCTAssertEqual(try CheckpointFile.read(dir + "/a/best.h5").iteration, r.bestEpoch)
        XCTAssertEqual(try Config.parse(a.configJSON, origin: "ckpt"), config)
        let lines = try String(contentsOfFile: dir + "/a/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, r.epochs)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/a/config.yaml"))
    }

    /// A run stopped after 2 epochs and resumed to 4 (as after a kill, or to
    /// extend it) gives the bits of an uninterrupted 4-epoch run: weights, Adam
    /// state, best epoch and metrics. Keys that may not change are refused by name.
    func testResumeGivesTheBitsOfAnUninterruptedRun() throws {
        let dir = try synthesized("mt-pretrain-resume", users: 80, courses: 30, groups: 4, seed: 4)
        let base = [
            "model.embedding_dim=8", "model.hidden_dim=8", "pretrain.batch_size=64", "pretrain.lr=0.01",
            "data.val_fraction=0.2", "pretrain.patience=3"
        ]
        let config = try Config.load(path: nil, overrides: base + ["pretrain.epochs=4"])
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: config)
        func train(_ name: String, _ extra: [String], resume: Bool = false) throws -> Pretrainer.Result {
            try Pretrainer(
                dataset: d, fingerprint: d.fingerprint, config: try Config.load(path: nil, overrides: base + extra),
                run: try RunDirectory(dir + "/" + name, logName: "pretrain.log"), progress: nil
            ).train(resume: resume)
        }
        let whole = try train("whole", ["pretrain.epochs=4"])
        XCTAssertNil(whole.resumedFrom)
        _ = try train("parts", ["pretrain.epochs=2"])
        // A crash after the metrics line but before last.h5: the line is dropped and recomputed.
        let metrics = dir + "/parts/metrics.jsonl"
        try (try String(contentsOfFile: metrics, encoding: .utf8) + "{\"epoch\":3,\"train_loss\":9}\n").write(
            toFile: metrics, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try train("parts", ["pretrain.epochs=4", "model.dropout=0.5"], resume: true)) { e in
            XCTAssertTrue("\(e)".contains("cannot resume with another model.dropout (checkpoint: 0"), "\(e)")
        }
        let parts = try train("parts", ["pretrain.epochs=4"], resume: true)
        XCTAssertEqual(parts.resumedFrom, dir + "/parts/last.h5")
        XCTAssertEqual(parts.epochs, whole.epochs); XCTAssertEqual(parts.bestEpoch, whole.bestEpoch)
        XCTAssertEqual(parts.bestHR10, whole.bestHR10)
        for file in ["final.h5", "best.h5", "last.h5"] {
            let a = try CheckpointFile.read(dir + "/whole/" + file), b = try CheckpointFile.read(dir + "/parts/" + file)
            XCTAssertEqual(a.params.array, b.params.array, file); XCTAssertEqual(a.adamM?.array, b.adamM?.array, file);
            XCTAssertEqual(a.adamStep, b.adamStep, file)
            XCTAssertEqual(a.iteration, b.iteration, file)
            XCTAssertEqual(a.history.map { $0.values }, b.history.map { $0.values }, file)
        }
        func numbers(_ path: String) throws -> [[Double]] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
                let j = try JSON.parse(String(line))
                return ["epoch", "train_loss", "val_hr@10", "val_loss"].map { j[$0]?.double ?? .nan }
            }
        }
        XCTAssertEqual(try numbers(dir + "/whole/metrics.jsonl"), try numbers(metrics))
        XCTAssertThrowsError(try train("nothing", ["pretrain.epochs=4"], resume: true)) { e in
            XCTAssertTrue("\(e)".contains("no last.h5 to resume from"), "\(e)")
        }
    }
}

import XCTest
import Configuration
import Core
import Data
import Evaluation
import Storage
@testable import Training

final class PretrainTests: XCTestCase {
    /// On synthetic data with planted transition patterns, the pretrained model
    /// beats popularity by a wide margin, best.h5 and final.h5 load, and two
    /// runs with the same seed give the same bits.
    func testLearnsPlantedTransitionsAndIsDeterministic() throws {
        let dir = NSTemporaryDirectory() + "mt-pretrain-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var o = SynthOptions(); o.users = 150; o.courses = 60; o.groups = 6; o.seed = 3
        _ = try Synth.write(to: dir + "/e.csv", options: o)
        let config = try Config.load(path: nil, overrides: ["model.embedding_dim=16", "model.hidden_dim=24", "pretrain.epochs=4",
                                                            "pretrain.batch_size=64", "pretrain.lr=0.01", "data.val_fraction=0.2"])
        let (d, _) = try Prepare.run(csvPath: dir + "/e.csv", config: config)
        func train(_ name: String) throws -> Pretrainer.Result {
            try Pretrainer(dataset: d, fingerprint: d.fingerprint, config: config,
                           run: try RunDirectory(dir + "/" + name, logName: "pretrain.log"), progress: nil).train()
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
}

import ExperimentConfig
import Foundation
import Storage
import XCTest

/// A trained model carries what using it needs (issue "recommend and serve", item 1): the
/// course vocabulary and counts, the prepare settings and the adaptation policy; an older
/// checkpoint without them still evaluates with the dataset beside it.
final class SelfContainedModelTests: XCTestCase {
    func testCheckpointsCarryTheVocabularyPrepareSettingsAndAdaptation() throws {
        let dir = freshDir("self-contained")
        let data = try syntheticDataset(in: dir)
        let dataset = try DatasetFile.read(data)
        let (settings, actions) = try Config.prepareSettings(dataset.prepareJSON, origin: data)
        XCTAssertEqual(settings.dataSectionJSON, Config.defaults().dataSectionJSON, "prepare records its settings")
        XCTAssertGreaterThan(actions ?? 0, 0, "and how many action kinds it interned (synth has an action column)")
        let small = ["--set", "model.embedding_dim=8", "--set", "model.hidden_dim=8"]
        var r = try metatrain(
            ["pretrain", "--data", data, "--run-dir", dir + "/pre", "--set", "pretrain.epochs=1"] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(
            [
                "train", "--data", data, "--run-dir", dir + "/meta", "--workers", "1", "--set", "maml.iterations=3",
                "--set", "maml.algorithm=metasgd", "--set", "maml.inner_steps=2"
            ] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        for path in [dir + "/pre/best.h5", dir + "/meta/final.h5"] {
            let ck = try CheckpointFile.read(path)
            XCTAssertEqual(ck.itemIds ?? [], dataset.itemIds, path)
            XCTAssertEqual(ck.itemCounts ?? [], Array(dataset.itemCounts), path)
            XCTAssertEqual(ck.prepareJSON, dataset.prepareJSON, path)
            try checkWithH5py(path)
        }
        let meta = try CheckpointFile.read(dir + "/meta/final.h5")
        let adaptation =
            try JSONSerialization.jsonObject(with: Data((meta.adaptationJSON ?? "").utf8)) as? [String: Any] ?? [:]
        XCTAssertEqual(adaptation["algorithm"] as? String, "metasgd")
        XCTAssertEqual(adaptation["inner_steps"] as? Int, 2)
        XCTAssertNotNil(meta.metaSGDAlpha, "Meta-SGD's learned rates are the rest of its policy")

        // A version-1 checkpoint (no vocabulary, no settings) still evaluates with --data.
        let old = dir + "/old.h5"
        try FileManager.default.copyItem(atPath: dir + "/meta/final.h5", toPath: old)
        let downgrade = """
            import sys, h5py, numpy as np
            with h5py.File(sys.argv[1], "r+") as f:
                del f["vocab"]
                for k in ["prepare", "adaptation"]:
                    del f.attrs[k]
                f.attrs["version"] = np.int64(1)
            """
        try downgrade.write(toFile: dir + "/downgrade.py", atomically: true, encoding: .utf8)
        let (status, text) = try python([dir + "/downgrade.py", old])
        XCTAssertEqual(status, 0, text)
        XCTAssertNil(try CheckpointFile.read(old).itemIds)
        r = try metatrain(["evaluate", "--data", data, "--checkpoint", old, "--split", "val", "--out", dir + "/r.json"])
        XCTAssertEqual(r.status, 0, r.stderr)
    }
}

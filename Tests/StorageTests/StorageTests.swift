import XCTest
import Configuration
import Core
import Data
import GRU4Rec
import Kernels
@testable import Storage

func tmpFile(_ name: String) -> String {
    let dir = NSTemporaryDirectory() + "mt-storage-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir + "/" + name
}

final class StorageTests: XCTestCase {
    func smallDataset() throws -> Dataset {
        var o = SynthOptions(); o.users = 40; o.courses = 30; o.seed = 4
        let csv = tmpFile("s.csv")
        _ = try Synth.write(to: csv, options: o)
        return try Prepare.run(csvPath: csv, config: Config.defaults()).0
    }

    func testDatasetRoundTrip() throws {
        let d = try smallDataset()
        let p = tmpFile("d.h5")
        try DatasetFile.write(d, to: p)
        let back = try DatasetFile.read(p)
        XCTAssertEqual(back, d)
        XCTAssertEqual(try DatasetFile.fingerprint(of: p), d.fingerprint)
        XCTAssertEqual(d.fingerprint.count, 64)
        // A different dataset has a different fingerprint.
        var e = d; e.label[0] = e.label[0] == 1 ? 2 : 1
        XCTAssertNotEqual(e.fingerprint, d.fingerprint)
    }

    /// Prefix offsets that are not runs of 1 to max_seq_len items (every worker would trap on them) are refused when read.
    func testPrefixOffsetsAreChecked() throws {
        let d = try smallDataset()
        for (name, change) in [("empty", { (e: inout Dataset) in e.prefixOffsets[1] = e.prefixOffsets[2] }),
                               ("backwards", { (e: inout Dataset) in e.prefixOffsets[1] = e.prefixOffsets[2] + 1 })] {
            var e = d
            change(&e)
            let p = tmpFile("offsets-\(name).h5")
            try DatasetFile.write(e, to: p)
            XCTAssertThrowsError(try DatasetFile.read(p), name) { error in
                XCTAssertTrue("\(error)".contains("pairs/prefix_offsets[0...1]") || "\(error)".contains("pairs/prefix_offsets[1...2]"), "\(error)")
            }
        }
    }

    func testTruncatedForeignAndMissingFiles() throws {
        let d = try smallDataset()
        let p = tmpFile("t.h5")
        try DatasetFile.write(d, to: p)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: p))
        let cut = tmpFile("cut.h5")
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: cut))
        XCTAssertThrowsError(try DatasetFile.read(cut)) { e in XCTAssertTrue("\(e)".contains("cut.h5"), "\(e)") }
        XCTAssertThrowsError(try CheckpointFile.read(cut)) { e in XCTAssertTrue("\(e)".contains("cut.h5"), "\(e)") }
        XCTAssertThrowsError(try CheckpointFile.read(p)) { e in XCTAssertTrue("\(e)".contains("not a metatrain checkpoint"), "\(e)") }
        XCTAssertThrowsError(try DatasetFile.read(tmpFile("nope.h5"))) { e in XCTAssertTrue("\(e)".contains("no such file"), "\(e)") }
        let text = tmpFile("text.h5")
        try "hello".write(toFile: text, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DatasetFile.read(text)) { e in XCTAssertTrue("\(e)".contains("not an HDF5 file"), "\(e)") }
    }

    func testCheckpointRoundTripWithEverySection() throws {
        let dims = ModelDims(V: 13, E: 4, H: 3)
        let model = GRU4Rec(dims: dims)
        var rng = SeededGenerator(seed: 1)
        let params = model.initialParameters(rng: &rng)
        let m = model.initialParameters(rng: &rng), v = model.initialParameters(rng: &rng), a = model.initialParameters(rng: &rng)
        let c = Checkpoint(dims: dims, params: params, adamM: m, adamV: v, metaSGDAlpha: a,
                           history: [("iteration", [1, 2]), ("loss", [3.5, 2.25])], iteration: 7, adamStep: 6,
                           seed: 20_260_107, configJSON: Config.defaults().json, datasetFingerprint: "abc",
                           kind: .meta, algorithm: "metasgd")
        let p = tmpFile("c.h5")
        try CheckpointFile.write(c, to: p)
        let b = try CheckpointFile.read(p, expectedFingerprint: "abc")
        XCTAssertEqual(b.dims, dims)
        XCTAssertEqual(b.params.array, params.array)
        XCTAssertEqual(b.adamM!.array, m.array); XCTAssertEqual(b.adamV!.array, v.array)
        XCTAssertEqual(b.metaSGDAlpha!.array, a.array)
        XCTAssertEqual(b.history.map(\.name), ["iteration", "loss"])
        XCTAssertEqual(b.history[1].values, [3.5, 2.25])
        XCTAssertEqual(b.iteration, 7); XCTAssertEqual(b.adamStep, 6); XCTAssertEqual(b.seed, 20_260_107)
        XCTAssertEqual(b.kind, .meta); XCTAssertEqual(b.algorithm, "metasgd")
        XCTAssertEqual(try Config.parse(b.configJSON, origin: "ckpt"), Config.defaults())
        // Shapes are PyTorch's.
        let f = try HDF5File.open(p)
        XCTAssertEqual(try f.shape("model/gru.weight_ih_l0"), [9, 4])
        XCTAssertEqual(try f.shape("model/fc.weight"), [13, 3])
        XCTAssertEqual(try f.shape("model/fc.bias"), [13])
        XCTAssertThrowsError(try CheckpointFile.read(p, expectedFingerprint: "xyz")) { e in
            XCTAssertTrue("\(e)".contains("not on this dataset"), "\(e)")
        }
        // One flipped bit in a tensor, which HDF5 itself reads back without a word: the checksum catches it.
        var bytes = try Data(contentsOf: URL(fileURLWithPath: p))
        let needle = withUnsafeBytes(of: m.ptr[5].bitPattern) { Data($0) } + withUnsafeBytes(of: m.ptr[6].bitPattern) { Data($0) }
        let at = try XCTUnwrap(bytes.range(of: needle), "the Adam moments lie in the file as written").lowerBound
        bytes[at] ^= 1
        let damaged = tmpFile("damaged.h5")
        try bytes.write(to: URL(fileURLWithPath: damaged))
        XCTAssertThrowsError(try CheckpointFile.read(damaged)) { e in
            XCTAssertTrue("\(e)".contains("its tensors do not match their checksum"), "\(e)")
        }
    }
}

final class DeterministicFileTests: XCTestCase {
    /// Same contents, written a second apart, give the same bytes (no HDF5 time stamps).
    func testSameCheckpointSameBytes() throws {
        let dims = ModelDims(V: 5, E: 2, H: 2)
        var rng = SeededGenerator(seed: 1)
        let p = GRU4Rec(dims: dims).initialParameters(rng: &rng)
        let c = Checkpoint(dims: dims, params: p, history: [("loss", [1, 2])], iteration: 1, adamStep: 1, seed: 1,
                           configJSON: "{}", datasetFingerprint: "f", kind: .meta, algorithm: "fomaml")
        try CheckpointFile.write(c, to: tmpFile("a.h5"))
        Thread.sleep(forTimeInterval: 1.1)
        try CheckpointFile.write(c, to: tmpFile("b.h5"))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: tmpFile("a.h5"))), try Data(contentsOf: URL(fileURLWithPath: tmpFile("b.h5"))))
    }
}

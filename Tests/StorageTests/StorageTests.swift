import Core
import Datasets
import ExperimentConfig
import GRU4Rec
import Kernels
import XCTest

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

    /// A dataset read back uses its numbers where they lie in the mapped file (the processes
    /// on a host share them): the columns of 512 bytes or more are views, equal to what was
    /// written; changing one copies it and leaves the file and other readers alone; and
    /// writing a read dataset again gives the same bytes.
    func testDatasetsAreMappedNotCopied() throws {
        let d = try smallDataset()
        let p = tmpFile("mapped.h5")
        try DatasetFile.write(d, to: p)
        let back = try DatasetFile.read(p)
        XCTAssertGreaterThanOrEqual(4 * d.prefixItems.count, 512, "the fixture is too small to be mapped")
        XCTAssertTrue(back.prefixItems.isView)
        XCTAssertTrue(back.prefixOffsets.isView)
        XCTAssertFalse(d.prefixItems.isView)
        XCTAssertTrue(
            try String(contentsOfFile: "/proc/self/maps", encoding: .utf8).contains(p), "the file is not mapped")
        XCTAssertEqual(Array(back.prefixItems), Array(d.prefixItems))
        var changed = back
        changed.prefixItems[0] = changed.prefixItems[0] == 1 ? 2 : 1
        XCTAssertFalse(changed.prefixItems.isView)
        XCTAssertEqual(back.prefixItems[0], d.prefixItems[0])
        XCTAssertEqual(try DatasetFile.read(p), d)
        let again = tmpFile("mapped-again.h5")
        try DatasetFile.write(back, to: again)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: again)), try Data(contentsOf: URL(fileURLWithPath: p)))
    }

    /// Prefix offsets that are not runs of 1 to max_seq_len items (every worker would trap on them) are refused when read.
    func testPrefixOffsetsAreChecked() throws {
        let d = try smallDataset()
        for (name, change) in [
            ("empty", { (e: inout Dataset) in e.prefixOffsets[1] = e.prefixOffsets[2] }),
            ("backwards", { (e: inout Dataset) in e.prefixOffsets[1] = e.prefixOffsets[2] + 1 })
        ] {
            var e = d
            change(&e)
            let p = tmpFile("offsets-\(name).h5")
            try DatasetFile.write(e, to: p)
            XCTAssertThrowsError(try DatasetFile.read(p), name) { error in
                XCTAssertTrue(
                    "\(error)".contains("pairs/prefix_offsets[0...1]")
                        || "\(error)".contains("pairs/prefix_offsets[1...2]"), "\(error)")
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
        XCTAssertThrowsError(try CheckpointFile.read(p)) { e in
            XCTAssertTrue("\(e)".contains("not a metatrain checkpoint"), "\(e)")
        }
        XCTAssertThrowsError(try DatasetFile.read(tmpFile("nope.h5"))) { e in
            XCTAssertTrue("\(e)".contains("no such file"), "\(e)")
        }
        let text = tmpFile("text.h5")
        try "hello".write(toFile: text, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try DatasetFile.read(text)) { e in
            XCTAssertTrue("\(e)".contains("not an HDF5 file"), "\(e)")
        }
    }

    func testCheckpointRoundTripWithEverySection() throws {
        let dims = ModelDims(V: 13, E: 4, H: 3)
        let model = GRU4Rec(dims: dims)
        var rng = SeededGenerator(seed: 1)
        let params = model.initialParameters(rng: &rng)
        let m = model.initialParameters(rng: &rng), v = model.initialParameters(rng: &rng),
            a = model.initialParameters(rng: &rng)
        let c = Checkpoint(
            dims: dims, params: params, adamM: m, adamV: v, metaSGDAlpha: a,
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
        let needle =
            withUnsafeBytes(of: m.ptr[5].bitPattern) { Data($0) }
            + withUnsafeBytes(of: m.ptr[6].bitPattern) { Data($0) }
        let at = try XCTUnwrap(bytes.range(of: needle), "the Adam moments lie in the file as written").lowerBound
        bytes[at] ^= 1
        let damaged = tmpFile("damaged.h5")
        try bytes.write(to: URL(fileURLWithPath: damaged))
        XCTAssertThrowsError(try CheckpointFile.read(damaged)) { e in
            XCTAssertTrue("\(e)".contains("its tensors do not match their checksum"), "\(e)")
        }
    }

    /// Version 2 is self-contained: the vocabulary and label counts, the prepare settings and
    /// the adaptation policy round-trip; a checkpoint without them (as version 1 had) still reads.
    func testSelfContainedCheckpointRoundTrip() throws {
        let dims = ModelDims(V: 4, E: 2, H: 2)
        var rng = SeededGenerator(seed: 3)
        let params = GRU4Rec(dims: dims).initialParameters(rng: &rng)
        let config = Config.defaults()
        var c = Checkpoint(
            dims: dims, params: params, iteration: 1, adamStep: 0, seed: 1, configJSON: config.json,
            datasetFingerprint: "fp", kind: .pretrain, algorithm: "gru4rec")
        let bare = tmpFile("bare.h5")
        try CheckpointFile.write(c, to: bare)
        let b0 = try CheckpointFile.read(bare)
        XCTAssertNil(b0.itemIds); XCTAssertNil(b0.prepareJSON); XCTAssertNil(b0.adaptationJSON)
        c.itemIds = ["<pad>", "C1", "课程 2", "C,3"]; c.itemCounts = [0, 5, 7, 1]
        c.prepareJSON = config.dataSectionJSON; c.adaptationJSON = config.adaptationJSON
        let full = tmpFile("full.h5")
        try CheckpointFile.write(c, to: full)
        let b = try CheckpointFile.read(full)
        XCTAssertEqual(b.itemIds!, c.itemIds!); XCTAssertEqual(b.itemCounts!, c.itemCounts!)
        XCTAssertEqual(b.prepareJSON, c.prepareJSON); XCTAssertEqual(b.adaptationJSON, c.adaptationJSON)
        XCTAssertEqual(try HDF5File.open(full).intAttribute("version"), 2)
        // The settings are JSON a reader can use: the session gap, and the inner loop.
        let prepare = try JSONSerialization.jsonObject(with: Data(b.prepareJSON!.utf8)) as! [String: Any]
        XCTAssertEqual((prepare["data"] as? [String: Any])?["session_gap_s"] as? Int, config.data.sessionGapS)
        let adaptation = try JSONSerialization.jsonObject(with: Data(b.adaptationJSON!.utf8)) as! [String: Any]
        XCTAssertEqual(adaptation["algorithm"] as? String, "fomaml")
        XCTAssertEqual(adaptation["inner_steps"] as? Int, config.maml.innerSteps)
        XCTAssertNotNil(adaptation["weighting"] as? [String: Any])
    }
}

/// HDF5 writing to the disk itself (`writeToDisk`, for datasets) when the disk fills up
/// part-way: an error that says so, no file left, and a library that can still close the
/// file (one it cannot close crashes the process as it exits: this test binary).
final class FullDiskWriteTests: XCTestCase {
    func testAWriteThatRunsOutOfRoomLeavesNoFileAndClosesCleanly() throws {
        guard getuid() == 0 else { throw XCTSkip("mounting a small file system needs root") }
        let disk = NSTemporaryDirectory() + "mt-full-\(getpid())"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=1m", "tmpfs", disk]
        try mount.run(); mount.waitUntilExit()
        guard mount.terminationStatus == 0 else { throw XCTSkip("cannot mount a tmpfs here") }
        defer {
            let u = Process(); u.executableURL = URL(fileURLWithPath: "/bin/umount"); u.arguments = [disk]
            try? u.run(); u.waitUntilExit()
        }
        let big = [Float](repeating: 1, count: 1 << 20) // 4 MB
        // No reservation: the write itself runs out of room, part-way through a dataset file.
        var o = SynthOptions()
        o.users = 2000; o.courses = 100
        let csv = NSTemporaryDirectory() + "mt-full-\(getpid()).csv"
        _ = try Synth.write(to: csv, options: o)
        let d = try Prepare.run(csvPath: csv, config: Config.defaults()).0
        XCTAssertGreaterThan(d.bytesOnDisk, 2 << 20)
        XCTAssertThrowsError(
            try HDF5File.writeToDisk(disk + "/a.h5") { f in try DatasetFile.write(d, into: f, fingerprint: "x") }
        ) { error in
            XCTAssertTrue("\(error)".contains("is full"), "\(error)")
        }
        // With one: said before anything is written.
        XCTAssertThrowsError(
            try HDF5File.writeToDisk(disk + "/b.h5", reserve: 4 << 20) { f in try f.write("x", big) }
        ) { error in
            XCTAssertTrue("\(error)".contains("no room for 5 MB"), "\(error)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: disk), [])
        XCTAssertEqual(HDF5File.openFiles, 0, "HDF5 closed the files it could not finish")
        // Room again: a small file is written and read back.
        try HDF5File.writeToDisk(disk + "/c.h5", reserve: 1 << 16) { f in
            try f.write("x", [Float](repeating: 2, count: 100))
        }
        XCTAssertEqual(
            try HDF5File.open(disk + "/c.h5").read("x", as: Float.self).values, [Float](repeating: 2, count: 100))
    }
}

final class DeterministicFileTests: XCTestCase {
    /// Same contents, written a second apart, give the same bytes (no HDF5 time stamps).
    func testSameCheckpointSameBytes() throws {
        let dims = ModelDims(V: 5, E: 2, H: 2)
        var rng = SeededGenerator(seed: 1)
        let p = GRU4Rec(dims: dims).initialParameters(rng: &rng)
        let c = Checkpoint(
            dims: dims, params: p, history: [("loss", [1, 2])], iteration: 1, adamStep: 1, seed: 1,
            configJSON: "{}", datasetFingerprint: "f", kind: .meta, algorithm: "fomaml")
        try CheckpointFile.write(c, to: tmpFile("a.h5"))
        Thread.sleep(forTimeInterval: 1.1)
        try CheckpointFile.write(c, to: tmpFile("b.h5"))
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: tmpFile("a.h5"))),
            try Data(contentsOf: URL(fileURLWithPath: tmpFile("b.h5"))))
    }
}

/// TensorBoard event files: CRC-32C known answers, and a file read back record
/// by record (lengths and both CRCs checked, protos decoded).
final class TensorBoardEventsTests: XCTestCase {
    func testCRC32CKnownAnswers() {
        XCTAssertEqual(TensorBoardEvents.crc32c(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(TensorBoardEvents.crc32c([]), 0)
        XCTAssertEqual(TensorBoardEvents.crc32c([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
        XCTAssertEqual(TensorBoardEvents.crc32c([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    }

    /// Reads TFRecords, checking each length and data CRC; returns the records.
    func records(_ path: String) throws -> [[UInt8]] {
        let b = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var out: [[UInt8]] = [], i = 0
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * $1) } }
        while i < b.count {
            let n = Int((0..<8).reduce(UInt64(0)) { $0 | UInt64(b[i + $1]) << (8 * $1) })
            XCTAssertEqual(u32(i + 8), TensorBoardEvents.maskedCRC(Array(b[i..<(i + 8)])))
            let data = Array(b[(i + 12)..<(i + 12 + n)])
            XCTAssertEqual(u32(i + 12 + n), TensorBoardEvents.maskedCRC(data))
            out.append(data)
            i += 16 + n
        }
        return out
    }

    /// Decodes (field, wire type, value bytes or varint) of one proto message.
    func fields(_ m: [UInt8]) -> [(Int, [UInt8], UInt64)] {
        var out: [(Int, [UInt8], UInt64)] = [], i = 0
        func varint() -> UInt64 {
            var v: UInt64 = 0, s: UInt64 = 0;
            while true { let x = m[i]; i += 1; v |= UInt64(x & 0x7F) << s; s += 7; if x < 0x80 { return v } }
        }
        while i < m.count {
            let key = varint(), field = Int(key >> 3)
            switch key & 7 {
            case 0: out.append((field, [], varint()))
            case 1: out.append((field, Array(m[i..<(i + 8)]), 0)); i += 8
            case 5: out.append((field, Array(m[i..<(i + 4)]), 0)); i += 4
            default: let n = Int(varint()); out.append((field, Array(m[i..<(i + n)]), 0)); i += n
            }
        }
        return out
    }

    func testScalarsReadBack() throws {
        let dir = NSTemporaryDirectory() + "tb-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        let w = try TensorBoardEvents(directory: dir, now: Date(timeIntervalSince1970: 1_800_000_000))
        try w.scalars([("meta_loss", 2.5), ("val_hr@10", 0.125)], step: 300, wallTime: 1_800_000_001.5)
        let recs = try records(w.path)
        XCTAssertEqual(recs.count, 2)
        XCTAssertEqual(fields(recs[0]).map(\.0), [1, 3])
        XCTAssertEqual(String(decoding: fields(recs[0])[1].1, as: UTF8.self), "brain.Event:2")
        let e = fields(recs[1])
        XCTAssertEqual(e.map(\.0), [1, 2, 5])
        XCTAssertEqual(
            Double(bitPattern: e[0].1.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }), 1_800_000_001.5)
        XCTAssertEqual(e[1].2, 300)
        let values = fields(e[2].1).map { fields($0.1) }
        XCTAssertEqual(values.map { String(decoding: $0[0].1, as: UTF8.self) }, ["meta_loss", "val_hr@10"])
        XCTAssertEqual(
            values.map { Float(bitPattern: $0[1].1.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }) },
            [2.5, 0.125])
    }
}

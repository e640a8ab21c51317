import Core
import ExperimentConfig
import XCTest

@testable import Datasets

func tempPath(_ name: String) -> String {
    let dir = NSTemporaryDirectory() + "mt-tests-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir + "/" + name
}

func writeTemp(_ name: String, _ text: String) -> String {
    let p = tempPath(name)
    try! text.write(toFile: p, atomically: true, encoding: .utf8)
    return p
}

final class TimeTests: XCTestCase {
    func testFormats() {
        XCTAssertEqual(parseTime("1444723977"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13 08:12:57"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13T08:12:57"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13T08:12:57Z"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13T16:12:57+08:00"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13T03:12:57-0500"), 1_444_723_977)
        XCTAssertEqual(parseTime("2015-10-13 08:12:57.250"), 1_444_723_977)
        XCTAssertEqual(parseTime("1444723977.9"), 1_444_723_977)
        XCTAssertNil(parseTime("yesterday"))
        XCTAssertNil(parseTime("2015-13-01 00:00:00"))
        XCTAssertNil(parseTime(""))
        XCTAssertEqual(formatTime(1_444_723_977), "2015-10-13 08:12:57")
        XCTAssertEqual(formatTime(0), "1970-01-01 00:00:00")
    }
}

final class CSVTests: XCTestCase {
    func testQuotedFieldsAndLineNumbers() throws {
        let text = "a,b\r\n\"x,1\",\"he said \"\"hi\"\"\"\n\"multi\nline\",2\n\n3,\n"
        var bytes = Array(text.utf8)
        try bytes.withUnsafeMutableBufferPointer { buf in
            var s = CSVScanner(UnsafeBufferPointer(buf))
            var f: [CSVScanner.Field] = []
            XCTAssertEqual(try s.next(into: &f), 1); XCTAssertEqual(f.map(s.string), ["a", "b"])
            XCTAssertEqual(try s.next(into: &f), 2); XCTAssertEqual(f.map(s.string), ["x,1", "he said \"hi\""])
            XCTAssertEqual(try s.next(into: &f), 3); XCTAssertEqual(f.map(s.string), ["multi\nline", "2"])
            XCTAssertEqual(try s.next(into: &f), 6); XCTAssertEqual(f.map(s.string), ["3", ""])
            XCTAssertNil(try s.next(into: &f))
        }
    }

    func testOtherDelimiters() throws {
        let text = "a\tb\tc\n\"x\ty\"\t,2\n\t\t\n"
        var bytes = Array(text.utf8)
        try bytes.withUnsafeMutableBufferPointer { buf in
            var s = CSVScanner(UnsafeBufferPointer(buf), delimiter: 0x09)
            var f: [CSVScanner.Field] = []
            XCTAssertEqual(try s.next(into: &f), 1); XCTAssertEqual(f.map(s.string), ["a", "b", "c"])
            // The comma is an ordinary character when tabs separate fields.
            XCTAssertEqual(try s.next(into: &f), 2); XCTAssertEqual(f.map(s.string), ["x\ty", ",2"])
            XCTAssertEqual(try s.next(into: &f), 3); XCTAssertEqual(f.map(s.string), ["", "", ""])
            XCTAssertNil(try s.next(into: &f))
        }
        XCTAssertEqual(try Delimiter.parse("tab"), 0x09)
        XCTAssertEqual(try Delimiter.parse("\\t"), 0x09)
        XCTAssertEqual(try Delimiter.parse("comma"), 0x2C)
        XCTAssertEqual(try Delimiter.parse(";"), 0x3B)
        XCTAssertEqual(try Delimiter.parse("|"), 0x7C)
        for bad in ["\"", "ab", "", "é"] {
            XCTAssertThrowsError(try Delimiter.parse(bad)) { XCTAssertTrue("\($0)".contains("--delimiter"), "\($0)") }
        }
        XCTAssertEqual(Delimiter.implied(byFileName: "ml-100k.inter"), 0x09)
        XCTAssertEqual(Delimiter.implied(byFileName: "x.TSV"), 0x09)
        XCTAssertEqual(Delimiter.implied(byFileName: "x.csv"), 0x2C)
    }
}

final class PrepareTests: XCTestCase {
    // Worked by hand in the comments below; see docs/FORMATS.md for the rules.
    let log = """
        username,course_id,session_id,action,time
        b,C1,s1,play_video,100
        b,C1,s1,pause_video,400
        b,C2,s2,play_video,5000
        a,C3,s3,load_video,50
        a,C2,s3,play_video,60
        a,C2,s4,play_video,7000
        a,C1,s5,problem_get,9000
        b,C3,s6,play_video,9500
        c,C9,s7,play_video,10
        c,C1,s7,play_video,20

        """

    func config(_ extra: [String] = []) throws -> Config {
        try Config.load(
            path: nil,
            overrides: [
                "data.k_support=1", "data.q_query=1", "data.val_fraction=0.34",
                "data.test_fraction=0.34"
            ] + extra)
    }

    func testEveryStepOnAHandWorkedLog() throws {
        let (d, s) = try Prepare.run(csvPath: writeTemp("hand.csv", log), config: try config())
        // Vocabulary: C1 ×4, C2 ×3, C3 ×2, C9 ×1.
        XCTAssertEqual(d.itemIds, ["<pad>", "C1", "C2", "C3", "C9"])
        XCTAssertEqual(d.itemCounts, [0, 4, 3, 2, 1])
        XCTAssertEqual(d.userIds, ["a", "b", "c"])
        // a: visits C3, C2, C1 (the second C2 collapses); b: C1, C2, C3; c: C9, C1.
        XCTAssertEqual(d.pairUser, [0, 0, 1, 1, 2])
        XCTAssertEqual((0..<5).map { Array(d.prefix($0)) }, [[3], [3, 2], [1], [1, 2], [4]])
        XCTAssertEqual(d.label, [2, 1, 2, 3, 1])
        XCTAssertEqual(d.timestamp, [60, 9000, 5000, 9500, 20])
        // Reliability: 4 distinct actions in the dataset.
        let s3 = Float((2.0 / 100 + 10.0 / 1800 + 2.0 / 4) / 3) // a's C2 visit: session s3
        let one = Float((1.0 / 100 + 0 + 1.0 / 4) / 3) // single-event sessions
        for (got, want) in zip(d.reliability, [s3, one, one, one, Float((2.0 / 100 + 10.0 / 1800 + 1.0 / 4) / 3)]) {
            XCTAssertEqual(got, want, accuracy: 1e-6)
        }
        // Split: a and b have K+Q = 2 pairs; one val, one test; b started later -> test.
        XCTAssertEqual(d.userSplit, [1, 2, 0])
        XCTAssertEqual(d.episodes(.val).support, [0]); XCTAssertEqual(d.episodes(.val).query, [1])
        XCTAssertEqual(d.episodes(.test).support, [2]); XCTAssertEqual(d.episodes(.test).query, [3])
        XCTAssertEqual(d.episodes(.train).count, 0)
        XCTAssertEqual(s.sessions, 7)
        XCTAssertEqual(s.events, 10)
        XCTAssertTrue(s.usedSessionColumn && s.usedActionColumn)
    }

    func testGapSessionsTruncationMinCountAndStride() throws {
        let noSession =
            log.split(separator: "\n").map { line in
                line.split(separator: ",", omittingEmptySubsequences: false).enumerated().filter { $0.offset != 2 }.map
                { String($0.element) }.joined(separator: ",")
            }.joined(separator: "\n") + "\n"
        let (d, s) = try Prepare.run(
            csvPath: writeTemp("gap.csv", noSession),
            config: try config(["data.max_seq_len=1", "data.min_item_count=2", "data.split=random"]))
        XCTAssertFalse(s.usedSessionColumn)
        // C9 dropped: c has a single visit left, so no pairs.
        XCTAssertEqual(d.itemIds, ["<pad>", "C1", "C2", "C3"])
        XCTAssertEqual(s.droppedItems, 1)
        XCTAssertEqual((0..<4).map { Array(d.prefix($0)) }, [[3], [2], [1], [2]])
        // Gap sessions: a = {50,60}, {7000}, {9000}; b = {100,400}, {5000}, {9500}; c = {10,20}.
        XCTAssertEqual(s.sessions, 7)
        XCTAssertEqual(d.reliability[0], Float((2.0 / 100 + 10.0 / 1800 + 2.0 / 4) / 3), accuracy: 1e-6)
        // Random split still puts one eligible user in each of val and test.
        XCTAssertEqual(d.userSplit.filter { $0 == 1 }.count, 1)
        XCTAssertEqual(d.userSplit.filter { $0 == 2 }.count, 1)
        XCTAssertEqual(d.userSplit[2], 0)
    }

    func testTrainEpisodesUseWindowsWithStride() throws {
        var rows = ["username,course_id,time"]
        for t in 0..<8 { rows.append("u,I\(t % 4),\(t * 10_000)") } // 8 visits -> 7 pairs
        let p = writeTemp("train.csv", rows.joined(separator: "\n") + "\n")
        let (d, _) = try Prepare.run(
            csvPath: p,
            config: try Config.load(
                path: nil,
                overrides: [
                    "data.k_support=2", "data.q_query=2", "data.train_stride=2", "data.val_fraction=0",
                    "data.test_fraction=0"
                ]))
        let e = d.episodes(.train)
        XCTAssertEqual(e.count, 2) // starts 0 and 2 (4 + 4 > 7 stops it)
        XCTAssertEqual(e.support, [0, 1, 2, 3]); XCTAssertEqual(e.query, [2, 3, 4, 5])
    }

    func testBadRowsNameTheLineAndSkipCounts() throws {
        let bad = "username,course_id,time\nu1,C1,100\nu1,C2,not-a-time\nu1,C3\n,C1,5\nu2,C1,7\nu2,C2,9\n"
        let p = writeTemp("bad.csv", bad)
        XCTAssertThrowsError(try Prepare.run(csvPath: p, config: Config.defaults())) { e in
            XCTAssertEqual(
                "\(e)",
                "bad.csv:3: unparseable time 'not-a-time' (column 'time') (use --skip-bad-rows to skip such rows)")
        }
        let (d, s) = try Prepare.run(csvPath: p, skipBadRows: true, config: Config.defaults())
        XCTAssertEqual(s.skippedRows, 3)
        XCTAssertEqual(s.events, 3)
        XCTAssertEqual(d.nPairs, 1) // u1 keeps one visit; u2 has C1 -> C2
        XCTAssertThrowsError(
            try Prepare.run(csvPath: writeTemp("nocol.csv", "user,item,when\n"), config: Config.defaults())
        ) { e in
            XCTAssertTrue("\(e)".contains("no column 'username'"), "\(e)")
        }
    }

    func testRatingsLogThroughColumnFlags() throws {
        let ratings =
            "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n1,1061,3.0,1260759182\n2,31,4.0,835355493\n2,10,4.0,835355681\n"
        var cols = ColumnMap()
        cols.user = "userId"; cols.item = "movieId"; cols.time = "timestamp"; cols.action = "rating";
        cols.actionRequired = true
        let (d, s) = try Prepare.run(
            csvPath: writeTemp("ratings.csv", ratings), columns: cols, config: Config.defaults())
        XCTAssertEqual(s.events, 5)
        XCTAssertEqual(d.itemIds.first, "<pad>")
        XCTAssertEqual(d.itemIds[1], "31")
        XCTAssertEqual(d.nPairs, 3)
        XCTAssertTrue(d.source.contains("action=rating"))
    }

    /// The same log as a semicolon file, a TSV and a RecBole atomic file gives
    /// the same dataset as the CSV.
    func testDelimitersAndRecBoleHeadersGiveTheSameDataset() throws {
        let (csv, _) = try Prepare.run(csvPath: writeTemp("same.csv", log), config: try config())
        let semicolons = log.replacingOccurrences(of: ",", with: ";")
        let (semi, _) = try Prepare.run(
            csvPath: writeTemp("same.txt", semicolons), delimiter: 0x3B, config: try config())
        XCTAssertEqual(semi.fingerprint, csv.fingerprint)
        XCTAssertTrue(semi.source.contains("delimiter=;"), semi.source)
        let tabs = log.replacingOccurrences(of: ",", with: "\t")
        let (tsv, _) = try Prepare.run(csvPath: writeTemp("same.tsv", tabs), config: try config())
        XCTAssertEqual(tsv.fingerprint, csv.fingerprint)
        // RecBole: typed headers, its standard column names, tabs.
        let inter = tabs.replacingOccurrences(
            of: "username\tcourse_id\tsession_id\taction\ttime",
            with: "user_id:token\titem_id:token\tsession_id:token\taction:token\ttimestamp:float")
        let (rb, _) = try Prepare.run(csvPath: writeTemp("same.inter", inter), columns: .recBole, config: try config())
        XCTAssertEqual(rb.fingerprint, csv.fingerprint)
        // A tab file read as commas names the fix.
        XCTAssertThrowsError(try Prepare.run(csvPath: writeTemp("tabs.csv", tabs), config: try config())) {
            XCTAssertTrue("\($0)".contains("use --delimiter tab"), "\($0)")
        }
        // A header that only looks typed is read as it is.
        XCTAssertEqual(strippingRecBoleTypes(["a:token", "b:rating"]), ["a:token", "b:rating"])
        XCTAssertEqual(
            strippingRecBoleTypes(["user_id:token", "item_id:token_seq", "r:float"]), ["user_id", "item_id", "r"])
    }
}

final class MappedLogTests: XCTestCase {
    /// A log larger than the parser's release step (16 MB) reads as the same events whether
    /// its pages are let go behind the parser or the whole file is in memory; an empty file
    /// says so.
    func testReleasingPagesBehindTheParserChangesNothing() throws {
        var o = SynthOptions()
        o.users = 3000; o.courses = 300; o.seed = 5
        let p = tempPath("big.csv")
        _ = try Synth.write(to: p, options: o)
        let size = try FileManager.default.attributesOfItem(atPath: p)[.size] as! Int
        XCTAssertGreaterThan(size, 32 << 20, "the log must span more than one release step")
        let (mapped, _, _) = try Prepare.read(csvPath: p)
        let whole = try Data(contentsOf: URL(fileURLWithPath: p))
        let (read, _, _) = try whole.withUnsafeBytes {
            try Prepare.parse(
                bytes: $0.bindMemory(to: UInt8.self), fileName: "big.csv", columns: ColumnMap(), delimiter: 0x2C,
                skipBadRows: false)
        }
        XCTAssertEqual(mapped.count, read.count)
        XCTAssertEqual(mapped.user, read.user)
        XCTAssertEqual(mapped.item, read.item)
        XCTAssertEqual(mapped.time, read.time)
        XCTAssertEqual(mapped.session, read.session)
        XCTAssertEqual(mapped.userNames, read.userNames)
        XCTAssertThrowsError(try Prepare.read(csvPath: writeTemp("empty.csv", ""))) { error in
            XCTAssertTrue("\(error)".contains("empty file"), "\(error)")
        }
    }
}

final class SynthTests: XCTestCase {
    func testDeterministicAndPlanted() throws {
        var o = SynthOptions()
        o.users = 60; o.courses = 40; o.seed = 9
        let (a, sa) = Synth.generate(o)
        let (b, _) = Synth.generate(o)
        XCTAssertEqual(a, b)
        o.seed = 10
        XCTAssertNotEqual(Synth.generate(o).0, a)
        XCTAssertGreaterThan(sa.noisyVisits, sa.visits / 10)
        XCTAssertGreaterThan(sa.driftUsers, 10)
        // Prepared, noisy (short, one-action) sessions score lower reliability.
        let p = tempPath("synth.csv")
        o.seed = 9
        _ = try Synth.write(to: p, options: o)
        let (d, s) = try Prepare.run(csvPath: p, config: Config.defaults())
        XCTAssertEqual(s.events, sa.events)
        let low = d.reliability.filter { $0 < 0.05 }.count, high = d.reliability.filter { $0 > 0.15 }.count
        XCTAssertGreaterThan(low, d.nPairs / 10)
        XCTAssertGreaterThan(high, d.nPairs / 2)
        XCTAssertGreaterThan(d.episodes(.test).count, 0)
    }

    /// `synth` writes the log as it makes it, 8 MB at a time: the file is the log made in memory.
    func testSynthWritesTheLogItMakes() throws {
        var o = SynthOptions()
        o.users = 1200; o.courses = 50; o.seed = 3
        let p = tempPath("streamed.csv")
        let written = try Synth.write(to: p, options: o)
        let (log, made) = Synth.generate(o)
        XCTAssertGreaterThan(log.count, 2 * (8 << 20), "several pieces")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: p)), log)
        XCTAssertEqual(written.events, made.events)
    }

    /// Bounded-memory prepare (events sorted through a buffer that spills to disk) gives the
    /// dataset the in-memory path gives, bit for bit, on three configurations, whether nothing,
    /// a little or nearly everything spills; the spill file is gone afterwards.
    func testBoundedMemoryPrepareEqualsTheInMemoryOne() throws {
        var o = SynthOptions()
        o.users = 400; o.courses = 60; o.seed = 5
        let p = tempPath("bounded.csv")
        _ = try Synth.write(to: p, options: o)
        let spill = tempPath("spill-dir")
        try FileManager.default.createDirectory(atPath: spill, withIntermediateDirectories: true)
        var noSession = ColumnMap()
        noSession.session = "no_such_column"
        var noAction = ColumnMap()
        noAction.action = "no_such_column"
        let configurations: [(ColumnMap, [String])] = [
            (ColumnMap(), []),
            (noSession, ["data.split=random", "data.min_item_count=40", "data.session_gap_s=600"]),
            (noAction, ["data.max_seq_len=3", "data.train_stride=2", "data.k_support=2", "data.q_query=3"])
        ]
        for (columns, overrides) in configurations {
            let config = try Config.load(path: nil, overrides: overrides)
            let (want, ws) = try Prepare.runInMemory(csvPath: p, columns: columns, config: config)
            // 16 KB: a buffer of 4,096 events (the smallest), so ~20 spills and buckets; 1 MB:
            // a few; the default: none.
            for memory in [16 << 10, 1 << 20, Prepare.defaultMemory] {
                let (got, gs) = try Prepare.run(
                    csvPath: p, columns: columns, config: config, memory: memory, spillDirectory: spill)
                XCTAssertEqual(got.fingerprint, want.fingerprint, "\(overrides), memory \(memory)")
                XCTAssertEqual(got, want, "\(overrides), memory \(memory)")
                XCTAssertEqual(gs.text, ws.text)
                XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: spill), [], "no spill file left")
            }
        }
        XCTAssertGreaterThan(try Prepare.runInMemory(csvPath: p, config: Config.defaults()).1.events, 4 * 4096)
    }

    /// Session ids are compared within a user by a hash of their bytes; quoted ids ("" for ")
    /// hash as their unquoted text, so the two ways of writing one id are one session.
    func testQuotedSessionIdsAreOneSessionInBothPaths() throws {
        let log = """
            username,course_id,session_id,action,time
            u1,c1,"s""1",a,100
            u1,c2,s1,a,200
            u1,c3,"s""1",a,300
            u1,c1,s"1,b,400
            u1,c2,"s1",b,500
            u2,c1,x,a,100
            u2,c2,x,a,200
            u2,c3,y,a,300
            u2,c1,x,a,400
            """
        let p = writeTemp("quoted-sessions.csv", log + "\n")
        let c = try Config.load(
            path: nil,
            overrides: ["data.k_support=1", "data.q_query=1", "data.val_fraction=0.34", "data.test_fraction=0.34"])
        let (want, ws) = try Prepare.runInMemory(csvPath: p, config: c)
        let (got, gs) = try Prepare.run(csvPath: p, config: c, memory: 16 << 10)
        XCTAssertEqual(ws.sessions, 4)
        XCTAssertEqual(gs.sessions, 4)
        XCTAssertEqual(got, want)
    }

    func testByteSizes() throws {
        XCTAssertEqual(try ByteSize.parse("4G"), 4 << 30)
        XCTAssertEqual(try ByteSize.parse("512m"), 512 << 20)
        XCTAssertEqual(try ByteSize.parse("1.5G"), 3 << 29)
        XCTAssertEqual(try ByteSize.parse("64KB"), 64 << 10)
        XCTAssertEqual(try ByteSize.parse("1000"), 1000)
        for bad in ["", "G", "-1G", "lots", "4T"] {
            XCTAssertThrowsError(try ByteSize.parse(bad), bad)
        }
    }
}

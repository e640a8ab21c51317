import Foundation
import XCTest

/// Data that arrives in other shapes than metatrain's CSV: tab-separated and
/// RecBole files through `prepare`, and the seed notebooks' parquet through
/// tools/import_notebooks.py.
final class DataInTests: XCTestCase {
    /// A RecBole atomic file and a tab-separated file with --delimiter go through
    /// `prepare` from the command line, and give the dataset the CSV gives.
    func testPrepareReadsRecBoleAndOtherDelimiters() throws {
        let dir = freshDir("recbole")
        var rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        var csv = ["u,i,r,t"]
        for u in 0..<30 {
            for k in 0..<8 {
                let item = (u * 3 + k * k) % 17, t = 1_000_000 + u * 1000 + k * 10
                rows.append("\(u)\t\(item)\t\(k % 5 + 1).0\t\(t).0")
                csv.append("\(u),\(item),\(k % 5 + 1),\(t)")
            }
        }
        try (rows.joined(separator: "\n") + "\n").write(toFile: dir + "/log.inter", atomically: true, encoding: .utf8)
        try (csv.joined(separator: "\n") + "\n").write(toFile: dir + "/log.csv", atomically: true, encoding: .utf8)
        try (csv.joined(separator: "\n").replacingOccurrences(of: ",", with: "|") + "\n")
            .write(toFile: dir + "/log.txt", atomically: true, encoding: .utf8)
        let small = ["--set", "data.k_support=2", "--set", "data.q_query=2"]
        var r = try metatrain(
            ["prepare", "--events", dir + "/log.inter", "--out", dir + "/a.h5", "--action-col", "rating"] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        let fingerprint = r.stdout.split(separator: "\n").first { $0.hasPrefix("fingerprint: ") }
        XCTAssertNotNil(fingerprint, r.stdout)
        r = try metatrain(
            [
                "prepare", "--events", dir + "/log.csv", "--out", dir + "/b.h5", "--user-col", "u", "--item-col", "i",
                "--time-col", "t", "--action-col", "r"
            ] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(String(fingerprint ?? "?")), r.stdout)
        r = try metatrain(
            [
                "prepare", "--events", dir + "/log.txt", "--delimiter", "|", "--out", dir + "/c.h5", "--user-col", "u",
                "--item-col", "i", "--time-col", "t", "--action-col", "r"
            ] + small)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains(String(fingerprint ?? "?")), r.stdout)
        r = try metatrain(["prepare", "--events", dir + "/log.txt", "--delimiter", "ab", "--out", dir + "/d.h5"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.hasPrefix("error: --delimiter: 'ab' is not one character"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/d.h5"))
    }

    /// Parquet files shaped like the notebooks' (written here with pyarrow, rows
    /// out of order, pairs spread over three files) become a dataset that keeps
    /// every user, pair, item index and episode split, and that pretrain,
    /// train and evaluate accept. Broken inputs get one line naming file and row.
    func testNotebookParquetImportKeepsUsersPairsAndEpisodes() throws {
        guard (try? python(["-c", "import pyarrow, h5py, numpy"]))?.0 == 0 else {
            throw XCTSkip("python3 with pyarrow, h5py and numpy is needed (pip install -r tools/requirements.txt)")
        }
        let dir = freshDir("notebooks")
        let fixture = """
            import json, random, sys
            import pyarrow as pa, pyarrow.parquet as pq
            d = sys.argv[1]
            rng = random.Random(5)
            V = 40
            json.dump({"course_to_idx": {f"course-{i:02d}": i for i in range(1, V)}}, open(f"{d}/course_vocab.json", "w"))
            splits = {"train": [f"u{i:02d}" for i in range(24)], "val": ["v1", "v2", "v3"], "test": ["t1", "t2", "t3"]}
            pairs, episodes, pid = {s: [] for s in splits}, {s: [] for s in splits}, 1000
            for s, users in splits.items():
                for u in users:
                    history = [rng.randrange(1, V) for _ in range(11)]
                    mine = []
                    for t in range(1, 11):
                        pid += 7
                        mine.append(pid)
                        pairs[s].append({"pair_id": pid, "user_id": u, "prefix": history[max(0, t - 6):t],
                                         "label": history[t], "label_ts_epoch": 1_500_000_000 + 3600 * t})
                    starts = [0, 3] if s == "train" else [0]
                    for a in starts:
                        sup, qry = mine[a:a + 3], mine[a + 3:a + 7]
                        rng.shuffle(sup)
                        episodes[s].append({"user_id": u, "support_pair_ids": sup, "query_pair_ids": qry})
            for s in splits:
                rng.shuffle(pairs[s])
                pq.write_table(pa.Table.from_pylist(pairs[s]), f"{d}/pairs_{s}.parquet")
                pq.write_table(pa.Table.from_pylist(episodes[s]), f"{d}/episodes_{s}.parquet")
            json.dump({"pairs": pairs, "episodes": episodes}, open(f"{d}/expected.json", "w"))
            """
        let check = """
            import json, sys, h5py
            d, out = sys.argv[1], sys.argv[2]
            exp = json.load(open(f"{d}/expected.json"))
            f = h5py.File(out, "r")
            items = [x.decode() if isinstance(x, bytes) else x for x in f["vocab/item_ids"][:]]
            users = [x.decode() if isinstance(x, bytes) else x for x in f["users/ids"][:]]
            off, pre, lab, ts = f["pairs/prefix_offsets"][:], f["pairs/prefix_items"][:], f["pairs/label"][:], f["pairs/timestamp"][:]
            pu, split = f["pairs/user"][:], f["users/split"][:]
            assert items[0] == "<pad>" and items[7] == "course-07" and len(items) == 40, items[:8]
            def pair(i):
                return (users[pu[i]], [int(x) for x in pre[off[i]:off[i + 1]]], int(lab[i]), int(ts[i]))
            stored = sorted(pair(i) for i in range(len(lab)))
            original = {p["pair_id"]: (p["user_id"], p["prefix"], p["label"], p["label_ts_epoch"]) for s in exp["pairs"] for p in exp["pairs"][s]}
            assert stored == sorted(original.values()), "pairs differ"
            for code, s in enumerate(["train", "val", "test"]):
                sup, qry, eu = f[f"episodes/{s}/support"][:], f[f"episodes/{s}/query"][:], f[f"episodes/{s}/user"][:]
                assert len(eu) == len(exp["episodes"][s]), (s, len(eu))
                for row, e in enumerate(exp["episodes"][s]):
                    assert users[eu[row]] == e["user_id"] and split[eu[row]] == code, (s, row)
                    want = [original[p] for p in sorted(e["support_pair_ids"], key=lambda p: original[p][3])]
                    assert [pair(int(i)) for i in sup[row]] == want, (s, row, "support")
                    assert [pair(int(i)) for i in qry[row]] == [original[p] for p in e["query_pair_ids"]], (s, row, "query")
            assert f.attrs["k_support"] == 3 and f.attrs["q_query"] == 4 and f.attrs["max_seq_len"] == 6
            print("same users, pairs and episodes")
            """
        try fixture.write(toFile: dir + "/fixture.py", atomically: true, encoding: .utf8)
        try check.write(toFile: dir + "/check.py", atomically: true, encoding: .utf8)
        let data = dir + "/nb"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        var (status, text) = try python([dir + "/fixture.py", data])
        XCTAssertEqual(status, 0, text)
        let tool = toolsDirectory.appendingPathComponent("import_notebooks.py").path
        (status, text) = try python([tool, "--dir", data, "--out", dir + "/nb.h5"])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(
            text.contains("30 users, 300 pairs, vocabulary 40, K=3 Q=4, episodes train 48, val 3, test 3"), text)
        (status, text) = try python([dir + "/check.py", data, dir + "/nb.h5"])
        XCTAssertEqual(status, 0, text)

        // Every command takes it: the fingerprint checks out as they read it.
        let tiny = ["--set", "model.embedding_dim=8", "--set", "model.hidden_dim=8"]
        var r = try metatrain(
            ["pretrain", "--data", dir + "/nb.h5", "--run-dir", dir + "/pre", "--set", "pretrain.epochs=1"] + tiny)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(
            [
                "train", "--data", dir + "/nb.h5", "--run-dir", dir + "/meta", "--workers", "1", "--set",
                "maml.iterations=2",
                "--set", "maml.meta_batch_size=4", "--set", "eval.every=100", "--set", "checkpoint.every=100"
            ] + tiny)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain([
            "evaluate", "--data", dir + "/nb.h5", "--checkpoint", dir + "/pre/best.h5", "--checkpoint",
            dir + "/meta/final.h5",
            "--split", "val"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("| pre | few-shot |") && r.stdout.contains("| meta | few-shot |"), r.stdout)

        // Broken inputs: one line naming the file and row; no output file.
        let breakIt = """
            import sys, pyarrow as pa, pyarrow.parquet as pq
            p = sys.argv[1] + "/episodes_val.parquet"
            rows = pq.read_table(p).to_pylist()
            rows[1]["query_pair_ids"] = rows[1]["query_pair_ids"] + [999999]
            pq.write_table(pa.Table.from_pylist(rows), p)
            """
        try breakIt.write(toFile: dir + "/break.py", atomically: true, encoding: .utf8)
        (status, text) = try python([dir + "/break.py", data])
        XCTAssertEqual(status, 0, text)
        (status, text) = try python([tool, "--dir", data, "--out", dir + "/broken.h5"])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(
            text, "error: \(data)/episodes_val.parquet: row 1: query pair 999999 is not in the pairs files\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/broken.h5"))
        (status, text) = try python([tool, "--dir", dir + "/nowhere", "--out", dir + "/broken.h5"])
        XCTAssertEqual(status, 1)
        XCTAssertEqual(text, "error: \(dir)/nowhere: no such directory\n")
    }

    /// The notebooks' own tree (data/processed/xuetangx): pairs/ split files, reliability
    /// beside them in pairs_with_reliability/ as session_reliability, episodes/ with a K/Q
    /// suffix, vocab/course2id.json, some prefixes stored as strings. The importer reads it
    /// as it is, keeps every reliability, says where each field came from, and names a
    /// [0, 1] float column it does not read instead of dropping it silently.
    func testNotebookTreeAsTheNotebooksLayItOut() throws {
        guard (try? python(["-c", "import pyarrow, h5py, numpy"]))?.0 == 0 else {
            throw XCTSkip("python3 with pyarrow, h5py and numpy is needed (pip install -r tools/requirements.txt)")
        }
        let dir = freshDir("notebook-tree")
        let fixture = """
            import json, os, random, sys
            import pyarrow as pa, pyarrow.parquet as pq
            root = sys.argv[1]
            for sub in ["pairs", "pairs_with_reliability", "episodes", "vocab"]:
                os.makedirs(f"{root}/{sub}", exist_ok=True)
            rng = random.Random(9)
            V = 30
            json.dump({f"C{i:03d}": i for i in range(1, V)}, open(f"{root}/vocab/course2id.json", "w"))
            splits = {"train": [f"u{i}" for i in range(12)], "val": ["v1", "v2"], "test": ["t1", "t2"]}
            pairs, episodes, rel, pid = {s: [] for s in splits}, {s: [] for s in splits}, [], 0
            for s, users in splits.items():
                for u in users:
                    h = [rng.randrange(1, V) for _ in range(9)]
                    mine = []
                    for t in range(1, 9):
                        pid += 1
                        mine.append(pid)
                        prefix = h[max(0, t - 4):t]
                        pairs[s].append({"pair_id": pid, "user_id": u, "prefix": prefix if s == "train" else str(prefix),
                                         "label": h[t], "label_ts_epoch": 1_600_000_000 + 60 * t})
                        rel.append({"pair_id": pid, "session_reliability": round(rng.random(), 3)})
                    episodes[s].append({"user_id": u, "support_pair_ids": mine[:3], "query_pair_ids": mine[3:7]})
            # train's prefixes are lists, val's and test's their string form (as the 07f notebook reads them)
            for s in splits:
                pq.write_table(pa.Table.from_pylist(pairs[s]), f"{root}/pairs/pairs_{s}.parquet")
                pq.write_table(pa.Table.from_pylist(episodes[s]), f"{root}/episodes/episodes_{s}_K3_Q4.parquet")
            pq.write_table(pa.Table.from_pylist(rel), f"{root}/pairs_with_reliability/pairs.parquet")
            json.dump({str(r["pair_id"]): r["session_reliability"] for r in rel}, open(f"{root}/../reliability.json", "w"))
            # A flattened copy whose reliability column has another name.
            flat = f"{root}/../flat"
            os.makedirs(flat, exist_ok=True)
            by_id = {r["pair_id"]: r["session_reliability"] for r in rel}
            for s in splits:
                rows = [dict(p, prefix=p["prefix"] if isinstance(p["prefix"], list) else json.loads(p["prefix"]),
                             rel_score=by_id[p["pair_id"]]) for p in pairs[s]]
                pq.write_table(pa.Table.from_pylist(rows), f"{flat}/pairs_{s}.parquet")
                pq.write_table(pa.Table.from_pylist(episodes[s]), f"{flat}/episodes_{s}.parquet")
            json.dump({f"C{i:03d}": i for i in range(1, V)}, open(f"{flat}/course_vocab.json", "w"))
            """
        let check = """
            import json, sys, h5py, numpy as np
            out, expected = sys.argv[1], json.load(open(sys.argv[2]))
            f = h5py.File(out, "r")
            rel = f["pairs/reliability"][:]
            want = sorted(np.float32(v) for v in expected.values())
            assert sorted(rel.tolist()) == [float(x) for x in want], "reliability differs"
            assert len(rel) == 128 and f.attrs["k_support"] == 3 and f.attrs["q_query"] == 4
            print("reliability kept")
            """
        try fixture.write(toFile: dir + "/fixture.py", atomically: true, encoding: .utf8)
        try check.write(toFile: dir + "/check.py", atomically: true, encoding: .utf8)
        let root = dir + "/data/processed/xuetangx"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        var (status, text) = try python([dir + "/fixture.py", root])
        XCTAssertEqual(status, 0, text)
        let tool = toolsDirectory.appendingPathComponent("import_notebooks.py").path
        (status, text) = try python([tool, "--dir", root, "--out", dir + "/tree.h5"])
        XCTAssertEqual(status, 0, text)
        for line in [
            "vocabulary: \(root)/vocab/course2id.json (29 items)",
            "pairs: pairs/pairs_train.parquet, pairs/pairs_val.parquet, pairs/pairs_test.parquet",
            "reliability: pairs_with_reliability/pairs.parquet column session_reliability",
            "episodes train: episodes/episodes_train_K3_Q4.parquet",
            "16 users, 128 pairs, vocabulary 30, K=3 Q=4, episodes train 12, val 2, test 2"
        ] {
            XCTAssertTrue(text.contains(line), "missing \(line): \(text)")
        }
        (status, text) = try python([dir + "/check.py", dir + "/tree.h5", root + "/../reliability.json"])
        XCTAssertEqual(status, 0, text)
        // The flattened copy: no recognised reliability column, so 1.0 and a warning naming rel_score.
        (status, text) = try python([tool, "--dir", dir + "/data/processed/flat", "--out", dir + "/flat.h5"])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.contains("reliability: no session_reliability or reliability column"), text)
        XCTAssertTrue(text.contains("warning: pairs_train.parquet: rel_score holds only values in [0, 1]"), text)
        // Two episode sets for one split: the importer asks which.
        try FileManager.default.copyItem(
            atPath: root + "/episodes/episodes_train_K3_Q4.parquet",
            toPath: root + "/episodes/episodes_train_K5_Q10.parquet")
        (status, text) = try python([tool, "--dir", root, "--out", dir + "/two.h5"])
        XCTAssertEqual(status, 1)
        XCTAssertTrue(text.contains("pick one with --episodes-suffix"), text)
        (status, text) = try python([tool, "--dir", root, "--out", dir + "/two.h5", "--episodes-suffix", "K3_Q4"])
        XCTAssertEqual(status, 0, text)
    }

    /// Every tool meets a missing input with one line that names it and a
    /// non-zero status, never a traceback.
    func testToolsFailWithOneLine() throws {
        guard (try? python(["-c", "pass"]))?.0 == 0 else { throw XCTSkip("python3 is not available") }
        let dir = freshDir("tools")
        try "{\"t\": 1}\n".write(toFile: dir + "/bad.jsonl", atomically: true, encoding: .utf8)
        try "not hdf5".write(toFile: dir + "/bad.h5", atomically: true, encoding: .utf8)
        let cases: [(tool: String, args: [String], names: String)] = [
            ("check_checkpoint.py", [dir + "/missing.h5"], "missing.h5"),
            ("check_checkpoint.py", [dir + "/bad.h5"], "bad.h5"),
            ("trace_summary.py", [dir + "/missing.jsonl"], "missing.jsonl"),
            ("trace_summary.py", [dir + "/bad.jsonl"], "bad.jsonl:1"),
            ("plot_run.py", [dir + "/no-run"], "no-run"),
            ("import_notebooks.py", ["--dir", dir + "/none", "--out", dir + "/x.h5"], "none")
        ]
        for c in cases {
            let (status, text) = try python([toolsDirectory.appendingPathComponent(c.tool).path] + c.args)
            XCTAssertNotEqual(status, 0, "\(c.tool): \(text)")
            XCTAssertEqual(text.split(separator: "\n").count, 1, "\(c.tool): \(text)")
            XCTAssertTrue(text.hasPrefix("error: "), "\(c.tool): \(text)")
            // A tool whose package is missing says which one instead.
            XCTAssertTrue(text.contains(c.names) || text.contains("is not installed"), "\(c.tool): \(text)")
        }
    }
}

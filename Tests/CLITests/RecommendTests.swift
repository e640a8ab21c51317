import Datasets
import Evaluation
import Foundation
import Recommendation
import Storage
import XCTest

@testable import metatrain

/// A model trained on the demo's data (the demo's synth and prepare settings; a small model and
/// a short run), shared by the tests of recommend, serve and export.
enum DemoModel {
    struct Made {
        let dir: String, events: String, data: String, pretrained: String, meta: String
    }
    nonisolated(unsafe) static var made: Made?
    static let lock = NSLock()

    static func get() throws -> Made {
        lock.lock(); defer { lock.unlock() }
        if let made { return made }
        let dir = freshDir("demo-model")
        let events = dir + "/events.csv", data = dir + "/dataset.h5"
        let seed = "20260107"
        var r = try metatrain(["synth", "--out", events, "--users", "3000", "--courses", "400", "--seed", seed])
        guard r.status == 0 else { throw NSError(domain: "synth: \(r.stderr)", code: 1) }
        r = try metatrain(["prepare", "--events", events, "--out", data, "--seed", seed])
        guard r.status == 0 else { throw NSError(domain: "prepare: \(r.stderr)", code: 1) }
        let small = ["--set", "model.embedding_dim=16", "--set", "model.hidden_dim=16", "--seed", seed]
        r = try metatrain(
            ["pretrain", "--data", data, "--run-dir", dir + "/pre", "--set", "pretrain.epochs=1"] + small)
        guard r.status == 0 else { throw NSError(domain: "pretrain: \(r.stderr)", code: 1) }
        r = try metatrain(
            [
                "train", "--data", data, "--run-dir", dir + "/meta", "--workers", "1", "--set", "maml.iterations=4",
                "--set", "maml.inner_lr=0.05", "--set", "warm_start.checkpoint=\(dir)/pre/best.h5",
                "--set", "weighting.scheme=recency", "--set", "checkpoint.every=2"
            ] + small)
        guard r.status == 0 else { throw NSError(domain: "train: \(r.stderr)", code: 1) }
        let m = Made(
            dir: dir, events: events, data: data, pretrained: dir + "/pre/best.h5", meta: dir + "/meta/final.h5")
        made = m
        return m
    }

    /// Each test user's events up to (not including) their first query's course, from the
    /// raw log, by user id.
    static func eventsBeforeFirstQuery(_ m: Made) throws -> (Dataset, [(episode: Int, user: String, rows: [String])]) {
        let dataset = try DatasetFile.read(m.data)
        let (_, learners) = try DemoCommand.testLearners(events: m.events, dataset: dataset)
        return (dataset, learners.map { (episode: $0.episode, user: $0.user, rows: $0.rows) })
    }
}

/// Tests/peers: the independent Python readers and clients.
let peersDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("peers")

final class RecommendTests: XCTestCase {
    /// Item 2's equality: for every test user of the demo data, recommend on the user's events up
    /// to their first query gives, bit for bit, the scores evaluate's few-shot path gives that query.
    func testRecommendEqualsEvaluatesFewShotScoresForEveryTestUser() throws {
        let m = try DemoModel.get()
        let (dataset, users) = try DemoModel.eventsBeforeFirstQuery(m)
        XCTAssertGreaterThan(users.count, 100)
        let header = String(try String(contentsOfFile: m.events, encoding: .utf8).prefix { $0 != "\n" })
        for path in [m.meta, m.pretrained] {
            let model = try Recommender(checkpoint: path)
            let ck = try CheckpointFile.read(path)
            let policy = try FewShotPolicy(for: ck, path: path, config: .defaults())
            let evaluator = Evaluator(dataset: dataset, split: .test)
            var adapted = 0
            for u in users {
                let csv = m.dir + "/one.csv"
                try (header + "\n" + u.rows.joined(separator: "\n") + "\n").write(
                    toFile: csv, atomically: true, encoding: .utf8)
                let (log, _, _) = try Prepare.read(csvPath: csv)
                let r = model.recommend(log, k: dataset.nItems, includeSeen: true)
                XCTAssertEqual(
                    r.pairs, dataset.kSupport, "user \(u.user): the events before the first query make K pairs")
                XCTAssertEqual(r.items.count, dataset.nItems - 1)
                let expected = evaluator.fewShotScores(ck.params, dims: ck.dims, policy: policy, episode: u.episode)[0]
                var got = [Float](repeating: .nan, count: dataset.nItems)
                for s in r.items { got[s.index] = s.score }
                let same = (1..<dataset.nItems).allSatisfy { got[$0].bitPattern == expected[$0].bitPattern }
                XCTAssertTrue(
                    same, "\(path), user \(u.user): recommend's scores differ from evaluate's few-shot scores")
                if r.adapted { adapted += 1 }
                if !same { break }
            }
            XCTAssertEqual(adapted, users.count, "every test user adapts on K pairs")
        }
    }

    /// Item 6: the demo ends by recommending for one test learner, from their events before
    /// their first query (a small demo: few users, short runs).
    func testDemoEndsByRecommendingForATestLearner() throws {
        let dir = freshDir("demo-recommend") + "/run"
        let r = try metatrain([
            "demo", "--dir", dir, "--users", "400", "--courses", "60", "--epochs", "1", "--iterations", "4"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("== recommend for one test learner"), r.stdout)
        let csv = try String(contentsOfFile: dir + "/learner.csv", encoding: .utf8)
        let rows = csv.split(separator: "\n")
        XCTAssertGreaterThan(rows.count, 1, "the learner's events")
        XCTAssertEqual(Set(rows.dropFirst().map { $0.split(separator: ",")[0] }).count, 1, "one learner")
        let table = r.stdout.components(separatedBy: "== recommend for one test learner").last ?? ""
        XCTAssertTrue(table.contains("rank  course"), table)
        XCTAssertEqual(
            table.split(separator: "\n").filter { $0.hasPrefix("   ") && $0.contains("course-v1:") }.count, 5, table)
        XCTAssertTrue(table.contains("the course they actually took next: course-v1:"), table)
    }

    /// The command line: the same scores through `recommend --json`, a learner picked from a log
    /// of many, seen courses left out, unknown ids counted, and the two fallbacks said so.
    func testRecommendCommand() throws {
        let m = try DemoModel.get()
        let (dataset, users) = try DemoModel.eventsBeforeFirstQuery(m)
        let header = String(try String(contentsOfFile: m.events, encoding: .utf8).prefix { $0 != "\n" })
        let ck = try CheckpointFile.read(m.meta)
        let policy = try FewShotPolicy(for: ck, path: m.meta, config: .defaults())
        let evaluator = Evaluator(dataset: dataset, split: .test)
        // Three learners in one log, with an unknown course id among them.
        let picked = Array(users.prefix(3))
        var rows = picked.flatMap(\.rows)
        let first = picked[0].rows[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let cols = header.split(separator: ",").map(String.init)
        var unknown = first
        unknown[cols.firstIndex(of: "course_id")!] = "no-such-course"
        rows.append(unknown.joined(separator: ","))
        let log = m.dir + "/log.csv"
        try (header + "\n" + rows.joined(separator: "\n") + "\n").write(toFile: log, atomically: true, encoding: .utf8)

        var r = try metatrain(["recommend", "--checkpoint", m.meta, "--events", log])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("holds 3 learners") && r.stderr.contains("--user"), r.stderr)
        r = try metatrain(["recommend", "--checkpoint", m.meta, "--events", log, "--user", "nobody"])
        XCTAssertTrue(r.stderr.contains("no learner 'nobody'"), r.stderr)

        for (i, u) in picked.enumerated() {
            r = try metatrain([
                "recommend", "--checkpoint", m.meta, "--events", log, "--user", u.user, "--json", "--include-seen",
                "--top", "\(dataset.nItems - 1)"
            ])
            XCTAssertEqual(r.status, 0, r.stderr)
            let answer = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            XCTAssertEqual(answer["adapted"] as? Bool, true)
            XCTAssertEqual(answer["support_pairs"] as? Int, dataset.kSupport)
            XCTAssertEqual(answer["unknown_items"] as? Int, i == 0 ? 1 : 0, "the unknown id is counted, not an error")
            let expected = evaluator.fewShotScores(ck.params, dims: ck.dims, policy: policy, episode: u.episode)[0]
            let items = try XCTUnwrap(answer["items"] as? [[String: Any]])
            XCTAssertEqual(items.count, dataset.nItems - 1)
            let index = Dictionary(uniqueKeysWithValues: dataset.itemIds.enumerated().map { ($1, $0) })
            for it in items {
                let id = try XCTUnwrap(it["item"] as? String), score = try XCTUnwrap(it["score"] as? Double)
                XCTAssertEqual(Float(score).bitPattern, expected[index[id]!].bitPattern, "\(u.user) \(id)")
            }
            // Without --include-seen the learner's own courses are left out.
            r = try metatrain([
                "recommend", "--checkpoint", m.meta, "--events", log, "--user", u.user, "--top", "5"
            ])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(r.stdout.contains("adapted on the learner's \(dataset.kSupport) most recent pairs"), r.stdout)
            let seen = Set(
                u.rows.map {
                    $0.split(separator: ",", omittingEmptySubsequences: false)[cols.firstIndex(of: "course_id")!]
                })
            let listed = r.stdout.split(separator: "\n").dropFirst(3).map { $0.split(separator: " ")[1] }
            XCTAssertEqual(listed.count, 5, r.stdout)
            XCTAssertTrue(listed.allSatisfy { !seen.contains($0) }, "seen courses are left out:\n\(r.stdout)")
        }

        // One known course: no pair, the model unadapted. Only unknown courses: popularity.
        let one = m.dir + "/one.csv"
        try (header + "\n" + picked[1].rows[0] + "\n").write(toFile: one, atomically: true, encoding: .utf8)
        r = try metatrain(["recommend", "--checkpoint", m.meta, "--events", one, "--json"])
        var answer = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        XCTAssertEqual(answer["basis"] as? String, "unadapted", r.stdout)
        XCTAssertEqual(answer["adapted"] as? Bool, false)
        let none = m.dir + "/none.csv"
        try (header + "\n" + unknown.joined(separator: ",") + "\n").write(
            toFile: none, atomically: true, encoding: .utf8)
        r = try metatrain(["recommend", "--checkpoint", m.meta, "--events", none])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("popularity"), r.stdout)
        answer = try XCTUnwrap(
            JSONSerialization.jsonObject(
                with: Data(try metatrain(["recommend", "--checkpoint", m.meta, "--events", none, "--json"]).stdout.utf8)
            )
                as? [String: Any])
        let top = try XCTUnwrap((answer["items"] as? [[String: Any]])?.first?["item"] as? String)
        XCTAssertEqual(top, dataset.itemIds[1], "popularity ranks the most frequent course first")

        // --steps 0: the model as trained.
        r = try metatrain([
            "recommend", "--checkpoint", m.meta, "--events", log, "--user", picked[0].user, "--steps", "0"
        ])
        XCTAssertTrue(r.stdout.contains("not adapted (0 steps)"), r.stdout)
    }

    /// Item 5: export's safetensors load with the safetensors package (numpy), and a numpy
    /// forward pass of PyTorch's GRU equations gives recommend's unadapted scores within 1e-5.
    func testExportLoadsAsPyTorchWouldAndGivesTheSameLogits() throws {
        guard (try? python(["-c", "import safetensors.numpy, numpy"]))?.0 == 0 else {
            throw XCTSkip("python3 with safetensors and numpy not available (tools/install-deps.sh --tests)")
        }
        let m = try DemoModel.get()
        let (dataset, users) = try DemoModel.eventsBeforeFirstQuery(m)
        let header = String(try String(contentsOfFile: m.events, encoding: .utf8).prefix { $0 != "\n" })
        let out = m.dir + "/export/model.safetensors"
        var r = try metatrain(["export", "--checkpoint", m.meta, "--out", out])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: m.dir + "/export/model.vocab.json"))
        let csv = m.dir + "/export/learner.csv"
        try (header + "\n" + users[0].rows.joined(separator: "\n") + "\n").write(
            toFile: csv, atomically: true, encoding: .utf8)
        r = try metatrain([
            "recommend", "--checkpoint", m.meta, "--events", csv, "--steps", "0", "--include-seen", "--json", "--top",
            "\(dataset.nItems - 1)"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        try r.stdout.write(toFile: m.dir + "/export/answer.json", atomically: true, encoding: .utf8)
        let path = peersDirectory.appendingPathComponent("export_check.py").path
        let (status, text) = try python([
            path, out, m.dir + "/export/model.vocab.json", csv, m.dir + "/export/answer.json"
        ])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.contains("max |difference|"), text)
    }
}

import Core
import Evaluation
import Foundation
import XCTest

@testable import Studies

final class PairedStatisticsTests: XCTestCase {
    func testStandardDeviationIsTheSampleOne() {
        XCTAssertEqual(PairedStatistics.standardDeviation([1, 2, 3, 4]), (5.0 / 3).squareRoot(), accuracy: 1e-15)
        XCTAssertEqual(PairedStatistics.standardDeviation([7]), 0)
    }

    struct Fixture: Decodable {
        struct Case: Decodable { var d: [Double], mean: Double, p: Double }
        struct BH: Decodable { var p: [Double], adjusted: [Double] }
        var sign_flip: [Case]
        var bh: BH
    }

    func fixture() throws -> Fixture {
        let url = try XCTUnwrap(
            Bundle.module.url(forResource: "paired_stats", withExtension: "json", subdirectory: "Fixtures"))
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }

    /// The exact sign-flip p-values equal scipy.stats.permutation_test's on the
    /// committed inputs (tools/make_stats_fixture.py), ties included.
    func testSignFlipPValuesMatchScipy() throws {
        let f = try fixture()
        XCTAssertEqual(f.sign_flip.count, 6)
        for c in f.sign_flip {
            XCTAssertEqual(PairedStatistics.mean(c.d), c.mean, accuracy: 1e-12)
            let p = PairedStatistics.signFlipPValue(c.d, resamples: 1 << 16, key: [0])
            XCTAssertEqual(p, c.p, accuracy: 1e-12, "d = \(c.d)")
        }
    }

    /// Benjamini–Hochberg against scipy.stats.false_discovery_control, and a
    /// worked example: p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005, 0.01,
    /// 0.03, 0.04 → ×4/1, ×4/2, ×4/3, ×4/4 = 0.02, 0.02, 0.04, 0.04, already monotone.
    func testBenjaminiHochbergMatchesScipyAndAWorkedExample() throws {
        let f = try fixture()
        let got = PairedStatistics.benjaminiHochberg(f.bh.p)
        for (a, b) in zip(got, f.bh.adjusted) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        let worked = PairedStatistics.benjaminiHochberg([0.01, 0.04, 0.03, 0.005])
        for (a, b) in zip(worked, [0.02, 0.04, 0.04, 0.02]) { XCTAssertEqual(a, b, accuracy: 1e-12) }
        // Monotonicity from the top: (0.04, 0.045) → 0.045·2/2 = 0.045 caps 0.04·2/1 = 0.08.
        let mono = PairedStatistics.benjaminiHochberg([0.04, 0.045])
        XCTAssertEqual(mono[0], 0.045, accuracy: 1e-12); XCTAssertEqual(mono[1], 0.045, accuracy: 1e-12)
        XCTAssertEqual(PairedStatistics.benjaminiHochberg([0.9, 0.8]), [0.9, 0.9])
    }

    /// Monte Carlo p-values (too many users to enumerate) agree with the exact
    /// ones where both can run, are seeded, and never reach 0.
    func testMonteCarloSignFlipIsSeededAndClose() throws {
        let f = try fixture()
        for c in f.sign_flip {
            let a = PairedStatistics.signFlipPValue(c.d, resamples: 20000, key: [0, 9, 1])
            let b = PairedStatistics.signFlipPValue(c.d, resamples: 20000, key: [0, 9, 1])
            XCTAssertEqual(a, b)
            XCTAssertGreaterThan(a, 0)
        }
        var g = SeededGenerator(seed: 3)
        let big = (0..<200).map { _ in Double(g.below(1000)) / 1000 + 0.2 } // a clear positive shift
        XCTAssertLessThan(PairedStatistics.signFlipPValue(big, resamples: 5000, key: [1]), 0.001)
        XCTAssertEqual(PairedStatistics.signFlipPValue(big, resamples: 5000, key: [1]), 2.0 / 5001, accuracy: 1e-15)
        let null = big.enumerated().map { $0.offset % 2 == 0 ? $0.element : -$0.element }
        XCTAssertGreaterThan(PairedStatistics.signFlipPValue(null, resamples: 5000, key: [1]), 0.05)
    }

    /// The bootstrap interval brackets the mean, collapses for constant
    /// differences, and is the same for the same key.
    func testBootstrapIntervalProperties() {
        let d = (0..<50).map { Double($0 % 7) / 7 - 0.2 }
        let (lo, hi) = PairedStatistics.bootstrapInterval(d, samples: 2000, key: [0, 6, 1])
        XCTAssertLessThan(lo, PairedStatistics.mean(d)); XCTAssertGreaterThan(hi, PairedStatistics.mean(d))
        XCTAssertTrue(PairedStatistics.bootstrapInterval(d, samples: 2000, key: [0, 6, 1]) == (lo, hi))
        let c = PairedStatistics.bootstrapInterval([0.25, 0.25, 0.25], samples: 100, key: [2])
        XCTAssertEqual(c.0, 0.25, accuracy: 1e-15); XCTAssertEqual(c.1, 0.25, accuracy: 1e-15)
    }
}

final class StudyPlanTests: XCTestCase {
    let plan = """
        seeds: 3
        baseline: b
        set: [model.hidden_dim=8]
        pretrain: {config: cfg/pre.yaml}
        methods:
          z_last:
            pretrained: true
          b:
            config: /abs/b.yaml
            set: [maml.iterations=2]
          a_warm:
            config: w.yaml
            warm_start: true
          pop:
            popularity: true
          noise:
            config: /abs/b.yaml
            seed_offset: 100
        """

    /// Methods keep the file's order, paths resolve against the plan's
    /// directory, and the tasks put each seed's pretraining before its users.
    func testPlanParsesAndListsTasks() throws {
        let p = try StudyPlan.parse(plan, origin: "p.yaml", baseDirectory: "/plans")
        XCTAssertEqual(p.methods.map(\.name), ["z_last", "b", "a_warm", "pop", "noise"])
        XCTAssertEqual(p.seeds, [1, 2, 3])
        XCTAssertEqual(p.pretrainConfig, "/plans/cfg/pre.yaml")
        XCTAssertEqual(p.method("a_warm")?.config, "/plans/w.yaml")
        XCTAssertEqual(p.method("a_warm")?.kind, .meta(warmStart: true))
        XCTAssertEqual(p.method("pop")?.kind, .popularity)
        XCTAssertEqual(p.method("noise")?.seedOffset, 100)
        let tasks = p.tasks()
        XCTAssertEqual(tasks.count, 3 + 5 * 3)
        XCTAssertEqual(tasks[0].name, "pretrain/seed-1")
        XCTAssertEqual(tasks[3].name, "z_last/seed-1"); XCTAssertEqual(tasks[3].dependsOn, 0)
        XCTAssertEqual(tasks[6].name, "b/seed-1"); XCTAssertNil(tasks[6].dependsOn)
        XCTAssertEqual(tasks[10].name, "a_warm/seed-2"); XCTAssertEqual(tasks[10].dependsOn, 1)
        XCTAssertEqual(tasks.map(\.index), Array(0..<18))
    }

    func testPlanErrorsNameTheKey() {
        func error(_ text: String) -> String {
            do { _ = try StudyPlan.parse(text, origin: "p.yaml", baseDirectory: "/"); return "no error" } catch {
                return "\(error)"
            }
        }
        XCTAssertTrue(
            error("baseline: x\nmethods: {a: {config: a.yaml}}").contains(
                "'baseline' names 'x', which is not among the methods (a)"))
        XCTAssertTrue(
            error("baseline: a\nmethods: {a: {confg: a.yaml}}").contains("'methods.a.confg' is not a method key"))
        XCTAssertTrue(error("baseline: a\nseeds: 0\nmethods: {a: {}}").contains("'seeds' must be ≥ 1"))
        XCTAssertTrue(
            error("baseline: a\nmethods: {a: {set: [nonsense]}}").contains(
                "'methods.a.set' must be a list of key=value strings"))
        XCTAssertTrue(error("baseline: a\nmetods: {}").contains("'metods' is not a plan key"))
        XCTAssertTrue(error("baseline: a\nmethods: {a: {pretrained: true, popularity: true}}").contains("only one of"))
    }

    /// Aggregation: per-seed means over queries, per-user values averaged over
    /// seeds, and a planted difference that shows in the comparison.
    func testResultsFromRanks() throws {
        let p = try StudyPlan.parse(
            "seeds: 2\nbaseline: base\nevaluation: {bootstrap_samples: 500, permutations: 4096}\nmethods: {base: {config: /x.yaml}, better: {config: /x.yaml}}",
            origin: "p", baseDirectory: "/")
        func ranks(_ rank: (Int, Int) -> Int) -> RunRanks {
            var rows: [RunRanks.Row] = []
            for u in 0..<10 {
                for q in 0..<2 {
                    for s in RunRanks.settings {
                        rows.append(
                            .init(setting: s, user: "u\(u)", episode: u, query: q, label: "c", rank: rank(u, q)))
                    }
                }
            }
            return RunRanks(rows: rows, sampledNegatives: 0)
        }
        let base = ranks { u, q in 2 + (u + q) % 3 } // never first
        let better = ranks { u, q in 1 } // always first
        let r = try StudyResults(plan: p, ranks: ["base": [1: base, 2: base], "better": [1: better, 2: better]])
        let acc = r.keys.firstIndex(of: "acc@1")!, hr1 = r.keys.firstIndex(of: "hr@1")!
        XCTAssertEqual(r.mean("better", "few_shot")![acc], 1); XCTAssertEqual(r.mean("base", "few_shot")![hr1], 0)
        let c = try XCTUnwrap(r.comparisons.first { $0.metric == "acc@1" && $0.setting == "few_shot" })
        XCTAssertEqual(c.diff, 1); XCTAssertEqual(c.users, 10)
        XCTAssertEqual(c.p, 2.0 / 1024, accuracy: 1e-15) // exact: only the all-positive pattern is as large
        XCTAssertEqual(r.comparisons.count, 2 * r.keys.count)
        // Per seed: each seed's difference of the means over queries, their spread, and an exact
        // sign-flip p over the seeds (two seeds: the all-positive pattern is one of four, p = 2/4).
        XCTAssertEqual(c.seedDiffs, [1, 1]); XCTAssertEqual(c.seedSD, 0); XCTAssertEqual(c.seedP, 0.5)
        let mrr = r.keys.firstIndex(of: "mrr")!
        let m = try XCTUnwrap(r.comparisons.first { $0.metric == "mrr" && $0.setting == "zero_shot" })
        XCTAssertEqual(
            m.seedDiffs,
            [1, 2].map { s in r.perSeed["better"]![s]!["zero_shot"]![mrr] - r.perSeed["base"]![s]!["zero_shot"]![mrr] })
        let json = r.json.compact
        XCTAssertTrue(json.contains("\"per_seed\":{\"diffs\":[1.0,1.0],\"mean\":1.0,\"sd\":0.0,\"p\":0.5,"), json)
        XCTAssertTrue(r.markdown(title: "t", notes: []).contains("| better | few-shot | acc@1 | +100.00 |"))
        XCTAssertTrue(r.markdown(title: "t", notes: []).contains("+100.00, +100.00 (0.00) | "))
        // ranks.csv round trip, with a user id that needs quoting.
        var rows = base.rows
        rows[0].user = "a, \"b\""
        let text = RunRanks(rows: rows, sampledNegatives: 0).csv
        let path = NSTemporaryDirectory() + "ranks-\(getpid()).csv"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertEqual(try RunRanks.read(path).rows, rows)
    }
}

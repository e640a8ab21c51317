import Foundation
import XCTest

/// Real multi-process runs on synthetic data with planted structure: learners
/// follow one of several course orders over small course pools and the model
/// sees only the last course (data.max_seq_len = 1), so only the support set
/// tells a new learner's order and meta-learned adaptation must help. Runs are
/// bit-deterministic, so the margins below are checked against fixed numbers,
/// not luck.
final class PlantedEffectsTests: XCTestCase {
    /// Synthesises and prepares a log, meta-trains FOMAML with uniform weights and
    /// with `variant` settings (2 workers each), and evaluates both on test users.
    /// Returns report.json's methods (named by their run directories, "uniform" and "variant").
    func uniformVersus(_ variant: [String], synth: [String], name: String) throws -> [String: Any] {
        let dir = freshDir(name)
        var r = try metatrain(["synth", "--out", dir + "/e.csv", "--users", "1000", "--courses", "40"] + synth)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(["prepare", "--events", dir + "/e.csv", "--out", dir + "/d.h5", "--set", "data.max_seq_len=1"]
        )
        XCTAssertEqual(r.status, 0, r.stderr)
        let common = [
            "--data", dir + "/d.h5", "--workers", "2", "--set", "model.embedding_dim=16", "--set",
            "model.hidden_dim=32",
            "--set", "maml.meta_batch_size=16", "--set", "maml.inner_steps=5", "--set", "maml.inner_lr=0.5",
            "--set", "maml.outer_lr=0.01", "--set", "maml.iterations=800", "--set", "eval.every=100",
            "--set", "eval.patience=100", "--set", "checkpoint.every=400"
        ]
        r = try metatrain(["train", "--run-dir", dir + "/uniform"] + common)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain(["train", "--run-dir", dir + "/variant"] + variant + common)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try metatrain([
            "evaluate", "--data", dir + "/d.h5", "--checkpoint", dir + "/uniform/final.h5",
            "--checkpoint", dir + "/variant/final.h5", "--split", "test", "--out", dir + "/report.json"
        ])
        XCTAssertEqual(r.status, 0, r.stderr)
        let report =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/report.json")))
            as! [String: Any]
        return report["methods"] as! [String: Any]
    }

    /// The variant beats uniform few-shot on MRR and NDCG@10 by more than 0.01,
    /// with paired (user-level bootstrap) 95% intervals that exclude zero.
    func assertVariantBeatsUniform(_ methods: [String: Any], _ what: String) {
        let paired =
            ((methods["variant"] as! [String: Any])["paired_vs_first"] as! [String: Any])["few_shot"] as! [String: Any]
        for key in ["mrr", "ndcg@10"] {
            let d = paired[key] as! [String: Any]
            let diff = d["diff"] as! Double, ci = d["ci95"] as! [Double]
            XCTAssertGreaterThan(diff, 0.01, "\(key): \(what) − uniform = \(diff)")
            XCTAssertGreaterThan(ci[0], 0, "\(key): paired 95% interval \(ci) includes 0")
        }
    }

    /// 12 groups over pools of 5 courses; 40% of visits are short noisy sessions
    /// on random courses. Adaptation must help, and down-weighting unreliable
    /// support pairs must help more.
    func testFewShotBeatsZeroShotAndReliabilityWeightingBeatsUniform() throws {
        let methods = try uniformVersus(
            ["--set", "weighting.scheme=reliability"],
            synth: ["--groups", "12", "--pool", "0.125", "--drift", "0", "--noise", "0.4", "--seed", "11"],
            name: "planted")
        func metric(_ method: String, _ setting: String, _ key: String) -> Double {
            ((methods[method] as! [String: Any])[setting] as! [String: Any])[key] as! Double
        }
        // Meta-learning helps cold-start learners: adaptation on 5 support pairs.
        let zero = metric("uniform", "zero_shot", "mrr"), few = metric("uniform", "few_shot", "mrr")
        XCTAssertGreaterThan(few, zero + 0.04, "few-shot MRR \(few) vs zero-shot \(zero)")
        XCTAssertGreaterThan(metric("uniform", "few_shot", "hr@5"), metric("uniform", "zero_shot", "hr@5") + 0.05)
        XCTAssertGreaterThan(zero, metric("popularity", "zero_shot", "mrr") + 0.03)
        // Reliability weighting beats uniform where noisy sessions are planted.
        assertVariantBeatsUniform(methods, "reliability")
    }

    /// Drift: every learner switches to its partner group's order (same courses,
    /// other order) after 3–4 visits, so a support set mixes both orders and only
    /// the newest pairs predict the queries. Recency weighting (exponential,
    /// λ = 1) must beat uniform.
    func testRecencyWeightingBeatsUniformWhereDriftIsPlanted() throws {
        let methods = try uniformVersus(
            ["--set", "weighting.scheme=recency", "--set", "weighting.recency.lambda=1.0"],
            synth: [
                "--groups", "8", "--pool", "0.25", "--drift", "1", "--drift-from", "3",
                "--drift-to", "4", "--noise", "0", "--seed", "12"
            ],
            name: "drift")
        assertVariantBeatsUniform(methods, "recency")
    }
}

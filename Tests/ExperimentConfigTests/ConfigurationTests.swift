import XCTest

@testable import ExperimentConfig

final class ConfigurationTests: XCTestCase {
    func tmp(_ text: String) -> String {
        let p = NSTemporaryDirectory() + "mt-config-\(UUID().uuidString).yaml"
        try! text.write(toFile: p, atomically: true, encoding: .utf8)
        return p
    }

    func testDefaultsMatchContract() {
        let c = Config.defaults()
        XCTAssertEqual(c.seed, 20_260_107)
        XCTAssertEqual(c.data.maxSeqLen, 50); XCTAssertEqual(c.data.kSupport, 5); XCTAssertEqual(c.data.qQuery, 10)
        XCTAssertEqual(c.data.split, .byFirstActivity)
        XCTAssertEqual(c.model.hiddenDim, 128)
        XCTAssertEqual(c.maml.algorithm, .fomaml)
        XCTAssertEqual(c.maml.innerLRBounds.0, 0.0001); XCTAssertEqual(c.maml.innerLRBounds.1, 0.1)
        XCTAssertNil(c.warmStart.checkpoint)
        XCTAssertEqual(c.checkpoint.keep, 3)
    }

    func testFileThenOverrides() throws {
        let p = tmp("maml:\n  inner_lr: 0.05\n  algorithm: maml\nmodel: {hidden_dim: 64}\n")
        let c = try Config.load(
            path: p, overrides: ["maml.inner_lr=0.2", "warm_start.checkpoint=runs/x/best.h5", "maml.outer_lr=1"])
        XCTAssertEqual(c.maml.innerLR, 0.2)
        XCTAssertEqual(c.maml.algorithm, .maml)
        XCTAssertEqual(c.model.hiddenDim, 64)
        XCTAssertEqual(c.maml.outerLR, 1.0)
        XCTAssertEqual(c.warmStart.checkpoint, "runs/x/best.h5")
    }

    func testUnknownKeyNamesItsPath() {
        let p = tmp("maml:\n  inner_lrr: 0.05\n")
        XCTAssertThrowsError(try Config.load(path: p, overrides: [])) { e in
            XCTAssertTrue("\(e)".contains("unknown key 'maml.inner_lrr'"), "\(e)")
            XCTAssertTrue("\(e)".contains(p))
        }
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["data.nope=1"])) { e in
            XCTAssertEqual("\(e)", "--set: unknown key 'data.nope'", "nothing near enough to suggest")
        }
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["every=1"])) { e in
            XCTAssertEqual("\(e)", "--set: unknown key 'every'; did you mean one of 'eval.every', 'checkpoint.every'?")
        }
        // The nearest key is suggested: a typo, a missing underscore, another case.
        for (typo, meant) in [
            ("maml.innerlr", "maml.inner_lr"), ("maml.inner_lrr", "maml.inner_lr"),
            ("model.hiddendim", "model.hidden_dim"),
            ("Seed", "seed"), ("eval.patiense", "eval.patience"),
            // A key without its section finds it in the section that has it.
            ("iterations", "maml.iterations"), ("inner_steps", "maml.inner_steps"), ("iteratons", "maml.iterations")
        ] {
            XCTAssertThrowsError(try Config.load(path: nil, overrides: ["\(typo)=1"])) { e in
                XCTAssertEqual("\(e)", "--set: unknown key '\(typo)'; did you mean '\(meant)'?")
            }
        }
    }

    func testWrongTypeAndBadValues() {
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["model.hidden_dim=big"])) { e in
            XCTAssertTrue("\(e)".contains("'model.hidden_dim' must be an integer"), "\(e)")
        }
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["maml.algorithm=reptile"])) { e in
            XCTAssertEqual(
                "\(e)", "config: 'maml.algorithm' has unknown value 'reptile'; allowed: 'fomaml', 'maml', 'metasgd'")
        }
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["data.k_support=0"]))
        XCTAssertThrowsError(try Config.load(path: nil, overrides: ["novalue"]))
    }

    /// Every number is finite and every value bounded above, so that no
    /// configuration (a coordinator's included) can overflow a worker.
    func testNumbersAreFiniteAndBounded() throws {
        for (key, value, says) in [
            ("maml.outer_lr", ".inf", "'maml.outer_lr' must be a finite number"),
            ("maml.clip_norm", ".inf", "'maml.clip_norm' must be a finite number"),
            ("maml.inner_lr", ".nan", "'maml.inner_lr' must be a finite number"),
            ("maml.inner_lr_bounds", "[0.0001, .inf]", "'maml.inner_lr_bounds' must hold finite numbers"),
            ("model.embedding_dim", "1000000", "'model.embedding_dim' must be ≤ 8192, got 1000000"),
            ("maml.meta_batch_size", "4611686018427387904", "'maml.meta_batch_size' must be ≤")
        ] {
            XCTAssertThrowsError(try Config.load(path: nil, overrides: ["\(key)=\(value)"]), key) { e in
                XCTAssertTrue("\(e)".contains(says), "\(e)")
            }
        }
        XCTAssertNoThrow(try Config.load(path: nil, overrides: ["maml.outer_lr=100", "model.embedding_dim=8192"]))
    }

    func testYAMLAndJSONRoundTrip() throws {
        let c = try Config.load(path: nil, overrides: ["maml.inner_lr=0.05", "weighting.scheme=recency"])
        let fromYAML = try Config.load(path: tmp(c.yaml), overrides: [])
        XCTAssertEqual(fromYAML, c)
        let fromJSON = try Config.parse(c.json, origin: "json")
        XCTAssertEqual(fromJSON, c)
        XCTAssertTrue(c.json.hasPrefix("{\"seed\":20260107,\"data\":{"))
    }

    func testShippedConfigsLoad() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("configs")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".yaml") }
        XCTAssertFalse(files.isEmpty)
        for f in files { XCTAssertNoThrow(try Config.load(path: dir.appendingPathComponent(f).path, overrides: []), f) }
    }

    /// Every key has its meaning and allowed values, in the defaults' order, and
    /// nothing is documented that is not a key; the commented YAML that
    /// `metatrain config` prints reads back as the same configuration.
    func testEveryKeyIsDocumentedAndTheCommentedYAMLReadsBack() throws {
        let c = try Config.load(
            path: nil,
            overrides: ["maml.inner_lr=0.05", "weighting.scheme=recency", "warm_start.checkpoint=runs/x/best.h5"])
        XCTAssertEqual(configKeyDocs.map(\.key), c.leaves.map(\.key))
        XCTAssertTrue(configKeyDocs.allSatisfy { $0.doc.count > 20 })
        let yaml = c.commentedYAML
        for (key, _) in c.leaves {
            let leaf = String(key.split(separator: ".").last!)
            XCTAssertTrue(yaml.contains("# \(configKeyDocs.first { $0.key == key }!.doc)\n"), key)
            XCTAssertTrue(yaml.contains("\(leaf): "), key)
        }
        XCTAssertEqual(try Config.load(path: tmp(yaml), overrides: []), c)
    }
}

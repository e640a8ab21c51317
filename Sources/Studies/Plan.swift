import Core
import Foundation
import Yams

/// A study plan (docs/FORMATS.md, "Studies"): methods, each a config file plus
/// `--set`-style overrides, a baseline, the seeds and the evaluation settings.
public struct StudyPlan: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Meta-trained with `metatrain train` (warm-started from the seed's pretraining when `warmStart`).
        case meta(warmStart: Bool)
        /// The seed's shared pretraining itself (its best.h5), adapted with plain steps.
        case pretrained
        /// Items ranked by popularity among train users (no training; zero-shot only).
        case popularity
    }

    public struct Method: Sendable, Equatable {
        public var name: String
        public var kind: Kind
        /// Config file (absolute, or resolved against the plan's directory), if any.
        public var config: String?
        public var overrides: [String]
        /// Added to every seed of this method: a method that differs from another only by its seeds.
        public var seedOffset: UInt64
        public var comment: String
    }

    public var methods: [Method]
    public var baseline: String
    public var seeds: [UInt64]
    /// Applied to every run, pretraining included, before the method's own overrides.
    public var overrides: [String]
    /// Added to every run with `--quick`.
    public var quick: [String]
    public var pretrainConfig: String?
    public var pretrainOverrides: [String]
    public var split: String
    /// Support pairs few-shot adapts on (0: all K) and inner steps (0: each method's own).
    public var shots: Int, steps: Int
    public var bootstrapSamples: Int, permutations: Int

    /// Whether some method needs the per-seed pretraining.
    public var needsPretraining: Bool {
        methods.contains { $0.kind == .pretrained || $0.kind == .meta(warmStart: true) }
    }

    public static func load(_ path: String) throws -> StudyPlan {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw MetatrainError("\(path): cannot read the plan (\(error.localizedDescription))")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        return try parse(text, origin: path, baseDirectory: base)
    }

    public static func parse(_ text: String, origin: String, baseDirectory: String) throws -> StudyPlan {
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw MetatrainError("\(origin): not YAML (\(error))") }
        guard let top = root as? [String: Any] else { throw MetatrainError("\(origin): the plan must be a mapping") }
        func fail(_ key: String, _ what: String) -> MetatrainError { MetatrainError("\(origin): '\(key)' \(what)") }
        let known: Set<String> = ["methods", "baseline", "seeds", "set", "quick", "pretrain", "evaluation"]
        for k in top.keys where !known.contains(k) {
            throw fail(k, "is not a plan key (allowed: \(known.sorted().joined(separator: ", ")))")
        }
        func strings(_ v: Any?, _ key: String) throws -> [String] {
            guard let v else { return [] }
            guard let a = v as? [Any] else { throw fail(key, "must be a list of key=value strings") }
            return try a.map {
                guard let s = $0 as? String, s.contains("=") else {
                    throw fail(key, "must be a list of key=value strings")
                }
                return s
            }
        }
        func path(_ v: Any?, _ key: String) throws -> String? {
            guard let v else { return nil }
            guard let s = v as? String, !s.isEmpty else { throw fail(key, "must be a file path") }
            return s.hasPrefix("/")
                ? s : URL(fileURLWithPath: baseDirectory).appendingPathComponent(s).standardizedFileURL.path
        }
        func int(_ v: Any?, _ key: String, _ dflt: Int, min lo: Int) throws -> Int {
            guard let v else { return dflt }
            guard let i = v as? Int, i >= lo else { throw fail(key, "must be an integer ≥ \(lo)") }
            return i
        }

        var seeds: [UInt64] = [1, 2, 3, 4, 5]
        if let s = top["seeds"] {
            if let n = s as? Int {
                guard n >= 1 else { throw fail("seeds", "must be ≥ 1") }
                seeds = (1...n).map { UInt64($0) }
            } else if let a = s as? [Int], !a.isEmpty, a.allSatisfy({ $0 >= 0 }), Set(a).count == a.count {
                seeds = a.map { UInt64($0) }
            } else {
                throw fail("seeds", "must be a count or a list of distinct seeds ≥ 0")
            }
        }
        let pre = top["pretrain"] as? [String: Any] ?? [:]
        if top["pretrain"] != nil && top["pretrain"] as? [String: Any] == nil {
            throw fail("pretrain", "must be a mapping")
        }
        let ev = top["evaluation"] as? [String: Any] ?? [:]
        for k in ev.keys where !["split", "shots", "steps", "bootstrap_samples", "permutations"].contains(k) {
            throw fail(
                "evaluation.\(k)",
                "is not an evaluation key (allowed: split, shots, steps, bootstrap_samples, permutations)")
        }
        let split = ev["split"] as? String ?? "test"
        guard split == "test" || split == "val" else { throw fail("evaluation.split", "must be val or test") }

        guard let methodMap = top["methods"] as? [String: Any], !methodMap.isEmpty else {
            throw fail("methods", "must map method names to their settings")
        }
        // Plan order: Yams' mapping loses it, so read the names from the node.
        let order = try methodOrder(text) ?? methodMap.keys.sorted()
        var methods: [Method] = []
        for name in order {
            guard let m = methodMap[name] as? [String: Any] else { throw fail("methods.\(name)", "must be a mapping") }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || "_-.".contains($0) }) else {
                throw fail("methods.\(name)", "is not a usable name (letters, digits, _ - . only)")
            }
            let allowed: Set<String> = [
                "config", "set", "warm_start", "pretrained", "popularity", "seed_offset", "comment"
            ]
            for k in m.keys where !allowed.contains(k) {
                throw fail(
                    "methods.\(name).\(k)", "is not a method key (allowed: \(allowed.sorted().joined(separator: ", ")))"
                )
            }
            let flags = ["warm_start", "pretrained", "popularity"].filter { m[$0] as? Bool == true }
            guard flags.count <= 1 else {
                throw fail("methods.\(name)", "can be only one of warm_start, pretrained, popularity")
            }
            let kind: Kind =
                flags == ["pretrained"]
                ? .pretrained
                : flags == ["popularity"]
                    ? .popularity
                    : .meta(warmStart: flags == ["warm_start"])
            methods.append(
                Method(
                    name: name, kind: kind, config: try path(m["config"], "methods.\(name).config"),
                    overrides: try strings(m["set"], "methods.\(name).set"),
                    seedOffset: UInt64(try int(m["seed_offset"], "methods.\(name).seed_offset", 0, min: 0)),
                    comment: m["comment"] as? String ?? ""))
        }
        guard let baseline = top["baseline"] as? String else { throw fail("baseline", "must name one of the methods") }
        guard methods.contains(where: { $0.name == baseline }) else {
            throw fail(
                "baseline", "names '\(baseline)', which is not among the methods (\(order.joined(separator: ", ")))")
        }
        return StudyPlan(
            methods: methods, baseline: baseline, seeds: seeds, overrides: try strings(top["set"], "set"),
            quick: try strings(top["quick"], "quick"), pretrainConfig: try path(pre["config"], "pretrain.config"),
            pretrainOverrides: try strings(pre["set"], "pretrain.set"), split: split,
            shots: try int(ev["shots"], "evaluation.shots", 0, min: 0),
            steps: try int(ev["steps"], "evaluation.steps", 0, min: 0),
            bootstrapSamples: try int(ev["bootstrap_samples"], "evaluation.bootstrap_samples", 2000, min: 1),
            permutations: try int(ev["permutations"], "evaluation.permutations", 10000, min: 1))
    }

    /// The method names in the order the file gives them.
    static func methodOrder(_ text: String) throws -> [String]? {
        guard case .mapping(let top)? = try Yams.compose(yaml: text) else { return nil }
        for (k, v) in top where k.string == "methods" {
            guard case .mapping(let m) = v else { return nil }
            return m.map { $0.key.string ?? "" }
        }
        return nil
    }
}

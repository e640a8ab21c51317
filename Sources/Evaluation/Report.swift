import Core

/// Per-episode results of one method in one setting, summarised with intervals.
public struct MethodResult {
    public var perEpisode: [MetricSums]
    /// The same metrics from ranks among `sampledNegatives` sampled negatives (eval.sampled_negatives), if asked for.
    public var sampled: [MetricSums]?
    public var sampledNegatives = 0
    public init(_ p: [MetricSums]) { perEpisode = p }

    /// From per-query ranks (`Evaluator.queryRanks`): the full-catalogue metrics and,
    /// with `sampledNegatives` > 0, the sampled ones beside them.
    public init(ranks: [[QueryRank]], sampledNegatives: Int) {
        perEpisode = ranks.map { rs in rs.reduce(into: MetricSums()) { $0.add(rank: $1.rank) } }
        if sampledNegatives > 0 {
            self.sampledNegatives = sampledNegatives
            sampled = ranks.map { rs in rs.reduce(into: MetricSums()) { $0.add(rank: $1.sampledRank ?? $1.rank) } }
        }
    }

    public var total: MetricSums { perEpisode.reduce(MetricSums(), +) }

    public func json(_ boot: Bootstrap) -> JSON {
        let t = total
        var kv: [(String, JSON)] = Metric.allCases.map { ($0.key, .number(t.mean($0))) }
        var ci: [(String, JSON)] = Metric.allCases.map { m in
            let (lo, hi) = boot.interval(perEpisode, m)
            return (m.key, .array([.number(lo), .number(hi)]))
        }
        if let sampled {
            let st = sampled.reduce(MetricSums(), +), suffix = "_sampled\(sampledNegatives)"
            kv += Metric.allCases.map { ($0.key + suffix, .number(st.mean($0))) }
            ci += Metric.allCases.map { m in
                let (lo, hi) = boot.interval(sampled, m)
                return (m.key + suffix, .array([.number(lo), .number(hi)]))
            }
        }
        kv.append(("n_queries", .int(t.queries)))
        kv.append(("ci95", .object(ci)))
        return .object(kv)
    }

    public func pairedJSON(against other: MethodResult, _ boot: Bootstrap) -> JSON {
        .object(
            Metric.allCases.map { m in
                let d = total.mean(m) - other.total.mean(m)
                let (lo, hi) = boot.pairedInterval(perEpisode, other.perEpisode, m)
                return (m.key, .object([("diff", .number(d)), ("ci95", .array([.number(lo), .number(hi)]))]))
            })
    }
}

/// One evaluated method: popularity (zero-shot only) or a checkpoint.
public struct MethodReport {
    public var name: String
    public var checkpoint: String?
    public var zeroShot: MethodResult
    public var fewShot: MethodResult?
    public init(name: String, checkpoint: String?, zeroShot: MethodResult, fewShot: MethodResult?) {
        self.name = name; self.checkpoint = checkpoint; self.zeroShot = zeroShot; self.fewShot = fewShot
    }
}

/// Everything `evaluate` writes: report.json (docs/FORMATS.md, "Metrics") and a Markdown table.
public struct EvaluationReport {
    public var split: String
    public var nEpisodes: Int
    public var methods: [MethodReport]
    /// ablations[kind][method][value] (kind = shots | steps)
    public var ablations: [(kind: String, method: String, values: [(String, MethodResult)])] = []
    public var settings: JSON = .object([])
    public let bootstrap: Bootstrap

    public init(split: String, nEpisodes: Int, methods: [MethodReport], bootstrap: Bootstrap) {
        self.split = split; self.nEpisodes = nEpisodes; self.methods = methods; self.bootstrap = bootstrap
    }

    /// The first checkpoint method: paired differences are reported against it.
    var reference: MethodReport? { methods.first { $0.checkpoint != nil } }

    public var json: JSON {
        var ms: [(String, JSON)] = []
        for m in methods {
            var kv: [(String, JSON)] = []
            if let c = m.checkpoint { kv.append(("checkpoint", .string(c))) }
            kv.append(("zero_shot", m.zeroShot.json(bootstrap)))
            if let f = m.fewShot { kv.append(("few_shot", f.json(bootstrap))) }
            if let ref = reference, ref.name != m.name {
                var paired: [(String, JSON)] = [("against", .string(ref.name))]
                paired.append(("zero_shot", m.zeroShot.pairedJSON(against: ref.zeroShot, bootstrap)))
                if let f = m.fewShot, let rf = ref.fewShot {
                    paired.append(("few_shot", f.pairedJSON(against: rf, bootstrap)))
                }
                kv.append(("paired_vs_first", .object(paired)))
            }
            ms.append((m.name, .object(kv)))
        }
        var root: [(String, JSON)] = [
            ("split", .string(split)), ("n_episodes", .int(nEpisodes)), ("methods", .object(ms))
        ]
        if !ablations.isEmpty {
            var kinds: [(String, JSON)] = []
            for kind in ["shots", "steps"] {
                let rows = ablations.filter { $0.kind == kind }
                if rows.isEmpty { continue }
                kinds.append(
                    (
                        kind,
                        .object(rows.map { r in (r.method, .object(r.values.map { ($0.0, $0.1.json(bootstrap)) })) })
                    ))
            }
            root.append(("ablations", .object(kinds)))
        }
        root.append(("settings", settings))
        return .object(root)
    }

    public var markdown: String {
        func cell(_ r: MethodResult, _ m: Metric) -> String {
            let (lo, hi) = bootstrap.interval(r.perEpisode, m)
            return String(format: "%.4f [%.4f, %.4f]", r.total.mean(m), lo, hi)
        }
        let head = "| method | setting | " + Metric.allCases.map(\.key).joined(separator: " | ") + " |"
        var lines = [
            "\(split) split, \(nEpisodes) episodes, 95% user-bootstrap intervals", "", head,
            "|" + String(repeating: " --- |", count: Metric.allCases.count + 2)
        ]
        for m in methods {
            lines.append(
                "| \(m.name) | zero-shot | " + Metric.allCases.map { cell(m.zeroShot, $0) }.joined(separator: " | ")
                    + " |")
            if let f = m.fewShot {
                lines.append(
                    "| \(m.name) | few-shot | " + Metric.allCases.map { cell(f, $0) }.joined(separator: " | ") + " |")
            }
        }
        if let ref = reference, methods.contains(where: { $0.checkpoint != nil && $0.name != ref.name }) {
            lines += ["", "Paired differences against \(ref.name) (HR@10, NDCG@10, MRR):", ""]
            for m in methods where m.checkpoint != nil && m.name != ref.name {
                for (label, a, b) in [("zero-shot", m.zeroShot, ref.zeroShot)]
                    + ((m.fewShot != nil && ref.fewShot != nil) ? [("few-shot", m.fewShot!, ref.fewShot!)] : [])
                {
                    let parts = [Metric.hr10, .ndcg10, .mrr].map { metric -> String in
                        let (lo, hi) = bootstrap.pairedInterval(a.perEpisode, b.perEpisode, metric)
                        return String(
                            format: "%@ %+.4f [%+.4f, %+.4f]", metric.key, a.total.mean(metric) - b.total.mean(metric),
                            lo, hi)
                    }
                    lines.append("- \(m.name) \(label): " + parts.joined(separator: "; "))
                }
            }
        }
        for kind in ["shots", "steps"] {
            let rows = ablations.filter { $0.kind == kind }
            if rows.isEmpty { continue }
            lines += [
                "", "Ablation over \(kind) (few-shot):", "", "| method | \(kind) | hr@10 | ndcg@10 | mrr |",
                "| --- | --- | --- | --- | --- |"
            ]
            for r in rows {
                for (v, res) in r.values {
                    lines.append(
                        String(
                            format: "| %@ | %@ | %.4f | %.4f | %.4f |", r.method, v, res.total.mean(.hr10),
                            res.total.mean(.ndcg10), res.total.mean(.mrr)))
                }
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

import Core
import Datasets
import Evaluation
import Foundation

/// The per-query ranks of one run (its ranks.csv): what every study number is computed from.
public struct RunRanks: Sendable {
    public struct Row: Sendable, Equatable {
        public var setting: String, user: String, episode: Int, query: Int, label: String, rank: Int
        public var sampledRank: Int?
        public init(
            setting: String, user: String, episode: Int, query: Int, label: String, rank: Int, sampledRank: Int? = nil
        ) {
            self.setting = setting; self.user = user; self.episode = episode; self.query = query; self.label = label
            self.rank = rank; self.sampledRank = sampledRank
        }
    }

    public var rows: [Row]
    /// Negatives of the sampled ranks (0: none).
    public var sampledNegatives: Int

    public init(rows: [Row], sampledNegatives: Int) { self.rows = rows; self.sampledNegatives = sampledNegatives }

    public static let settings = ["zero_shot", "few_shot"]

    /// The header line (without newline).
    public var header: String {
        "setting,user,episode,query,label,rank" + (sampledNegatives > 0 ? ",rank_sampled\(sampledNegatives)" : "")
    }

    /// One line per row, each ending in a newline (per_query.csv puts the method and seed in front).
    public var rowLines: [String] {
        rows.map { r in
            "\(r.setting),\(csvField(r.user)),\(r.episode),\(r.query),\(csvField(r.label)),\(r.rank)"
                + (sampledNegatives > 0 ? ",\(r.sampledRank ?? 0)" : "") + "\n"
        }
    }

    public var csv: String { header + "\n" + rowLines.joined() }

    /// Reads a ranks.csv written by `csv`.
    public static func read(_ path: String) throws -> RunRanks {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MetatrainError("\(path): cannot read (\(error.localizedDescription))")
        }
        return try data.withUnsafeBytes { raw in
            var scanner = CSVScanner(raw.bindMemory(to: UInt8.self))
            var fields: [CSVScanner.Field] = []
            func next() throws -> Int? {
                do { return try scanner.next(into: &fields) } catch { throw MetatrainError("\(path): \(error)") }
            }
            guard try next() != nil else { throw MetatrainError("\(path): empty") }
            let header = fields.map(scanner.string)
            guard header.prefix(6) == ["setting", "user", "episode", "query", "label", "rank"] else {
                throw MetatrainError("\(path):1: not a ranks file (header \(header.joined(separator: ",")))")
            }
            var sampled = 0
            if header.count == 7, header[6].hasPrefix("rank_sampled"),
                let n = Int(header[6].dropFirst("rank_sampled".count))
            {
                sampled = n
            }
            var rows: [Row] = []
            while let line = try next() {
                let f = fields.map(scanner.string)
                guard f.count == header.count, let e = Int(f[2]), let q = Int(f[3]), let r = Int(f[5]), r >= 1 else {
                    throw MetatrainError("\(path):\(line): malformed row")
                }
                rows.append(
                    Row(
                        setting: f[0], user: f[1], episode: e, query: q, label: f[4], rank: r,
                        sampledRank: sampled > 0 ? Int(f[6]) : nil))
            }
            return RunRanks(rows: rows, sampledNegatives: sampled)
        }
    }
}

/// The study's metrics of one rank: acc@1, hr@k and ndcg@k for k in 1, 5, 10, 20, and mrr.
public enum StudyMetrics {
    public static let ks = [1, 5, 10, 20]
    public static let keys = ["acc@1"] + ks.map { "hr@\($0)" } + ks.map { "ndcg@\($0)" } + ["mrr"]
    /// The metrics shown in report.md's tables (results.json holds them all).
    public static let headline = ["acc@1", "hr@10", "ndcg@10", "mrr"]

    public static func values(rank r: Int) -> [Double] {
        let gain = ndcgGain(rank: r)
        return [r == 1 ? 1 : 0] + ks.map { r <= $0 ? 1 : 0 } + ks.map { r <= $0 ? gain : 0 } + [1 / Double(r)]
    }

    /// Keys with sampled metrics appended (`hr@10_sampled100`, ...) when `sampled` > 0.
    public static func allKeys(sampled: Int) -> [String] {
        keys + (sampled > 0 ? keys.map { "\($0)_sampled\(sampled)" } : [])
    }
}

/// Everything a study reports, computed from its runs' ranks.
public struct StudyResults {
    public var plan: StudyPlan
    public var keys: [String]
    /// method → seed → setting → metric values (keys order): means over queries.
    public var perSeed: [String: [UInt64: [String: [Double]]]] = [:]
    /// method → setting → user → per-user values (mean over its queries, averaged over seeds).
    public var perUser: [String: [String: [String: [Double]]]] = [:]
    public var comparisons: [Comparison] = []
    /// method → setting → each metric's 95% bootstrap interval over users.
    var intervals: [String: [String: [(Double, Double)]]] = [:]

    /// A method against the baseline on one setting and metric, tested two ways.
    /// Per user: users are the replicates (each user's mean over queries, averaged over seeds);
    /// it models how the difference varies from learner to learner for these trained models,
    /// not how it varies between training seeds. Per seed: each seed's difference of the
    /// means over queries is one replicate; it models the variance between training runs,
    /// with as many replicates as seeds (5 seeds: the smallest two-sided p is 2/32).
    public struct Comparison {
        public var method: String, setting: String, metric: String
        public var diff: Double, ci95: (Double, Double), p: Double, pBH: Double
        public var users: Int
        /// Per seed (in the plan's seed order): method − baseline of the means over queries.
        public var seedDiffs: [Double]
        /// The seed differences' sample standard deviation (0 with one seed).
        public var seedSD: Double
        /// Sign-flip p-value over the seed differences (exact) and its Benjamini–Hochberg adjustment.
        public var seedP: Double, seedPBH: Double
    }

    /// `ranks[method][seed]`: every run's ranks.
    public init(plan: StudyPlan, ranks: [String: [UInt64: RunRanks]]) throws {
        self.plan = plan
        let sampled = ranks.values.flatMap { $0.values }.map(\.sampledNegatives).max() ?? 0
        keys = StudyMetrics.allKeys(sampled: sampled)
        let nk = keys.count
        for m in plan.methods {
            for s in plan.seeds {
                guard let run = ranks[m.name]?[s] else {
                    throw MetatrainError("study: no ranks for \(m.name)/seed-\(s)")
                }
                // setting → user → (sums, queries)
                var byUser: [String: [String: ([Double], Int)]] = [:]
                for r in run.rows {
                    var v = StudyMetrics.values(rank: r.rank)
                    if sampled > 0 { v += StudyMetrics.values(rank: r.sampledRank ?? r.rank) }
                    var (sums, n) = byUser[r.setting, default: [:]][r.user] ?? ([Double](repeating: 0, count: nk), 0)
                    for i in 0..<nk { sums[i] += v[i] }
                    n += 1
                    byUser[r.setting, default: [:]][r.user] = (sums, n)
                }
                for (setting, users) in byUser {
                    var total = [Double](repeating: 0, count: nk), queries = 0
                    // In user order: a dictionary's order changes from process to process, and so would the sums' bits.
                    for u in users.keys.sorted() {
                        let (sums, n) = users[u]!
                        for i in 0..<nk { total[i] += sums[i] }
                        queries += n
                        var acc =
                            perUser[m.name, default: [:]][setting, default: [:]][u] ?? [Double](repeating: 0, count: nk)
                        for i in 0..<nk { acc[i] += sums[i] / Double(n) / Double(plan.seeds.count) }
                        perUser[m.name, default: [:]][setting, default: [:]][u] = acc
                    }
                    perSeed[m.name, default: [:]][s, default: [:]][setting] = total.map { $0 / Double(max(queries, 1)) }
                }
            }
        }
        // Paired comparisons against the baseline, then BH over all of them.
        var raw: [Comparison] = []
        guard let base = perUser[plan.baseline] else {
            throw MetatrainError("study: no results for the baseline \(plan.baseline)")
        }
        for m in plan.methods where m.name != plan.baseline {
            for setting in RunRanks.settings {
                guard let a = perUser[m.name]?[setting], let b = base[setting] else { continue }
                let users = a.keys.filter { b[$0] != nil }.sorted()
                for (k, key) in keys.enumerated() {
                    let d = users.map { a[$0]![k] - b[$0]![k] }
                    let idx = UInt64(raw.count)
                    let seedDiffs = plan.seeds.compactMap { s -> Double? in
                        guard let x = perSeed[m.name]?[s]?[setting], let y = perSeed[plan.baseline]?[s]?[setting] else {
                            return nil
                        }
                        return x[k] - y[k]
                    }
                    raw.append(
                        Comparison(
                            method: m.name, setting: setting, metric: key, diff: PairedStatistics.mean(d),
                            ci95: PairedStatistics.bootstrapInterval(
                                d, samples: plan.bootstrapSamples, key: [0, Stream.bootstrap, idx]),
                            p: PairedStatistics.signFlipPValue(
                                d, resamples: plan.permutations, key: [0, Stream.permutation, idx]),
                            pBH: 1, users: users.count, seedDiffs: seedDiffs,
                            seedSD: PairedStatistics.standardDeviation(seedDiffs),
                            seedP: PairedStatistics.signFlipPValue(
                                seedDiffs, resamples: plan.permutations, key: [2, Stream.permutation, idx]),
                            seedPBH: 1))
                }
            }
        }
        let adjusted = PairedStatistics.benjaminiHochberg(raw.map(\.p))
        let seedAdjusted = PairedStatistics.benjaminiHochberg(raw.map(\.seedP))
        for i in raw.indices { raw[i].pBH = adjusted[i]; raw[i].seedPBH = seedAdjusted[i] }
        comparisons = raw
        // Each method's intervals, once (results.json and report.md both show them).
        for (mi, m) in plan.methods.enumerated() {
            for (si, setting) in RunRanks.settings.enumerated() {
                guard let users = perUser[m.name]?[setting] else { continue }
                let names = users.keys.sorted()
                intervals[m.name, default: [:]][setting] = (0..<nk).map { k in
                    PairedStatistics.bootstrapInterval(
                        names.map { users[$0]![k] }, samples: plan.bootstrapSamples,
                        key: [1, Stream.bootstrap, UInt64(mi), UInt64(si), UInt64(k)])
                }
            }
        }
    }

    func metrics(_ v: [Double]) -> JSON { .object(zip(keys, v).map { ($0, .number($1)) }) }

    /// Mean over seeds of the per-seed metrics.
    public func mean(_ method: String, _ setting: String) -> [Double]? {
        let rows = plan.seeds.compactMap { perSeed[method]?[$0]?[setting] }
        guard !rows.isEmpty else { return nil }
        return (0..<keys.count).map { i in rows.reduce(0) { $0 + $1[i] } / Double(rows.count) }
    }

    /// 95% bootstrap interval over users of the mean of the per-user values.
    public func interval(_ method: String, _ setting: String) -> [(Double, Double)]? { intervals[method]?[setting] }

    public var json: JSON {
        var methods: [(String, JSON)] = []
        for m in plan.methods {
            let settings = RunRanks.settings.filter { perUser[m.name]?[$0] != nil }
            let seeds: [(String, JSON)] = plan.seeds.map { s in
                ("\(s)", .object(settings.compactMap { st in perSeed[m.name]?[s]?[st].map { (st, metrics($0)) } }))
            }
            methods.append(
                (
                    m.name,
                    .object([
                        ("seeds", .object(seeds)),
                        ("mean", .object(settings.compactMap { st in mean(m.name, st).map { (st, metrics($0)) } })),
                        (
                            "ci95",
                            .object(
                                settings.compactMap { st in
                                    interval(m.name, st).map { iv in
                                        (
                                            st,
                                            .object(zip(keys, iv).map { ($0, .array([.number($1.0), .number($1.1)])) })
                                        )
                                    }
                                })
                        )
                    ])
                ))
        }
        let comps: [JSON] = comparisons.map { c in
            .object([
                ("method", .string(c.method)), ("baseline", .string(plan.baseline)), ("setting", .string(c.setting)),
                ("metric", .string(c.metric)), ("diff", .number(c.diff)),
                ("ci95", .array([.number(c.ci95.0), .number(c.ci95.1)])),
                ("p", .number(c.p)), ("p_bh", .number(c.pBH)), ("users", .int(c.users)),
                (
                    "per_seed",
                    .object([
                        ("diffs", .array(c.seedDiffs.map { .number($0) })),
                        ("mean", .number(PairedStatistics.mean(c.seedDiffs))),
                        ("sd", .number(c.seedSD)), ("p", .number(c.seedP)), ("p_bh", .number(c.seedPBH)),
                        ("seeds", .int(c.seedDiffs.count))
                    ])
                )
            ])
        }
        return .object([
            ("baseline", .string(plan.baseline)), ("methods", .object(methods)), ("comparisons", .array(comps))
        ])
    }

    /// report.md: the table of means and intervals, and the differences against the baseline.
    public func markdown(title: String, notes: [String]) -> String {
        func pct(_ x: Double) -> String { String(format: "%.2f", 100 * x) }
        let shown =
            StudyMetrics.headline.compactMap { k in keys.firstIndex(of: k).map { (k, $0) } }
            + keys.enumerated().filter { $0.element.hasPrefix("hr@10_sampled") }.map { ($0.element, $0.offset) }
        var s = "# \(title)\n\n"
        for n in notes { s += n + "\n" }
        s += "\nMetrics in percent: the mean over seeds, with a 95% bootstrap interval over users.\n\n"
        s += "| method | setting | " + shown.map(\.0).joined(separator: " | ") + " |\n"
        s += "| --- | --- |" + String(repeating: " --- |", count: shown.count) + "\n"
        for m in plan.methods {
            for st in RunRanks.settings {
                guard let mean = mean(m.name, st), let iv = interval(m.name, st) else { continue }
                let cells = shown.map { (_, k) in "\(pct(mean[k])) [\(pct(iv[k].0)), \(pct(iv[k].1))]" }
                s +=
                    "| \(m.name)\(m.name == plan.baseline ? " (baseline)" : "") | \(st.replacingOccurrences(of: "_", with: "-")) | "
                    + cells.joined(separator: " | ") + " |\n"
            }
        }
        s += "\n## Against the baseline (\(plan.baseline))\n\n"
        s +=
            "Paired per user (each user's mean over its queries, averaged over seeds): the difference in percentage points, "
        s +=
            "a paired bootstrap 95% interval, a sign-flip permutation p-value, and p adjusted by Benjamini–Hochberg over "
        s += "all \(comparisons.count) comparisons in results.json. ✱ marks p_bh < 0.05.\n"
        s +=
            "Per seed: each seed's difference of the means over queries, their standard deviation across seeds, "
        s +=
            "and an exact sign-flip p-value over seeds (adjusted by BH as p_bh (seeds)). The per-user test treats users "
        s +=
            "as the replicates and does not model the variance between training seeds; the per-seed test does, with only "
        s +=
            "\(plan.seeds.count) replicates (its smallest p is \(String(format: "%.4g", min(1, 2 / pow(2, Double(plan.seeds.count)))))).\n\n"
        s +=
            "| method | setting | metric | diff | 95% interval | p | p_bh | seed diffs (sd) | p_bh (seeds) |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for c in comparisons where shown.contains(where: { $0.0 == c.metric }) {
            s +=
                "| \(c.method) | \(c.setting.replacingOccurrences(of: "_", with: "-")) | \(c.metric) | "
                + String(format: "%+.2f", 100 * c.diff) + " | [\(pct(c.ci95.0)), \(pct(c.ci95.1))] | "
                + String(format: "%.4f", c.p) + " | " + String(format: "%.4f", c.pBH) + (c.pBH < 0.05 ? " ✱" : "")
                + " | " + c.seedDiffs.map { String(format: "%+.2f", 100 * $0) }.joined(separator: ", ")
                + " (" + String(format: "%.2f", 100 * c.seedSD) + ") | "
                + String(format: "%.4f", c.seedPBH) + (c.seedPBH < 0.05 ? " ✱" : "") + " |\n"
        }
        s +=
            "\nPlots: `tools/.venv/bin/python3 tools/plot_study.py <study directory>` writes plots/<metric>.png (per method, with intervals and per-seed dots).\n"
        return s
    }
}

import Core

/// Paired statistics over users for comparing two methods (docs/FORMATS.md,
/// "Studies"): each user contributes one number per method (its mean over its
/// queries, averaged over seeds), and the tests work on the per-user
/// differences d_u = method − baseline.
public enum PairedStatistics {
    /// Mean of `d`.
    public static func mean(_ d: [Double]) -> Double { d.isEmpty ? 0 : d.reduce(0, +) / Double(d.count) }

    /// The sample standard deviation (n − 1 in the denominator); 0 for fewer than two values.
    public static func standardDeviation(_ d: [Double]) -> Double {
        guard d.count > 1 else { return 0 }
        let m = mean(d)
        return (d.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(d.count - 1)).squareRoot()
    }

    /// Percentile 95% interval of the mean of `d` over `samples` bootstrap
    /// resamples of the users (with replacement), drawn from a generator keyed
    /// by `key`. Percentiles interpolate linearly between order statistics
    /// (numpy's default).
    public static func bootstrapInterval(_ d: [Double], samples: Int, key: [UInt64]) -> (Double, Double) {
        guard !d.isEmpty, samples > 0 else { return (0, 0) }
        var g = SeededGenerator(seed: key.first ?? 0, Array(key.dropFirst()))
        let n = d.count
        var means = [Double](repeating: 0, count: samples)
        for b in 0..<samples {
            var s = 0.0
            for _ in 0..<n { s += d[g.below(n)] }
            means[b] = s / Double(n)
        }
        return percentile95(means)
    }

    /// Two-sided p-value of the paired sign-flip permutation test of mean(d) = 0:
    /// under the null each difference's sign is a fair coin. With 2^n ≤
    /// `resamples` every sign pattern is enumerated (the exact test, as
    /// scipy.stats.permutation_test does); otherwise `resamples` random
    /// patterns keyed by `key` are drawn, and the observed one counts among them.
    /// p = min(1, 2 · min(P(T ≤ t), P(T ≥ t))), T the mean of the flipped differences.
    public static func signFlipPValue(_ d: [Double], resamples: Int, key: [UInt64]) -> Double {
        let n = d.count
        guard n > 0 else { return 1 }
        let observed = mean(d)
        // Ties within a relative 1e-14 count as equal (floating-point sums of flipped values).
        let gamma = 1e-14 * max(1, abs(observed))
        var less = 0, greater = 0, total = 0
        func count(_ t: Double) {
            if t <= observed + gamma { less += 1 }
            if t >= observed - gamma { greater += 1 }
            total += 1
        }
        if n < 63, (1 << n) <= resamples {
            for pattern in 0..<(1 << n) {
                var s = 0.0
                for i in 0..<n { s += (pattern >> i) & 1 == 1 ? -d[i] : d[i] }
                count(s / Double(n))
            }
            return min(1, 2 * Double(min(less, greater)) / Double(total))
        }
        var g = SeededGenerator(seed: key.first ?? 0, Array(key.dropFirst()))
        for _ in 0..<resamples {
            var s = 0.0
            for i in 0..<n { s += g.next() & 1 == 1 ? -d[i] : d[i] }
            count(s / Double(n))
        }
        // The observed pattern is one of the possible ones (Phipson & Smyth): +1.
        return min(1, 2 * Double(min(less, greater) + 1) / Double(total + 1))
    }

    /// Benjamini–Hochberg adjusted p-values, in the order given:
    /// p_(i) · m / i for the i-th smallest, made monotone from the largest down, capped at 1.
    public static func benjaminiHochberg(_ p: [Double]) -> [Double] {
        let m = p.count
        guard m > 0 else { return [] }
        let order = p.indices.sorted { p[$0] != p[$1] ? p[$0] < p[$1] : $0 < $1 }
        var adjusted = [Double](repeating: 1, count: m)
        var running = 1.0
        for rank in stride(from: m, through: 1, by: -1) {
            let i = order[rank - 1]
            running = min(running, p[i] * Double(m) / Double(rank))
            adjusted[i] = min(1, running)
        }
        return adjusted
    }
}

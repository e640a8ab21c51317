import Core

/// User-level bootstrap: resample episodes (one per user in val/test) with
/// replacement, recompute the query-level mean. The resamples are drawn once
/// from (seed, Stream.bootstrap) and shared by every method, so differences
/// between methods are paired.
public struct Bootstrap: Sendable {
    /// counts[b][e] = how often episode e is in resample b.
    public let counts: [[Int32]]

    public init(episodes n: Int, samples: Int, seed: UInt64) {
        var g = SeededGenerator(seed: seed, [Stream.bootstrap])
        counts = (0..<samples).map { _ in
            var c = [Int32](repeating: 0, count: n)
            if n > 0 { for _ in 0..<n { c[g.below(n)] += 1 } }
            return c
        }
    }

    /// Per-resample means of a metric.
    func resampledMeans(_ per: [MetricSums], _ m: Metric) -> [Double] {
        counts.map { c in
            var s = 0.0, q = 0
            for (e, k) in c.enumerated() where k > 0 {
                s += Double(k) * per[e].sums[m.rawValue]; q += Int(k) * per[e].queries
            }
            return q > 0 ? s / Double(q) : 0
        }
    }

    /// 95% percentile interval of a metric.
    public func interval(_ per: [MetricSums], _ m: Metric) -> (Double, Double) {
        percentile95(resampledMeans(per, m))
    }

    /// 95% percentile interval of the paired difference mean(a) − mean(b).
    public func pairedInterval(_ a: [MetricSums], _ b: [MetricSums], _ m: Metric) -> (Double, Double) {
        let x = resampledMeans(a, m), y = resampledMeans(b, m)
        return percentile95(zip(x, y).map { $0 - $1 })
    }
}

func percentile95(_ v: [Double]) -> (Double, Double) {
    guard !v.isEmpty else { return (0, 0) }
    let s = v.sorted()
    func q(_ p: Double) -> Double {
        let pos = p * Double(s.count - 1)
        let lo = Int(pos.rounded(.down)), hi = min(lo + 1, s.count - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
    }
    return (q(0.025), q(0.975))
}

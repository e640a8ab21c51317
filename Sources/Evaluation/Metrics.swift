#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The reported metrics, in report order.
public enum Metric: Int, CaseIterable, Sendable {
    case acc1, hr5, hr10, ndcg5, ndcg10, mrr
    public var key: String { ["acc@1", "hr@5", "hr@10", "ndcg@5", "ndcg@10", "mrr"][rawValue] }
}

/// Pessimistic rank of the label among items 1..V-1: 1 + the number of other
/// items whose score is greater than OR EQUAL to the label's (docs/FORMATS.md, "Metrics").
@inline(__always)
public func pessimisticRank(_ scores: UnsafePointer<Float>, label: Int, V: Int) -> Int {
    let s = scores[label]
    var r = 1
    for j in 1..<V where j != label && scores[j] >= s { r += 1 }
    return r
}

/// A hit's NDCG gain at rank r (one relevant item, so the ideal DCG is 1): 1 / log2(r + 1).
/// NDCG@k is this when r ≤ k, else 0.
@inline(__always)
public func ndcgGain(rank r: Int) -> Double { 1 / log2(Double(r) + 1) }

/// Sums of per-query metric values over one episode's queries (one user).
public struct MetricSums: Sendable, Equatable {
    public var sums = [Double](repeating: 0, count: Metric.allCases.count)
    public var queries = 0
    public init() {}

    public mutating func add(rank r: Int) {
        queries += 1
        let d = Double(r)
        if r == 1 { sums[Metric.acc1.rawValue] += 1 }
        if r <= 5 { sums[Metric.hr5.rawValue] += 1; sums[Metric.ndcg5.rawValue] += ndcgGain(rank: r) }
        if r <= 10 { sums[Metric.hr10.rawValue] += 1; sums[Metric.ndcg10.rawValue] += ndcgGain(rank: r) }
        sums[Metric.mrr.rawValue] += 1 / d
    }

    public static func + (a: MetricSums, b: MetricSums) -> MetricSums {
        var c = a
        for i in c.sums.indices { c.sums[i] += b.sums[i] }
        c.queries += b.queries
        return c
    }

    public func mean(_ m: Metric) -> Double { queries > 0 ? sums[m.rawValue] / Double(queries) : 0 }
}

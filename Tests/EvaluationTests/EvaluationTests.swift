import Core
import Datasets
import ExperimentConfig
import GRU4Rec
import Kernels
import MetaLearning
import XCTest

@testable import Evaluation

final class MetricTests: XCTestCase {
    func testPessimisticRankCountsTies() {
        let s: [Float] = [100, 0.5, 0.9, 0.5, 0.1] // item 0's score is ignored
        XCTAssertEqual(pessimisticRank(s, label: 2, V: 5), 1)
        XCTAssertEqual(pessimisticRank(s, label: 1, V: 5), 3) // item 2 greater, item 3 tied
        XCTAssertEqual(pessimisticRank(s, label: 4, V: 5), 4)
        let flat = [Float](repeating: 0, count: 5)
        XCTAssertEqual(pessimisticRank(flat, label: 2, V: 5), 4)
    }

    func testMetricValues() {
        var m = MetricSums()
        m.add(rank: 1); m.add(rank: 3); m.add(rank: 7); m.add(rank: 20)
        XCTAssertEqual(m.mean(.acc1), 0.25)
        XCTAssertEqual(m.mean(.hr5), 0.5)
        XCTAssertEqual(m.mean(.hr10), 0.75)
        XCTAssertEqual(m.mean(.ndcg5), (1 + 1 / log2(4.0)) / 4, accuracy: 1e-12)
        XCTAssertEqual(m.mean(.ndcg10), (1 + 1 / log2(4.0) + 1 / log2(8.0)) / 4, accuracy: 1e-12)
        XCTAssertEqual(m.mean(.mrr), (1 + 1.0 / 3 + 1.0 / 7 + 1.0 / 20) / 4, accuracy: 1e-12)
    }

    func testBootstrapIsSeededAndBracketsTheMean() {
        var per: [MetricSums] = []
        var g = SeededGenerator(seed: 5)
        for _ in 0..<200 { var s = MetricSums(); for _ in 0..<5 { s.add(rank: 1 + g.below(20)) }; per.append(s) }
        let a = Bootstrap(episodes: 200, samples: 500, seed: 1), b = Bootstrap(episodes: 200, samples: 500, seed: 1)
        XCTAssertEqual(a.counts, b.counts)
        let mean = per.reduce(MetricSums(), +).mean(.hr10)
        let (lo, hi) = a.interval(per, .hr10)
        XCTAssertLessThan(lo, mean); XCTAssertGreaterThan(hi, mean)
        XCTAssertLessThan(hi - lo, 0.15)
        // A method compared with itself has a zero paired difference.
        let (dlo, dhi) = a.pairedInterval(per, per, .mrr)
        XCTAssertEqual(dlo, 0); XCTAssertEqual(dhi, 0)
    }
}

/// Few-shot adaptation must learn something the zero-shot model cannot know:
/// each user has a private item permutation seen only in its support set.
final class FewShotTests: XCTestCase {
    func testFewShotBeatsZeroShotOnPlantedUserSpecificPattern() {
        let V = 12, users = 40
        let d = episodeDataset(V: V, users: users, k: 3, q: 3, seed: 8, source: "planted") { g in
            // The user's favourite item: every label is it.
            let fav = Int32(1 + g.below(V - 1))
            return (0..<6).map { _ in
                var x: Int32
                repeat { x = Int32(1 + g.below(V - 1)) } while x == fav
                return ([x], fav)
            }
        }
        let dims = ModelDims(V: V, E: 4, H: 8)
        var rng = SeededGenerator(seed: 1)
        let params = GRU4Rec(dims: dims).initialParameters(rng: &rng)
        let ev = Evaluator(dataset: d, split: .test)
        let zero = ev.zeroShot(params, dims: dims).reduce(MetricSums(), +)
        let few = ev.fewShot(
            params, dims: dims, policy: FewShotPolicy(steps: 10, innerLR: 0.5, weighting: SupportWeighting())
        )
        .reduce(MetricSums(), +)
        XCTAssertGreaterThan(
            few.mean(.acc1), zero.mean(.acc1) + 0.5, "few-shot \(few.mean(.acc1)) vs zero-shot \(zero.mean(.acc1))")
    }

    /// The per-query ranks studies use agree, episode by episode, with the
    /// metric sums of zeroShot, fewShot and popularity, on prefixes of mixed
    /// lengths (which the packed batch reorders); with every other item as a
    /// "sampled" negative the sampled rank is the full rank.
    func testQueryRanksAgreeWithTheMetricSums() {
        let V = 15, users = 12
        let d = episodeDataset(V: V, users: users, k: 3, q: 4, seed: 21, source: "mixed lengths") { g in
            (0..<7).map { _ in
                let prefix = (0..<(1 + g.below(5))).map { _ in Int32(1 + g.below(V - 1)) }
                return (prefix, Int32(1 + g.below(V - 1)))
            }
        }
        let labels = d.label, query = d.episodes(.test).query
        let dims = ModelDims(V: V, E: 4, H: 8)
        var rng = SeededGenerator(seed: 2)
        let params = GRU4Rec(dims: dims).initialParameters(rng: &rng)
        let ev = Evaluator(dataset: d, split: .test)
        let policy = FewShotPolicy(steps: 3, innerLR: 0.3, weighting: SupportWeighting())
        func sums(_ ranks: [[QueryRank]]) -> [MetricSums] {
            ranks.map { rs in rs.reduce(into: MetricSums()) { $0.add(rank: $1.rank) } }
        }
        // Equal up to the order the queries' values are added in.
        func assertSame(_ a: [MetricSums], _ b: [MetricSums], _ what: String) {
            XCTAssertEqual(a.count, b.count, what)
            for (x, y) in zip(a, b) {
                XCTAssertEqual(x.queries, y.queries, what)
                for (u, v) in zip(x.sums, y.sums) { XCTAssertEqual(u, v, accuracy: 1e-12, what) }
            }
        }
        let zero = ev.queryRanks(params, dims: dims, policy: nil, sampledNegatives: V - 2, seed: 4)
        assertSame(sums(zero), ev.zeroShot(params, dims: dims), "zero-shot")
        assertSame(
            sums(ev.queryRanks(params, dims: dims, policy: policy)), ev.fewShot(params, dims: dims, policy: policy),
            "few-shot")
        assertSame(sums(ev.queryRanks(nil, dims: dims, policy: nil)), ev.popularity(), "popularity")
        for (e, rs) in zero.enumerated() {
            for (q, r) in rs.enumerated() {
                XCTAssertEqual(r.label, Int(labels[Int(query[4 * e + q])]))
                XCTAssertEqual(r.sampledRank, r.rank)
            }
        }
        let sampled = ev.queryRanks(params, dims: dims, policy: nil, sampledNegatives: 5, seed: 4)
        XCTAssertEqual(sampled, ev.queryRanks(params, dims: dims, policy: nil, sampledNegatives: 5, seed: 4))
        XCTAssertTrue(zip(sampled.joined(), zero.joined()).allSatisfy { $0.sampledRank! <= min($1.rank, 6) })
    }
}

/// A test-split dataset over items 1..<V: each user's pairs come from
/// `userPairs` (one generator seeded with `seed`, called user by user) and
/// form one episode, the first k support and the next q queries.
func episodeDataset(
    V: Int, users: Int, k: Int, q: Int, seed: UInt64, source: String,
    userPairs: (inout SeededGenerator) -> [(prefix: [Int32], label: Int32)]
) -> Dataset {
    var offsets: [Int64] = [0], items: [Int32] = [], labels: [Int32] = [], pairUser: [Int32] = []
    var support: [Int64] = [], query: [Int64] = [], epUser: [Int32] = []
    var g = SeededGenerator(seed: seed)
    for u in 0..<users {
        let first = labels.count
        for (prefix, label) in userPairs(&g) {
            items += prefix; offsets.append(Int64(items.count)); labels.append(label); pairUser.append(Int32(u))
        }
        support += (0..<k).map { Int64(first + $0) }; query += (k..<(k + q)).map { Int64(first + $0) }
        epUser.append(Int32(u))
    }
    return Dataset(
        itemIds: (0..<V).map { "i\($0)" }, itemCounts: [Int64](repeating: 1, count: V),
        userIds: (0..<users).map { "u\($0)" }, userSplit: [Int8](repeating: 2, count: users),
        pairUser: pairUser, prefixOffsets: offsets, prefixItems: items, label: labels,
        timestamp: [Int64](repeating: 0, count: labels.count), reliability: [Float](repeating: 1, count: labels.count),
        episodes: [.test: Episodes(k: k, q: q, support: support, query: query, user: epUser)],
        maxSeqLen: 50, kSupport: k, qQuery: q, source: source)
}

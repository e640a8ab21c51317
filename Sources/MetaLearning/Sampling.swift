import Core
import Datasets

/// Draws meta-batches: iteration t takes `batchSize` distinct train users, then
/// one of each user's train episodes, from a generator keyed by (seed, t) alone,
/// so any iteration's meta-batch can be recomputed without stored state (and a
/// resumed run draws exactly what an uninterrupted one would).
public struct MetaBatchSampler: Sendable {
    /// Train episode indices per user that has any, users in index order.
    public let episodesByUser: [[Int]]
    public let seed: UInt64
    public let batchSize: Int

    public init(dataset: Dataset, seed: UInt64, batchSize: Int) {
        let ep = dataset.episodes(.train)
        var byUser: [Int32: [Int]] = [:]
        for e in 0..<ep.count { byUser[ep.user[e], default: []].append(e) }
        episodesByUser = byUser.keys.sorted().map { byUser[$0]! }
        self.seed = seed
        self.batchSize = min(batchSize, episodesByUser.count)
    }

    /// Train episode indices of iteration t's meta-batch, in draw order.
    public func batch(iteration t: Int) -> [Int] {
        var g = SeededGenerator(seed: seed, [Stream.metaBatch, UInt64(t)])
        // Partial Fisher–Yates over user slots: batchSize distinct users.
        var users = Array(0..<episodesByUser.count)
        var out: [Int] = []
        out.reserveCapacity(batchSize)
        for i in 0..<batchSize {
            let j = i + g.below(users.count - i)
            users.swapAt(i, j)
            let eps = episodesByUser[users[i]]
            out.append(eps[g.below(eps.count)])
        }
        return out
    }
}

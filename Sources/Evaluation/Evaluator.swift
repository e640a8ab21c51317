import Core
import Datasets
import ExperimentConfig
import GRU4Rec
import Kernels
import MetaLearning
import Storage

/// How a model adapts to a support set before scoring queries.
public struct FewShotPolicy: Sendable {
    public var steps: Int
    public var innerLR: Float
    /// Meta-SGD rates (one per parameter element), replacing innerLR when present.
    public var rates: FloatBuffer?
    public var weighting: SupportWeighting
    public var frozen: [Range<Int>] = []

    public init(
        steps: Int, innerLR: Float, rates: FloatBuffer? = nil, weighting: SupportWeighting, frozen: [Range<Int>] = []
    ) {
        self.steps = steps; self.innerLR = innerLR; self.rates = rates; self.weighting = weighting; self.frozen = frozen
    }

    /// Plain fine-tuning with the configured maml.inner_lr, maml.inner_steps and weighting.
    public init(config: Config) {
        self.init(
            steps: config.maml.innerSteps, innerLR: Float(config.maml.innerLR),
            weighting: SupportWeighting(config.weighting))
    }
}

extension FewShotPolicy {
    /// The adaptation a meta-trained model was trained with: its inner loop's
    /// steps, rate (or Meta-SGD's learned rates), weighting and frozen embeddings.
    public init(metaConfig c: Config, layout: ParameterLayout, rates: FloatBuffer?) {
        let a = MetaAlgorithm(config: c, layout: layout)
        self.init(
            steps: c.maml.innerSteps, innerLR: Float(c.maml.innerLR),
            rates: c.maml.algorithm == .metasgd ? rates : nil,
            weighting: SupportWeighting(c.weighting), frozen: a.frozen)
    }
}

extension FewShotPolicy {
    /// How `evaluate` and studies adapt a checkpoint: a meta checkpoint as it
    /// was trained (its algorithm, rates, weighting and frozen embeddings, from
    /// its stored config); a pretrained one with plain steps from `config`.
    public init(for ck: Checkpoint, path: String, config: Config) throws {
        guard ck.kind == .meta else { self.init(config: config); return }
        let trained = try Config.parse(ck.configJSON, origin: "\(path) (stored config)")
        self.init(metaConfig: trained, layout: ck.layout, rates: ck.metaSGDAlpha)
    }

    /// The inner loop this policy adapts with.
    var innerLoop: InnerLoop {
        InnerLoop(steps: steps, rate: rates.map { .perElement($0) } ?? .scalar(innerLR), frozen: frozen)
    }
}

/// One query's pessimistic rank of its label over the full catalogue, and
/// among sampled negatives when asked for.
public struct QueryRank: Sendable, Equatable {
    public var label: Int, rank: Int
    public var sampledRank: Int?
    public init(label: Int, rank: Int, sampledRank: Int? = nil) {
        self.label = label; self.rank = rank; self.sampledRank = sampledRank
    }
}

/// Scores the query pairs of a split's episodes, per episode.
public final class Evaluator {
    public let dataset: Dataset
    public let split: SplitKind
    /// Episode indices evaluated (all, or the first n).
    public let episodes: [Int]
    private var models: [ModelDims: GRU4Rec] = [:]
    private var supportBatch = PackedBatch(), queryBatch = PackedBatch()

    public init(dataset: Dataset, split: SplitKind, limit: Int = 0) {
        self.dataset = dataset; self.split = split
        let n = dataset.episodes(split).count
        episodes = Array(0..<(limit > 0 ? min(limit, n) : n))
    }

    func model(_ dims: ModelDims) -> GRU4Rec {
        if let m = models[dims] { return m }
        let m = GRU4Rec(dims: dims); models[dims] = m; return m
    }

    /// Popularity baseline: items ranked by how often they are a label among
    /// TRAIN users' pairs (no val/test information).
    public func popularity() -> [MetricSums] {
        let ep = dataset.episodes(split)
        return popularityScores().withUnsafeBufferPointer { scores in
            episodes.map { e in
                var s = MetricSums()
                for p in ep.queryPairs(e) {
                    s.add(
                        rank: pessimisticRank(scores.baseAddress!, label: Int(dataset.label[Int(p)]), V: dataset.nItems)
                    )
                }
                return s
            }
        }
    }

    /// How often each item is a label among TRAIN users' pairs: the popularity ranking's scores.
    private func popularityScores() -> [Float] {
        var counts = [Float](repeating: 0, count: dataset.nItems)
        for p in 0..<dataset.nPairs where dataset.userSplit[Int(dataset.pairUser[p])] == SplitKind.train.rawValue {
            counts[Int(dataset.label[p])] += 1
        }
        return counts
    }

    /// Adapts `params` into `adapted` on episode e's support set (its last
    /// `shots` pairs when given: those closest in time to the queries).
    private func adapt(
        _ m: GRU4Rec, _ params: FloatBuffer, episode e: Int, policy: FewShotPolicy, loop: InnerLoop, shots: Int?,
        into adapted: FloatBuffer, grads: FloatBuffer
    ) {
        let all = dataset.episodes(split).supportPairs(e)
        let support = shots.map { all.suffix(min($0, all.count)) } ?? all
        supportBatch.pack(pairs: support, of: dataset, weights: policy.weighting.weights(support, in: dataset))
        loop.adapt(model: m, from: params, into: adapted, grads: grads, support: supportBatch)
    }

    /// Zero-shot: the parameters as they are.
    public func zeroShot(_ params: FloatBuffer, dims: ModelDims) -> [MetricSums] {
        let m = model(dims), ep = dataset.episodes(split)
        return episodes.map { e in scoreWithLoss(m, params, queries: ep.queryPairs(e)).0 }
    }

    /// Few-shot: adapt a copy on the support set (the last `shots` support
    /// pairs when given: those closest in time to the queries), then score.
    public func fewShot(_ params: FloatBuffer, dims: ModelDims, policy: FewShotPolicy, shots: Int? = nil)
        -> [MetricSums]
    {
        fewShot(params, dims: dims, policy: policy, episodes: episodes, shots: shots).map(\.0)
    }

    /// Few-shot on an explicit list of episodes of this split (e.g. one eval
    /// unit), with each episode's adapted query loss.
    public func fewShot(
        _ params: FloatBuffer, dims: ModelDims, policy: FewShotPolicy,
        episodes list: [Int], shots: Int? = nil
    ) -> [(MetricSums, Float)] {
        let m = model(dims), ep = dataset.episodes(split)
        let adapted = FloatBuffer(count: params.count), grads = FloatBuffer(count: params.count)
        let loop = policy.innerLoop
        return list.map { e in
            adapt(m, params, episode: e, policy: policy, loop: loop, shots: shots, into: adapted, grads: grads)
            return scoreWithLoss(m, adapted, queries: ep.queryPairs(e))
        }
    }

    /// Episode e's queries' scores over the catalogue (row q for query q, V each) after
    /// adapting on its support set exactly as `fewShot` does; unadapted with `policy` nil or
    /// an empty support set. What `recommend` ranks with, and what its test compares bit for bit.
    public func fewShotScores(_ params: FloatBuffer, dims: ModelDims, policy: FewShotPolicy?, episode e: Int)
        -> [[Float]]
    {
        let m = model(dims), ep = dataset.episodes(split)
        var use = params
        if let policy, ep.k > 0 {
            let adapted = FloatBuffer(count: params.count), grads = FloatBuffer(count: params.count)
            adapt(
                m, params, episode: e, policy: policy, loop: policy.innerLoop, shots: nil, into: adapted, grads: grads)
            use = adapted
        }
        let queries = ep.queryPairs(e), V = dims.V
        let logits = scoreEach(m, use, queries: queries)
        return (0..<queries.count).map { Array(logits[($0 * V)..<(($0 + 1) * V)]) }
    }

    /// Every query's rank, episode by episode, for studies (per_query.csv):
    /// zero-shot with `policy` nil, else few-shot exactly as `fewShot` adapts;
    /// `params` nil ranks by popularity. With `sampledNegatives` N > 0 each
    /// query is also ranked among N distinct items drawn uniformly from the
    /// catalogue without its label, keyed by (seed, split, episode, query).
    public func queryRanks(
        _ params: FloatBuffer?, dims: ModelDims, policy: FewShotPolicy?, shots: Int? = nil, sampledNegatives: Int = 0,
        seed: UInt64 = 0
    ) -> [[QueryRank]] {
        let ep = dataset.episodes(split), V = dataset.nItems
        let popularity = params == nil ? popularityScores() : []
        let loop = policy?.innerLoop
        let adapted = FloatBuffer(count: params?.count ?? 0), grads = FloatBuffer(count: params?.count ?? 0)
        return episodes.map { e in
            let queries = ep.queryPairs(e)
            /// Ranks the queries by their rows of `scores`: query q's is row `rowOf(q)`, `rowStride` apart
            /// (0: one row for all).
            func rankAll(_ scores: UnsafePointer<Float>, _ rowStride: Int, rowOf: (Int) -> Int) -> [QueryRank] {
                queries.enumerated().map { (q, pair) in
                    let label = Int(dataset.label[Int(pair)]), row = scores + rowOf(q) * rowStride
                    var r = QueryRank(label: label, rank: pessimisticRank(row, label: label, V: V))
                    if sampledNegatives > 0 {
                        var g = SeededGenerator(
                            seed: seed, [Stream.sampledNegatives, UInt64(split.rawValue), UInt64(e), UInt64(q)])
                        let n = min(sampledNegatives, V - 2)
                        var picked = Set<Int>(), beats = 0
                        while picked.count < n {
                            let j = 1 + g.below(V - 1)
                            if j == label || !picked.insert(j).inserted { continue }
                            if row[j] >= row[label] { beats += 1 }
                        }
                        r.sampledRank = 1 + beats
                    }
                    return r
                }
            }
            guard let params else {
                return popularity.withUnsafeBufferPointer { rankAll($0.baseAddress!, 0, rowOf: { _ in 0 }) }
            }
            let m = model(dims)
            var use = params
            if let policy, let loop {
                adapt(m, params, episode: e, policy: policy, loop: loop, shots: shots, into: adapted, grads: grads)
                use = adapted
            }
            return scoreEach(m, use, queries: queries).withUnsafeBufferPointer {
                rankAll($0.baseAddress!, V, rowOf: { $0 })
            }
        }
    }

    /// Every query's rank by popularity (zero-shot only), as `queryRanks` gives them.
    public func popularityRanks(sampledNegatives: Int = 0, seed: UInt64 = 0) -> [[QueryRank]] {
        queryRanks(
            nil, dims: ModelDims(V: dataset.nItems, E: 1, H: 1), policy: nil, sampledNegatives: sampledNegatives,
            seed: seed)
    }

    /// Each query's scores over the catalogue, row q for query q ([Q,V]): every query scored
    /// alone, a batch of one, so a query's scores never depend on which queries share its episode
    /// (OpenBLAS may round a row differently in a bigger product). `recommend` scores a learner's
    /// latest prefix the same way, which is what makes its answer equal evaluation's bit for bit.
    func scoreEach(_ m: GRU4Rec, _ params: FloatBuffer, queries: Slice<Column<Int64>>) -> [Float] {
        let V = m.dims.V
        var out = [Float](repeating: 0, count: queries.count * V)
        out.withUnsafeMutableBufferPointer { o in
            for (q, pair) in queries.enumerated() {
                queryBatch.pack(pairs: [pair], of: dataset)
                (o.baseAddress! + q * V).update(from: m.forward(params, queryBatch), count: V)
            }
        }
        return out
    }

    /// Ranks every query's label, then turns the same logits into the queries' mean cross-entropy.
    private func scoreWithLoss(_ m: GRU4Rec, _ params: FloatBuffer, queries: Slice<Column<Int64>>) -> (
        MetricSums, Float
    ) {
        var logits = scoreEach(m, params, queries: queries)
        var s = MetricSums()
        let V = m.dims.V, B = queries.count
        let labels = queries.map { dataset.label[Int($0)] }, weights = [Float](repeating: 1, count: B)
        let loss = logits.withUnsafeMutableBufferPointer { l in
            for b in 0..<B { s.add(rank: pessimisticRank(l.baseAddress! + b * V, label: Int(labels[b]), V: V)) }
            return crossEntropyForward(l.baseAddress!, nil, l.baseAddress!, labels, weights, B: B, V: V)
        }
        return (s, loss)
    }

    /// Mean weighted query loss (zero-shot), e.g. for validation curves.
    public func queryLoss(_ params: FloatBuffer, dims: ModelDims) -> Double {
        let m = model(dims), ep = dataset.episodes(split)
        var total = 0.0
        for e in episodes {
            queryBatch.pack(pairs: ep.queryPairs(e), of: dataset)
            total += Double(m.loss(params, queryBatch))
        }
        return episodes.isEmpty ? 0 : total / Double(episodes.count)
    }
}

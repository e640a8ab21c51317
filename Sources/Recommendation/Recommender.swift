import Core
import Datasets
import Evaluation
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import Storage

/// A course and its score.
public struct ScoredItem: Sendable, Equatable {
    public var item: String
    public var index: Int
    public var score: Float
}

/// What a model recommends for one learner, and on what basis.
public struct Recommendation: Sendable {
    public enum Basis: String, Sendable {
        /// Adapted on the learner's pairs, then ranked for their latest prefix.
        case adapted
        /// No usable pair (a single known course, or `--steps 0`): the model as trained.
        case unadapted
        /// No known course: the catalogue by popularity.
        case popularity
    }
    public var items: [ScoredItem]
    public var basis: Basis
    /// Pairs the model adapted on, of `pairs` the learner has.
    public var supportPairs: Int, pairs: Int
    /// Events read, distinct course ids not in the catalogue (ignored).
    public var events: Int, unknownItems: Int
    public var adapted: Bool { basis == .adapted }

    /// One line on the basis, for people.
    public var note: String {
        switch basis {
        case .adapted: return "adapted on the learner's \(supportPairs) most recent pairs (of \(pairs))"
        case .unadapted:
            return pairs == 0
                ? "the learner has no pair yet (one known course): the model's ranking, unadapted"
                : "not adapted (0 steps): the model's ranking"
        case .popularity: return "no known course among the learner's events: courses by popularity"
        }
    }
}

/// A trained model ready to recommend: the checkpoint's weights (read-only, shared by
/// every request), its catalogue, the prepare settings that turn events into pairs and the
/// adaptation policy. Each `recommend` call adapts a private copy, so calls may run at once.
public final class Recommender: @unchecked Sendable {
    public let path: String
    /// SHA-256 of the checkpoint file's bytes, and when it was loaded.
    public let sha256: String
    public let loadedAt: Date
    /// Which model answers: file, checksum, iteration, kind, algorithm, load time (in every answer and /readyz).
    public let identity: JSON
    public let checkpoint: Checkpoint
    public let itemIds: [String]
    public let itemIndex: [String: Int32]
    /// Event counts of each course (index 0 is padding): the popularity fallback.
    public let itemCounts: [Int64]
    /// Prepare's `data` section (session gap, reliability caps, sequence length, K) and the
    /// training log's action count.
    public let data: Config.Data
    public let actions: Int?
    /// Evaluation's few-shot policy for this checkpoint.
    public let policy: FewShotPolicy

    public var dims: ModelDims { checkpoint.dims }
    public var catalogueSize: Int { itemIds.count - 1 }

    /// Loads `path`; a checkpoint without a vocabulary (format version 1) needs the dataset it
    /// was trained on (`dataPath`), whose fingerprint must match.
    public init(checkpoint path: String, data dataPath: String? = nil) throws {
        let bytes: Data
        do { bytes = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw MetatrainError("\(path): cannot read checkpoint (\(error.localizedDescription))")
        }
        var h = SHA256()
        bytes.withUnsafeBytes { h.update($0) }
        let ck = try CheckpointFile.read(path)
        var ids = ck.itemIds, counts = ck.itemCounts, prepare = ck.prepareJSON
        if let dataPath {
            let d = try DatasetFile.read(dataPath)
            guard d.fingerprint == ck.datasetFingerprint else {
                throw MetatrainError(
                    "\(path): checkpoint was trained on dataset \(ck.datasetFingerprint.prefix(12))…, not on \(dataPath) (\(d.fingerprint.prefix(12))…)"
                )
            }
            if ids == nil { ids = d.itemIds; counts = Array(d.itemCounts) }
            if prepare == nil, !d.prepareJSON.isEmpty { prepare = d.prepareJSON }
        }
        guard let ids, let counts else {
            throw MetatrainError(
                "\(path): this checkpoint (format version 1) carries no course vocabulary; pass --data with the dataset it was trained on"
            )
        }
        let stored = try Config.parse(ck.configJSON, origin: "\(path) (stored config)")
        let settings: (config: Config, actions: Int?) =
            try prepare.map { try Config.prepareSettings($0, origin: "\(path) (prepare settings)") }
            ?? (stored, nil)
        self.path = path
        sha256 = h.finalizeHex()
        loadedAt = Date()
        checkpoint = ck
        itemIds = ids
        itemCounts = counts
        var index: [String: Int32] = [:]
        for (i, id) in ids.enumerated() where i > 0 { index[id] = Int32(i) }
        itemIndex = index
        data = settings.config.data
        actions = settings.actions
        policy = try FewShotPolicy(for: ck, path: path, config: stored)
        identity = .object([
            ("path", .string(path)), ("sha256", .string(sha256)), ("iteration", .int(ck.iteration)),
            ("kind", .string(ck.kind.rawValue)), ("algorithm", .string(ck.algorithm)),
            ("loaded_at", .string(ISO8601DateFormatter().string(from: loadedAt)))
        ])
    }

    /// Ranks the catalogue for learner `user` of `events`: their pairs by prepare's own steps,
    /// adapted on the latest K (the model's `k_support`) with evaluation's few-shot path
    /// (`steps` overrides the policy's inner steps), scored for their latest prefix. Courses
    /// the learner took are left out unless `includeSeen`; `k` is clamped to what is left.
    public func recommend(
        _ events: Prepare.Events, user: Int32 = 0, k: Int, includeSeen: Bool = false, steps: Int? = nil
    ) -> Recommendation {
        let learner = Prepare.learner(events, user: user, itemIndex: itemIndex, data: data, actions: actions)
        var policy = self.policy
        if let steps { policy.steps = steps }
        let basis: Recommendation.Basis, support: Int
        let scores: [Float]
        if learner.latestPrefix.isEmpty {
            basis = .popularity; support = 0
            scores = itemCounts.map { Float($0) }
        } else {
            support = policy.steps > 0 ? min(learner.pairs, data.kSupport) : 0
            basis = support > 0 ? .adapted : .unadapted
            scores = score(learner, support: support, policy: policy)
        }
        var candidates = (1..<itemIds.count).filter { includeSeen || !learner.seen.contains(Int32($0)) }
        candidates.sort { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        let top = candidates.prefix(max(0, k)).map { ScoredItem(item: itemIds[$0], index: $0, score: scores[$0]) }
        return Recommendation(
            items: top, basis: basis, supportPairs: support, pairs: learner.pairs, events: learner.events,
            unknownItems: learner.unknownItems)
    }

    /// The catalogue's scores for the learner's latest prefix, after adapting on their last
    /// `support` pairs: a one-episode dataset of the learner's pairs, whose one query is the
    /// latest prefix, through `Evaluator.fewShotScores`.
    func score(_ l: Prepare.Learner, support: Int, policy: FewShotPolicy) -> [Float] {
        let P = l.pairs
        var offsets = l.prefixOffsets, items = l.prefixItems
        items.append(contentsOf: l.latestPrefix)
        offsets.append(Int64(items.count))
        let episodes = Episodes(
            k: support, q: 1, support: ((P - support)..<P).map { Int64($0) }, query: [Int64(P)], user: [0])
        var d = Dataset(
            itemIds: itemIds, itemCounts: itemCounts, userIds: ["learner"], userSplit: [SplitKind.test.rawValue],
            pairUser: [Int32](repeating: 0, count: P + 1), prefixOffsets: offsets, prefixItems: items,
            label: l.label + [0], timestamp: l.timestamp + [l.latestTime], reliability: l.reliability + [1],
            episodes: [.test: episodes], maxSeqLen: data.maxSeqLen, kSupport: support, qQuery: 1, source: "learner")
        d.prepareJSON = ""
        let evaluator = Evaluator(dataset: d, split: .test)
        return evaluator.fewShotScores(
            checkpoint.params, dims: dims, policy: support > 0 ? policy : nil, episode: 0)[0]
    }
}

extension Recommendation {
    /// The JSON `recommend --json` prints and `serve` answers with (docs/SERVING.md).
    public func json(model: Recommender) -> JSON {
        .object([
            (
                "items",
                .array(
                    items.map {
                        .object([("item", .string($0.item)), ("score", .number(Double($0.score.description) ?? 0))])
                    })
            ),
            ("adapted", .bool(adapted)), ("basis", .string(basis.rawValue)), ("support_pairs", .int(supportPairs)),
            ("pairs", .int(pairs)), ("events", .int(events)), ("unknown_items", .int(unknownItems)),
            ("model", model.identity)
        ])
    }
}

import Core
import Datasets
import Evaluation
import ExperimentConfig
import Storage

extension RunRanks {
    /// Every query of `plan`'s split ranked by one run, zero-shot and (for a checkpoint)
    /// few-shot with the model's own adaptation policy (the plan's steps and shots when it
    /// sets them); without a checkpoint, by popularity. What a study task writes to ranks.csv.
    public static func rank(
        data: String, checkpoint: String?, config: Config, plan: StudyPlan, seed: UInt64
    ) throws -> (ranks: RunRanks, episodes: Int) {
        let dataset = try DatasetFile.read(data)
        guard let split = SplitKind(name: plan.split) else { throw MetatrainError("no split named \(plan.split)") }
        let evaluator = Evaluator(dataset: dataset, split: split)
        let negatives = config.eval.sampledNegatives
        var settings: [(String, [[QueryRank]])] = []
        if let checkpoint {
            let ck = try CheckpointFile.read(checkpoint, expectedFingerprint: dataset.fingerprint)
            var policy = try FewShotPolicy(for: ck, path: checkpoint, config: config)
            if plan.steps > 0 { policy.steps = plan.steps }
            let shots = plan.shots > 0 ? plan.shots : nil
            settings.append(
                (
                    "zero_shot",
                    evaluator.queryRanks(ck.params, dims: ck.dims, policy: nil, sampledNegatives: negatives, seed: seed)
                ))
            settings.append(
                (
                    "few_shot",
                    evaluator.queryRanks(
                        ck.params, dims: ck.dims, policy: policy, shots: shots,
                        sampledNegatives: negatives, seed: seed)
                ))
        } else {
            settings.append(("zero_shot", evaluator.popularityRanks(sampledNegatives: negatives, seed: seed)))
        }
        let episodes = dataset.episodes(split)
        var rows: [Row] = []
        for (setting, perEpisode) in settings {
            for (e, ranks) in zip(evaluator.episodes, perEpisode) {
                let user = dataset.userIds[Int(episodes.user[e])]
                for (q, r) in ranks.enumerated() {
                    rows.append(
                        Row(
                            setting: setting, user: user, episode: e, query: q, label: dataset.itemIds[r.label],
                            rank: r.rank, sampledRank: r.sampledRank))
                }
            }
        }
        return (RunRanks(rows: rows, sampledNegatives: negatives), evaluator.episodes.count)
    }
}

/// One unit of a study's work: a seed's shared pretraining, or one method on
/// one seed (train if it trains, then rank every query of the evaluation split).
public struct StudyTask: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case pretrain(seed: UInt64)
        case run(method: String, seed: UInt64)
    }

    public var index: Int
    public var kind: Kind
    /// The run directory, relative to the study directory.
    public var runDirectory: String
    /// The task that must finish first (the seed's pretraining), if any.
    public var dependsOn: Int?

    public var name: String {
        switch kind {
        case .pretrain(let s): return "pretrain/seed-\(s)"
        case .run(let m, let s): return "\(m)/seed-\(s)"
        }
    }
}

extension StudyPlan {
    /// The run directory of seed s's shared pretraining, relative to the study directory.
    public static func pretrainDirectory(seed s: UInt64) -> String { "runs/pretrain/seed-\(s)" }

    /// Every task, pretraining first (one per seed, when a method needs it),
    /// then each method in plan order on each seed. Indices are stable for a
    /// plan, so `--task i` (e.g. a Slurm array index) names the same run everywhere.
    public func tasks() -> [StudyTask] {
        var out: [StudyTask] = []
        var pretrainOf: [UInt64: Int] = [:]
        if needsPretraining {
            for s in seeds {
                pretrainOf[s] = out.count
                out.append(
                    StudyTask(index: out.count, kind: .pretrain(seed: s), runDirectory: Self.pretrainDirectory(seed: s))
                )
            }
        }
        for m in methods {
            for s in seeds {
                let needs = m.kind == .pretrained || m.kind == .meta(warmStart: true)
                out.append(
                    StudyTask(
                        index: out.count, kind: .run(method: m.name, seed: s), runDirectory: "runs/\(m.name)/seed-\(s)",
                        dependsOn: needs ? pretrainOf[s] : nil))
            }
        }
        return out
    }

    public func method(_ name: String) -> Method? { methods.first { $0.name == name } }
}

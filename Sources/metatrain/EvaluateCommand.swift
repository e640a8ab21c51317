import ArgumentParser
import Core
import Datasets
import Evaluation
import ExperimentConfig
import Foundation
import GRU4Rec
import Kernels
import Storage

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Reports zero-shot and few-shot ranking metrics with bootstrap intervals.",
        discussion: """
            Methods: a popularity baseline and each --checkpoint. Few-shot adapts a copy
            on each episode's support set: meta checkpoints with the inner loop they
            were trained with (algorithm, learned rates, weighting), pretrained ones
            with plain steps (maml.inner_lr, maml.inner_steps, the configured
            weighting). Each checkpoint is named by its run directory (runs/fomaml/final.h5
            and runs/fomaml/checkpoints/iter-000100.h5 are both "fomaml"; two from one run
            are "fomaml/final" and "fomaml/iter-000100") unless --name is given.
            Writes report.json and prints a Markdown table.
            Example:
              metatrain evaluate --data data/dataset.h5 --checkpoint runs/gru4rec/best.h5 \\
                  --checkpoint runs/fomaml/final.h5 --split test \\
                  --shots 1,3,5 --steps 1,3,5,10 \\
                  --out runs/report.json
            """)

    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Checkpoint to evaluate (repeatable; paired differences are against the first).") var checkpoint:
        [String] = []
    @Option(help: "Name of each --checkpoint in the report, in the same order (default: its run directory's name).")
    var name: [String] = []
    @Option(help: "Episodes to evaluate: val or test.") var split = "test"
    @Option(help: "Support-set sizes for the shots ablation, e.g. 1,3,5.") var shots: String?
    @Option(help: "Inner-step counts for the steps ablation, e.g. 1,3,5,10.") var steps: String?
    @Option(help: "Where to write report.json.") var out: String?
    @Option(help: "Evaluate only the first N episodes (0 = all).") var episodes = 0
    @OptionGroup var options: ConfigOptions

    func validate() throws {
        guard SplitKind(name: split) != nil, split != "train" else {
            throw ValidationError("--split must be val or test")
        }
        _ = try parseList(shots, "--shots"); _ = try parseList(steps, "--steps")
        if !name.isEmpty && name.count != checkpoint.count {
            throw ValidationError(
                "--name is given \(name.count) times for \(checkpoint.count) --checkpoint; give one per checkpoint or none"
            )
        }
        if Set(name).count != name.count || name.contains("popularity") {
            throw ValidationError("--name values must differ from each other and from 'popularity'")
        }
    }

    /// Report names for checkpoint paths: the run directory's name (the
    /// directory holding the file, or its parent for files under checkpoints/);
    /// checkpoints that share a run directory are told apart by file name, and
    /// any name still taken gets -2, -3, ...
    static func names(forCheckpoints paths: [String]) -> [String] {
        func parts(_ path: String) -> (run: String, stem: String) {
            let url = URL(fileURLWithPath: path).standardizedFileURL
            let stem = url.deletingPathExtension().lastPathComponent
            var dir = url.deletingLastPathComponent()
            if dir.lastPathComponent == "checkpoints" { dir = dir.deletingLastPathComponent() }
            let run = dir.lastPathComponent
            return (run.isEmpty || run == "/" ? stem : run, stem)
        }
        let p = paths.map(parts)
        var runCount: [String: Int] = [:]
        for x in p { runCount[x.run, default: 0] += 1 }
        var used: Set<String> = ["popularity"], out: [String] = []
        for x in p {
            let base = runCount[x.run]! > 1 ? "\(x.run)/\(x.stem)" : x.run
            var n = base, k = 2
            while used.contains(n) { n = "\(base)-\(k)"; k += 1 }
            used.insert(n); out.append(n)
        }
        return out
    }

    func parseList(_ s: String?, _ flag: String) throws -> [Int] {
        guard let s else { return [] }
        let v = s.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !v.isEmpty, v.allSatisfy({ ($0 ?? -1) >= 0 }) else {
            throw ValidationError("\(flag) takes a comma-separated list of counts, e.g. 1,3,5")
        }
        return v.map { $0! }
    }

    func run() throws {
        BLAS.useSingleThread()
        let config = try options.load()
        let dataset = try DatasetFile.read(data)
        let kind = SplitKind(name: split)!
        let evaluator = Evaluator(dataset: dataset, split: kind, limit: episodes)
        guard !evaluator.episodes.isEmpty else { throw MetatrainError("\(data): no \(kind.name) episodes to evaluate") }
        // With eval.sampled_negatives N, each query is also ranked among N seeded negatives (beside, not
        // instead): one ranking per setting gives both.
        let negatives = config.eval.sampledNegatives
        let popularity =
            negatives > 0
            ? MethodResult(
                ranks: evaluator.popularityRanks(sampledNegatives: negatives, seed: config.seed),
                sampledNegatives: negatives)
            : MethodResult(evaluator.popularity())
        var methods = [MethodReport(name: "popularity", checkpoint: nil, zeroShot: popularity, fewShot: nil)]
        var ablations: [(kind: String, method: String, values: [(String, MethodResult)])] = []
        let names = name.isEmpty ? Self.names(forCheckpoints: checkpoint) : name
        for (path, name) in zip(checkpoint, names) {
            let ck = try CheckpointFile.read(path, expectedFingerprint: dataset.fingerprint)
            FileHandle.standardError.write(
                Data("evaluating \(name) (\(path)) on \(evaluator.episodes.count) \(kind.name) episodes\n".utf8))
            // A meta checkpoint adapts as it was trained (its algorithm, rates and
            // weighting); a pretrained one fine-tunes with this command's config.
            let p = try FewShotPolicy(for: ck, path: path, config: config)
            func result(_ policy: FewShotPolicy?) -> MethodResult {
                if negatives > 0 {
                    return MethodResult(
                        ranks: evaluator.queryRanks(
                            ck.params, dims: ck.dims, policy: policy, sampledNegatives: negatives, seed: config.seed),
                        sampledNegatives: negatives)
                }
                return MethodResult(
                    policy.map { evaluator.fewShot(ck.params, dims: ck.dims, policy: $0) }
                        ?? evaluator.zeroShot(ck.params, dims: ck.dims))
            }
            let zero = result(nil), few = result(p)
            methods.append(MethodReport(name: name, checkpoint: path, zeroShot: zero, fewShot: few))
            let shotList = try parseList(shots, "--shots"), stepList = try parseList(steps, "--steps")
            if !shotList.isEmpty {
                ablations.append(
                    (
                        "shots", name,
                        shotList.map { s in
                            ("\(s)", MethodResult(evaluator.fewShot(ck.params, dims: ck.dims, policy: p, shots: s)))
                        }
                    ))
            }
            if !stepList.isEmpty {
                ablations.append(
                    (
                        "steps", name,
                        stepList.map { s in
                            var q = p; q.steps = s
                            return ("\(s)", MethodResult(evaluator.fewShot(ck.params, dims: ck.dims, policy: q)))
                        }
                    ))
            }
        }
        var report = EvaluationReport(
            split: kind.name, nEpisodes: evaluator.episodes.count, methods: methods,
            bootstrap: Bootstrap(
                episodes: evaluator.episodes.count, samples: config.eval.bootstrapSamples, seed: config.seed))
        report.ablations = ablations
        report.settings = .object([
            ("dataset", .string(data)), ("dataset_fingerprint", .string(dataset.fingerprint)),
            ("inner_lr", .number(config.maml.innerLR)), ("inner_steps", .int(config.maml.innerSteps)),
            ("weighting", .string(config.weighting.scheme.rawValue)),
            ("bootstrap_samples", .int(config.eval.bootstrapSamples)),
            ("seed", .int(Int(config.seed)))
        ])
        if let out { try writeFileAtomically(out, contents: report.json.pretty) }
        print(report.markdown, terminator: "")
        if let out { print("\nwrote \(out)") }
    }
}

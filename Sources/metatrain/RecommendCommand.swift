import ArgumentParser
import Core
import Datasets
import Foundation
import Kernels
import Recommendation

struct RecommendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recommend",
        abstract: "Recommends next courses for one learner from their events, with a trained checkpoint.",
        discussion: """
            Reads the learner's events as prepare reads a log (same column and
            delimiter flags), builds their sessions and pairs with prepare's own
            steps, adapts the model on their most recent K pairs with evaluation's
            few-shot path (the model's inner steps, rate and weighting) and ranks the
            catalogue for their latest courses. Courses they took are left out unless
            --include-seen; course ids the model does not know are counted and ignored.
            A learner with no pair yet gets the model's ranking unadapted, one with no
            known course gets popularity; the output says which.
            Examples:
              metatrain recommend --checkpoint runs/fomaml/final.h5 --events learner.csv
              metatrain recommend --checkpoint runs/fomaml/final.h5 --events log.csv \\
                  --user U123 --top 5 --json
            """)

    @Option(help: "Trained checkpoint (pretrain or meta).") var checkpoint: String
    @Option(help: "Dataset the checkpoint was trained on (needed only for format-1 checkpoints).") var data: String?
    @Option(help: "The learner's events (CSV, TSV or RecBole .inter, as prepare reads them).") var events: String
    @OptionGroup var columns: EventColumnOptions
    @Option(help: "The learner to recommend for, when the events hold several.") var user: String?
    @Option(help: "How many courses to list.") var top = 10
    @Option(help: "Inner steps to adapt with (default: the model's own; 0: no adaptation).") var steps: Int?
    @Flag(help: "Also list courses the learner already took.") var includeSeen = false
    @Flag(help: "Print JSON (the answer serve gives) instead of a table.") var json = false
    @Flag(help: "Skip malformed rows instead of failing.") var skipBadRows = false

    func validate() throws {
        guard top >= 1 else { throw ValidationError("--top must be at least 1") }
        if let steps, steps < 0 { throw ValidationError("--steps must be 0 or more") }
    }

    func run() throws {
        BLAS.useSingleThread()
        let model = try Recommender(checkpoint: checkpoint, data: data)
        let (cols, sep) = try columns.resolve(forFile: events)
        let (log, _, _) = try Prepare.read(csvPath: events, columns: cols, delimiter: sep, skipBadRows: skipBadRows)
        let learner: Int32
        if let user {
            guard let i = log.userNames.firstIndex(of: user) else {
                throw MetatrainError(
                    "\(events): no learner '\(user)' (column '\(cols.user)'; \(log.userNames.count) learners in the file)"
                )
            }
            learner = Int32(i)
        } else {
            guard log.userNames.count == 1 else {
                let some = log.userNames.prefix(3).joined(separator: ", ")
                throw MetatrainError(
                    "\(events): holds \(log.userNames.count) learners (\(some)\(log.userNames.count > 3 ? ", …" : "")); pick one with --user"
                )
            }
            learner = 0
        }
        let r = model.recommend(log, user: learner, k: top, includeSeen: includeSeen, steps: steps)
        if json {
            print(r.json(model: model).pretty, terminator: "")
            return
        }
        print(
            "learner \(log.userNames[Int(learner)]): \(r.events) events, \(r.pairs) pairs, "
                + "\(r.unknownItems) unknown course id\(r.unknownItems == 1 ? "" : "s") (ignored)")
        print(r.note)
        let width = max(6, r.items.map(\.item.count).max() ?? 0)
        print("rank  " + "course".padding(toLength: width, withPad: " ", startingAt: 0) + "  score")
        for (i, s) in r.items.enumerated() {
            let rank = String(i + 1)
            print(
                String(repeating: " ", count: max(0, 4 - rank.count)) + rank + "  "
                    + s.item.padding(toLength: width, withPad: " ", startingAt: 0) + "  "
                    + String(format: "%.4f", s.score))
        }
    }
}

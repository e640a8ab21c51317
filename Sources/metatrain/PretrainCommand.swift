import ArgumentParser
import Core
import ExperimentConfig
import Foundation
import Kernels
import Storage
import Training

struct PretrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrain",
        abstract: "Trains the global GRU4Rec baseline on train-user pairs.",
        discussion: """
            Writes config.yaml, metrics.jsonl, best.h5 (best validation HR@10),
            last.h5 (after every epoch) and final.h5 into the run directory. A
            directory that already holds a run is refused unless --resume (continue
            from last.h5, e.g. after a kill or with more pretrain.epochs) or
            --overwrite (start afresh).
            Examples:
              metatrain pretrain --data data/dataset.h5 --config configs/gru4rec.yaml \\
                  --run-dir runs/gru4rec
              metatrain pretrain --data data/dataset.h5 --run-dir runs/gru4rec --resume \\
                  --set pretrain.epochs=30
            """)

    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Run directory for checkpoints and logs.") var runDir: String
    @OptionGroup var options: ConfigOptions
    @Flag(
        help:
            "Start afresh in a run directory that already holds a pretraining run (its metrics, log and checkpoints are removed)."
    )
    var overwrite = false
    @Flag(
        help:
            "Continue the run in --run-dir from its last.h5 (same config; pretrain.epochs and pretrain.patience may change)."
    )
    var resume = false

    func validate() throws {
        if resume && overwrite {
            throw ValidationError("--resume continues a run and --overwrite removes it; give one")
        }
    }

    func run() throws {
        let progress = ConsoleProgress()
        let (r, run) = try Pretrainer.run(
            data: data, runDirectory: runDir, config: try options.load(), resume: resume, overwrite: overwrite,
            progress: progress)
        print(r.summary(bestCheckpoint: run.file("best.h5")))
    }
}

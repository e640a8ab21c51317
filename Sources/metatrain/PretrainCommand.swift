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
        BLAS.useSingleThread()
        let config = try options.load()
        let dataset = try DatasetFile.read(data)
        if resume {
            guard FileManager.default.fileExists(atPath: runDir) else {
                throw MetatrainError(
                    "\(runDir): no such run directory; nothing to resume (drop --resume to start a run)")
            }
        }
        // The directory is this process's before anything in it is touched: a second
        // pretrain (or a study task started twice) on it is refused, naming the holder.
        let run = try RunDirectory(runDir, logName: "pretrain.log")
        try run.lock()
        let held = Pretrainer.runFiles.filter { FileManager.default.fileExists(atPath: runDir + "/" + $0) }
        if !resume && !held.isEmpty {
            guard overwrite else {
                throw MetatrainError(
                    "\(runDir) already holds a run (\(held.joined(separator: ", "))); pass --overwrite to start it afresh, or choose another --run-dir"
                )
            }
            for name in held { try FileManager.default.removeItem(atPath: runDir + "/" + name) }
        }
        let resumedFrom = resume ? try Pretrainer.resumePoint(in: run) : nil
        try run.recordStart(datasetPath: data, fingerprint: dataset.fingerprint, resumedFrom: resumedFrom)
        let progress = ConsoleProgress()
        let r = try Pretrainer(
            dataset: dataset, fingerprint: dataset.fingerprint, config: config, run: run, progress: progress
        )
        .train(resume: resume)
        print(
            "pretrained \(r.epochs) epochs; best val HR@10 \(String(format: "%.4f", r.bestHR10)) at epoch \(r.bestEpoch); wrote \(run.file("best.h5"))"
        )
    }
}

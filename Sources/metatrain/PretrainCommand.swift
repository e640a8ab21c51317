import ArgumentParser
import Core
import Configuration
import Foundation
import Kernels
import Storage
import Training

struct PretrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pretrain",
        abstract: "Trains the global GRU4Rec baseline on train-user pairs.",
        discussion: """
        Writes config.yaml, metrics.jsonl, best.h5 (best validation HR@10) and
        final.h5 into the run directory.
        Example:
          metatrain pretrain --data data/dataset.h5 --config configs/gru4rec.yaml \\
              --run-dir runs/gru4rec
        """)

    @Option(help: "Dataset file written by prepare.") var data: String
    @Option(help: "Run directory for checkpoints and logs.") var runDir: String
    @OptionGroup var options: ConfigOptions
    @Flag(help: "Start afresh in a run directory that already holds a pretraining run (its metrics, log and checkpoints are removed).")
    var overwrite = false

    func run() throws {
        BLAS.useSingleThread()
        let config = try options.load()
        let dataset = try DatasetFile.read(data)
        let outputs = ["metrics.jsonl", "best.h5", "final.h5", "pretrain.log", "run.json", "config.yaml"]
        let held = outputs.filter { FileManager.default.fileExists(atPath: runDir + "/" + $0) }
        if !held.isEmpty {
            guard overwrite else {
                throw MetatrainError("\(runDir) already holds a run (\(held.joined(separator: ", "))); pass --overwrite to start it afresh, or choose another --run-dir")
            }
            for name in held { try FileManager.default.removeItem(atPath: runDir + "/" + name) }
        }
        let run = try RunDirectory(runDir, logName: "pretrain.log")
        try run.recordStart(datasetPath: data, fingerprint: dataset.fingerprint)
        let progress = ConsoleProgress()
        let r = try Pretrainer(dataset: dataset, fingerprint: dataset.fingerprint, config: config, run: run, progress: progress).train()
        print("pretrained \(r.epochs) epochs; best val HR@10 \(String(format: "%.4f", r.bestHR10)) at epoch \(r.bestEpoch); wrote \(run.file("best.h5"))")
    }
}

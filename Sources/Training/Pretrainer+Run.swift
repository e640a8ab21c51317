import Core
import Datasets
import ExperimentConfig
import Foundation
import Kernels
import Storage

extension Pretrainer {
    /// A pretraining run as `metatrain pretrain` and a study's pretraining task
    /// start it: takes `runDirectory` (refused while another process holds it,
    /// or when it holds a run, unless `resume` continues it or `overwrite`
    /// removes it), records the start, and trains. `progress` must outlive the call.
    public static func run(
        data: String, runDirectory runDir: String, config: Config, resume: Bool, overwrite: Bool,
        progress: ProgressSink?
    ) throws -> (result: Result, run: RunDirectory) {
        BLAS.useSingleThread()
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
        let held = runFiles.filter { FileManager.default.fileExists(atPath: runDir + "/" + $0) }
        if !resume && !held.isEmpty {
            guard overwrite else {
                throw MetatrainError(
                    "\(runDir) already holds a run (\(held.joined(separator: ", "))); pass --overwrite to start it afresh, or choose another --run-dir"
                )
            }
            for name in held { try FileManager.default.removeItem(atPath: runDir + "/" + name) }
        }
        let resumedFrom = resume ? try resumePoint(in: run) : nil
        try run.recordStart(datasetPath: data, fingerprint: dataset.fingerprint, resumedFrom: resumedFrom)
        let r = try Pretrainer(
            dataset: dataset, fingerprint: dataset.fingerprint, config: config, run: run, progress: progress
        )
        .train(resume: resume)
        return (r, run)
    }
}

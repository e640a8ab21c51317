// Module metatrain: the command-line tool. One file per subcommand (synth,
// prepare, pretrain, train, coordinator, worker, evaluate, config, keygen,
// demo, bench), each a ParsableCommand with a one-sentence abstract and an
// example in its help; the work itself lives in the library modules.

import ArgumentParser
import Core
import ExperimentConfig
import Foundation
import Kernels

@main
struct Metatrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metatrain",
        abstract: "Meta-trains GRU4Rec next-course recommenders for cold-start MOOC learners.",
        discussion: """
            Pipeline: synth (or a real XuetangX log) -> prepare -> pretrain -> train
            (or coordinator + workers on many machines) -> evaluate -> study (methods
            over many seeds, with paired statistics) -> recommend, serve or export a
            trained model for new learners. keygen makes CURVE keys, config
            explains every key, bench measures this machine.
            Example:
              metatrain demo --dir demo-run
            """,
        version: metatrainVersion,
        subcommands: [
            SynthCommand.self, PrepareCommand.self, PretrainCommand.self, CoordinatorCommand.self,
            WorkerCommand.self, TrainCommand.self, KeygenCommand.self, ConfigCommand.self, EvaluateCommand.self,
            StudyCommand.self, RecommendCommand.self, ServeCommand.self, ExportCommand.self, DemoCommand.self,
            BenchCommand.self
        ])

    /// Runs the CLI: our own errors print as one `error: ...` line and exit 1.
    static func mainEntry() {
        // OpenBLAS's kernel family, settled while this is the only thread (it may set the environment).
        _ = BLAS.kernels
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let e as MetatrainError {
            fail(e.message)
        } catch let e as ConfigError {
            fail(e.message)
        } catch {
            if exitCode(for: error) == .success { exit(withError: error) }
            let msg = message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            fail(
                msg.replacingOccurrences(of: "Error: ", with: "") + " (see --help)", code: exitCode(for: error).rawValue
            )
        }
    }

    static func fail(_ message: String, code: Int32 = 1) -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        Foundation.exit(code == 0 ? 1 : code)
    }

    static func main() { mainEntry() }
}

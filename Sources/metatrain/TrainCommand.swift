import ArgumentParser
import Core
import Foundation
import Runtime

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Starts a coordinator and N local worker processes and waits for the run to end.",
        discussion: """
        Exits with the coordinator's status. Ctrl-C stops the coordinator and
        every worker; --resume continues from the newest checkpoint.
        Example:
          metatrain train --data data/dataset.h5 --config configs/fomaml.yaml --run-dir runs/fomaml --workers 2
        """)

    @OptionGroup var options: MetaRunOptions
    @Option(help: "Number of local worker processes.") var workers = 2
    @Option(help: "Endpoint for the coordinator (port 0 picks free ports).") var bind = "tcp://127.0.0.1:0"

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
    }

    func run() throws {
        let stop = StopFlag()
        stop.installSignalHandlers()
        let shell = try options.makeShell(endpoint: bind, stop: stop, progress: ConsoleProgress())
        var children: [Process] = []
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let data = options.data, n = workers
        shell.onBound = { endpoint in
            for i in 0..<n {
                let p = Process()
                p.executableURL = exe
                p.arguments = ["worker", "--connect", endpoint, "--data", data, "--name", "local-\(i + 1)",
                               "--exit-with-parent", "\(getpid())"]
                do { try p.run(); children.append(p) } catch {
                    FileHandle.standardError.write(Data("could not start worker \(i + 1): \(error)\n".utf8))
                }
            }
        }
        func reapWorkers() {
            // Workers exit on the coordinator's shutdown; make sure none outlives us.
            let deadline = Date().addingTimeInterval(5)
            for c in children {
                while c.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
                if c.isRunning { c.terminate() }
            }
        }
        let code: Int32
        do { code = try shell.run() } catch { reapWorkers(); throw error }
        reapWorkers()
        if code != 0 { Foundation.exit(code) }
    }
}

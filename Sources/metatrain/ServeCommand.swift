import ArgumentParser
import Core
import Foundation
import Link
import Runtime
import Serving

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serves a trained model's recommendations over HTTP (JSON), reloading newer checkpoints.",
        discussion: """
            POST /v1/recommend takes a learner's events and answers as recommend
            --json does; GET /healthz, /readyz and /metrics (Prometheus) tell how it
            runs. With --run-dir it serves the run's best.h5 (else final.h5) and swaps
            in a newer file as training writes it; requests in flight finish on the
            model they started with. Without --token-file it binds loopback only.
            SIGTERM lets requests in flight finish, then exits 0. docs/SERVING.md has
            every field.
            Examples:
              metatrain serve --checkpoint runs/fomaml/final.h5 --bind 127.0.0.1:8080
              metatrain serve --run-dir runs/fomaml --bind 0.0.0.0:8080 \\
                  --token-file serve.token --threads 2
            """)

    @Option(help: "Checkpoint to serve.") var checkpoint: String?
    @Option(help: "Run directory whose best.h5 (else final.h5) to serve and follow.") var runDir: String?
    @Option(help: "Dataset the checkpoint was trained on (needed only for format-1 checkpoints).") var data: String?
    @Option(help: "Address and port to listen on (port 0: any free one, printed).") var bind = "127.0.0.1:8080"
    @Option(help: "Threads that adapt and score requests (default: the cores of this machine).") var threads: Int?
    @Option(help: "File holding the bearer token requests must present (needed to bind beyond loopback).")
    var tokenFile: String?
    @Option(help: "Seconds between checks for a newer checkpoint.") var reloadEvery: Double = 1
    @Option(help: "Seconds a connection may stay idle (or a client take to send) before it is closed.")
    var idleTimeout: Int = 30

    func validate() throws {
        guard (checkpoint == nil) != (runDir == nil) else {
            throw ValidationError("give exactly one of --checkpoint and --run-dir")
        }
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
        guard reloadEvery > 0 else { throw ValidationError("--reload-every must be positive") }
        guard idleTimeout >= 1 else { throw ValidationError("--idle-timeout must be at least 1 second") }
    }

    /// `host:port` (an IPv6 host in brackets) as host and port.
    static func parseBind(_ text: String) throws -> (String, Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { throw MetatrainError("--bind \(text): expected host:port, e.g. 127.0.0.1:8080") }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { throw MetatrainError("--bind \(text): no host") }
        return (host, port)
    }

    func run() throws {
        let (host, port) = try Self.parseBind(bind)
        var settings = ServeSettings(source: checkpoint.map { .checkpoint($0) } ?? .runDirectory(runDir!))
        settings.dataPath = data
        settings.host = host; settings.port = port
        settings.threads = threads ?? ProcessInfo.processInfo.activeProcessorCount
        settings.reloadEvery = reloadEvery
        settings.idleTimeoutS = Int64(idleTimeout)
        if let tokenFile {
            let text: String
            do { text = try String(contentsOfFile: tokenFile, encoding: .utf8) } catch {
                throw MetatrainError("\(tokenFile): cannot read the token file")
            }
            let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard token.count >= 16, !token.contains(where: { $0.isWhitespace }) else {
                throw MetatrainError("\(tokenFile): the token must be one word of at least 16 characters")
            }
            settings.token = token
        } else if !KeyFiles.isLoopback("tcp://\(host):\(port)") {
            throw MetatrainError(
                "--bind \(bind) is reachable from other machines; pass --token-file so requests need a bearer token, or bind 127.0.0.1"
            )
        }
        if case .checkpoint(let p) = settings.source, !FileManager.default.fileExists(atPath: p) {
            throw MetatrainError("\(p): no such checkpoint")
        }
        if case .runDirectory(let d) = settings.source, !FileManager.default.fileExists(atPath: d) {
            throw MetatrainError("\(d): no such run directory")
        }
        let done = DispatchSemaphore(value: 0)
        let failure = ErrorBox()
        let shownHost = host.contains(":") ? "[\(host)]" : host
        Task {
            do {
                try await Server.run(settings) { port in
                    FileHandle.standardOutput.write(Data("serve: listening on http://\(shownHost):\(port)\n".utf8))
                }
            } catch { failure.set(error) }
            done.signal()
        }
        done.wait()
        if let e = failure.get() { throw MetatrainError("serve: \(e)") }
        print("serve: stopped")
    }
}

/// An error handed from the server's task to the command's thread.
final class ErrorBox: @unchecked Sendable {
    private let lock = NSLock()
    private var error: Error?
    func set(_ e: Error) { lock.withLock { error = e } }
    func get() -> Error? { lock.withLock { error } }
}

import Foundation
import XCTest

/// A running `metatrain serve`: its process, port and logs.
final class ServeProcess {
    let process = Process()
    let stdoutPath: String, stderrPath: String
    private(set) var port = 0

    init(_ args: [String], dir: String) throws {
        stdoutPath = dir + "/serve-\(UUID().uuidString.prefix(8)).out"
        stderrPath = stdoutPath.replacingOccurrences(of: ".out", with: ".err")
        _ = FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: metatrainPath())
        process.arguments = ["serve"] + args
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        try process.run()
        // Wait for the line that names the port (or for the process to end), at most 60 s.
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline && process.isRunning {
            let out = (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? ""
            if let line = out.split(separator: "\n").first(where: { $0.contains("listening on http://") }),
                let p = line.split(separator: ":").last.flatMap({ Int($0) })
            {
                port = p; return
            }
            usleep(20_000)
        }
        throw NSError(domain: "serve did not start: \(log)", code: 1)
    }

    var base: String { "http://127.0.0.1:\(port)" }
    var log: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// SIGTERM, then the exit status (at most 60 s).
    func stop() -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        return waitExit()
    }

    func waitExit() -> Int32 {
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

/// Item 3: the HTTP service, from outside: a Python client (Tests/peers/serve_client.py, written
/// from docs/SERVING.md) gets recommend's answer, bad requests, probes, metrics, reloads under
/// load, tokens, idle timeouts and a draining SIGTERM.
final class ServeTests: XCTestCase {
    /// One test learner's events (before their first query) as the JSON `events` list, and
    /// `recommend --json`'s answer for them.
    func learner(_ m: DemoModel.Made, checkpoint: String, top: Int) throws -> (events: String, answer: String) {
        let (_, users) = try DemoModel.eventsBeforeFirstQuery(m)
        let u = users[1]
        let header = String(try String(contentsOfFile: m.events, encoding: .utf8).prefix { $0 != "\n" })
        let csv = m.dir + "/serve-learner.csv"
        try (header + "\n" + u.rows.joined(separator: "\n") + "\n").write(
            toFile: csv, atomically: true, encoding: .utf8)
        let r = try metatrain(["recommend", "--checkpoint", checkpoint, "--events", csv, "--json", "--top", "\(top)"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let answer = m.dir + "/serve-answer.json"
        try r.stdout.write(toFile: answer, atomically: true, encoding: .utf8)
        let cols = header.split(separator: ",").map(String.init)
        let events: [[String: String]] = u.rows.map { row in
            let f = row.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            return [
                "item": f[cols.firstIndex(of: "course_id")!], "time": f[cols.firstIndex(of: "time")!],
                "session": f[cols.firstIndex(of: "session_id")!], "action": f[cols.firstIndex(of: "action")!]
            ]
        }
        let path = m.dir + "/serve-events.json"
        try JSONSerialization.data(withJSONObject: events).write(to: URL(fileURLWithPath: path))
        return (path, answer)
    }

    func client(_ args: [String]) throws -> (Int32, String) {
        try python([peersDirectory.appendingPathComponent("serve_client.py").path] + args)
    }

    func testServeAnswersAsRecommendDoesAndRefusesBadInputByField() throws {
        let m = try DemoModel.get()
        let (events, answer) = try learner(m, checkpoint: m.meta, top: 10)
        let serve = try ServeProcess(
            ["--checkpoint", m.meta, "--bind", "127.0.0.1:0", "--threads", "2", "--idle-timeout", "2"], dir: m.dir)
        var (status, text) = try client(["check", serve.base, events, answer])
        XCTAssertEqual(status, 0, text + serve.log)
        (status, text) = try client(["idle", serve.base, "2"])
        XCTAssertEqual(status, 0, text)
        // SIGTERM with requests in flight: each finishes, then the server exits 0.
        (status, text) = try client(["drain", serve.base, events, "\(serve.process.processIdentifier)"])
        XCTAssertEqual(status, 0, text + serve.log)
        XCTAssertEqual(serve.waitExit(), 0, serve.log)
        XCTAssertFalse(serve.log.contains("Fatal error"), serve.log)
    }

    func testServeReloadsNewerCheckpointsUnderLoadAndKeepsTheOldOnADamagedOne() throws {
        let m = try DemoModel.get()
        let (events, _) = try learner(m, checkpoint: m.meta, top: 5)
        let run = m.dir + "/serving-run"
        try? FileManager.default.removeItem(atPath: run)
        try FileManager.default.createDirectory(atPath: run, withIntermediateDirectories: true)
        // No model yet: alive, not ready.
        let serve = try ServeProcess(
            ["--run-dir", run, "--bind", "127.0.0.1:0", "--reload-every", "0.1"], dir: m.dir)
        var (status, text) = try python([
            "-c",
            """
            import sys, urllib.request, urllib.error
            try:
                urllib.request.urlopen(sys.argv[1] + "/readyz"); sys.exit(1)
            except urllib.error.HTTPError as e:
                print(e.code, e.read().decode()); sys.exit(0 if e.code == 503 else 1)
            """, serve.base
        ])
        XCTAssertEqual(status, 0, text)
        let candidates = [m.pretrained, m.meta, m.dir + "/meta/checkpoints/iter-000002.h5"]
        for c in candidates { XCTAssertTrue(FileManager.default.fileExists(atPath: c), c) }
        try FileManager.default.copyItem(atPath: candidates[0], toPath: run + "/best.h5")
        (status, text) = try client(["reload", serve.base, events, run] + candidates)
        XCTAssertEqual(status, 0, text + serve.log)
        XCTAssertTrue(serve.log.contains("reloaded"), serve.log)
        XCTAssertTrue(serve.log.contains("was not loaded") && serve.log.contains("keeping"), serve.log)
        XCTAssertEqual(serve.stop(), 0, serve.log)
    }

    func testServeNeedsATokenBeyondLoopbackAndChecksIt() throws {
        let m = try DemoModel.get()
        let (events, _) = try learner(m, checkpoint: m.meta, top: 5)
        let r = try metatrain(["serve", "--checkpoint", m.meta, "--bind", "0.0.0.0:0"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--token-file"), r.stderr)
        let tokenFile = m.dir + "/serve.token"
        try "0123456789abcdef0123456789abcdef\n".write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let serve = try ServeProcess(
            ["--checkpoint", m.meta, "--bind", "127.0.0.1:0", "--token-file", tokenFile], dir: m.dir)
        let (status, text) = try client(["auth", serve.base, events, tokenFile])
        XCTAssertEqual(status, 0, text + serve.log)
        XCTAssertEqual(serve.stop(), 0, serve.log)
    }
}

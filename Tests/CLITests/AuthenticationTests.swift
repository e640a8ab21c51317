import Foundation
import Transport
import Wire
import XCTest

/// CURVE authentication, in ssh's spirit: only workers whose public keys are
/// listed get in, on every socket (the weights' PUB included), and a
/// coordinator reachable from other machines refuses to run without keys
/// unless told --insecure.
final class AuthenticationTests: XCTestCase {
    static let dir = freshDir("auth")
    let args = [
        "--set", "maml.iterations=30", "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12",
        "--set", "maml.meta_batch_size=8", "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2",
        "--set", "eval.every=10", "--set", "eval.val_episodes=8", "--set", "checkpoint.every=100"
    ]
    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    func keygen(_ name: String) throws {
        let r = try metatrain(["keygen", "--out", AuthenticationTests.dir + "/keys/" + name])
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    func testKeygenWritesAnOwnerOnlySecretAndNeverOverwrites() throws {
        try keygen("solo")
        let base = AuthenticationTests.dir + "/keys/solo"
        let secret = try FileManager.default.attributesOfItem(atPath: base + ".secret")[.posixPermissions] as? Int
        let pub = try FileManager.default.attributesOfItem(atPath: base + ".pub")[.posixPermissions] as? Int
        XCTAssertEqual(secret, 0o600); XCTAssertEqual(pub, 0o644)
        XCTAssertEqual(read(base + ".pub").trimmingCharacters(in: .whitespacesAndNewlines).utf8.count, 40)
        let again = try metatrain(["keygen", "--out", base])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("keys are never overwritten"), again.stderr)
        // A secret others can read is refused, as ssh refuses an unprotected key.
        chmod(base + ".secret", 0o644)
        let data = try syntheticDataset(in: AuthenticationTests.dir)
        let r = try metatrain([
            "worker", "--connect", "tcp://127.0.0.1:9", "--data", data, "--key", base + ".secret",
            "--coordinator-key", base + ".pub"
        ])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("a secret key must be readable by its owner only (chmod 600"), r.stderr)
    }

    func testAnAddressOtherMachinesReachNeedsKeysOrInsecure() throws {
        let data = try syntheticDataset(in: AuthenticationTests.dir)
        let r = try metatrain(
            ["coordinator", "--data", data, "--run-dir", AuthenticationTests.dir + "/open", "--bind", "tcp://*:0"]
                + args)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(
            r.stderr.contains("tcp://*:0 can be reached from other machines") && r.stderr.contains("--insecure"),
            r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: AuthenticationTests.dir + "/open/checkpoints"))
    }

    /// A listed worker trains; a stranger with a key of its own is refused (and
    /// logged once, however often it tries), a peer without keys gets nothing,
    /// not even the weights' broadcasts; the weights are a keyless run's.
    func testOnlyListedKeysGetIn() throws {
        let data = try syntheticDataset(in: AuthenticationTests.dir)
        for k in ["coordinator", "authorized/w1", "stranger"] { try keygen(k) }
        let keys = AuthenticationTests.dir + "/keys"
        let plain = AuthenticationTests.dir + "/plain"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", plain, "--workers", "1"] + args).status, 0)
        let run = AuthenticationTests.dir + "/run"
        let coord = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--key", keys + "/coordinator.secret", "--authorized-keys", keys + "/authorized"
            ] + args)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        // A peer without keys: its SUB must hear no weights, its hello no answer.
        let ctx = ZMQContext()
        let sub = try ZMQSocket(ctx, .sub)
        try sub.connect(try publishEndpoint(endpoint))
        try sub.subscribe()
        // --verbose: each says when a hello finds no connection (the handshake was refused).
        let strangerErr = AuthenticationTests.dir + "/stranger.err",
            keylessErr = AuthenticationTests.dir + "/keyless.err"
        let stranger = try startDetached(
            [
                "worker", "--connect", endpoint, "--data", data, "--procs", "1", "--name", "stranger", "--verbose",
                "--key", keys + "/stranger.secret", "--coordinator-key", keys + "/coordinator.pub"
            ], stderr: strangerErr)
        defer { stranger.killGroup(); stranger.wait() }
        let keyless = try startDetached(
            ["worker", "--connect", endpoint, "--data", data, "--procs", "1", "--name", "keyless", "--verbose"],
            stderr: keylessErr)
        defer { keyless.killGroup(); keyless.wait() }
        // Several hellos from each, every one refused, before the run can start.
        func hellos(_ file: String) -> Int { read(file).components(separatedBy: "'hello' not sent").count - 1 }
        XCTAssertTrue(
            eventually(within: 60) { hellos(strangerErr) >= 3 && hellos(keylessErr) >= 3 },
            read(strangerErr) + read(keylessErr))
        let w1 = try metatrain([
            "worker", "--connect", endpoint, "--data", data, "--procs", "2", "--name", "w1",
            "--key", keys + "/authorized/w1.secret", "--coordinator-key", keys + "/coordinator.pub"
        ])
        XCTAssertEqual(w1.status, 0, w1.stderr)
        XCTAssertEqual(coord.wait(seconds: 60), 0)
        XCTAssertNil(try sub.receive(timeoutMs: 200), "a subscriber without a key heard a broadcast")
        let log = read(run + "/coordinator.log")
        let strangerKey = read(keys + "/stranger.pub").trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(
            log.components(separatedBy: "its key \(strangerKey) is not among the authorized keys").count - 1, 1, log)
        XCTAssertFalse(log.contains("stranger joined") || log.contains("keyless joined"), log)
        XCTAssertTrue(log.contains("host agent w1 of 2 processes joined"), log)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: plain + "/final.h5")), "CURVE changed the weights")
    }

    func publishEndpoint(_ e: String) throws -> String {
        let colon = e.lastIndex(of: ":")!
        return String(e[..<colon]) + ":\(Int(e[e.index(after: colon)...])! + 1)"
    }
}

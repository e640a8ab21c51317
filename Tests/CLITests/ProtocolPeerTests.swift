import Foundation
import XCTest

/// A second implementation of the worker side, in Python (pyzmq), written from
/// docs/PROTOCOL.md alone (Tests/peers/protocol_peer.py): it joins as the
/// document says, and plays the peers that hold work or flood. Beside one honest
/// worker, the run ends with the bits of `train --workers 1` every time.
final class ProtocolPeerTests: XCTestCase {
    static let dir = freshDir("protocol-peer")
    let args = [
        "--set", "maml.iterations=2000", "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12",
        "--set", "maml.meta_batch_size=8", "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2",
        "--set", "eval.every=100", "--set", "checkpoint.every=100"
    ]
    let peer = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("peers/protocol_peer.py").path
    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    override func setUpWithError() throws {
        guard (try? python(["-c", "import zmq, h5py"]))?.0 == 0 else {
            throw XCTSkip("python3 with pyzmq and h5py is needed (tools/install-deps.sh --tests)")
        }
    }

    /// The reference: one honest worker alone.
    func reference(_ data: String) throws -> String {
        let run = ProtocolPeerTests.dir + "/reference"
        if !FileManager.default.fileExists(atPath: run + "/final.h5") {
            let r = try metatrain(["train", "--data", data, "--run-dir", run, "--workers", "1"] + args)
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        return run + "/final.h5"
    }

    /// A coordinator, the Python peer in `mode`, then (once the peer has joined) one honest
    /// worker; returns the peer's report, the coordinator's log and the run directory.
    /// With `peerFirst` the peer joins before the honest worker and takes the run's first unit,
    /// before any unit time is measured. With `relay` the honest worker connects to the peer,
    /// which relays for it, and is the run's only worker.
    func run(_ name: String, mode: [String], data: String, peerFirst: Bool = false, relay: Bool = false) throws -> (
        report: [String: Any], log: String, run: String, status: Int32
    ) {
        let run = ProtocolPeerTests.dir + "/" + name
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args)
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let py = Process(), out = Pipe()
        let command = pythonCommand()
        py.executableURL = URL(fileURLWithPath: command[0])
        let endpointFile = run + ".endpoint"
        py.arguments =
            Array(command.dropFirst()) + [peer, "--connect", endpoint, "--data", data] + mode
            + (relay ? ["--endpoint-file", endpointFile] : [])
        py.standardOutput = out; py.standardError = out
        var honest: GroupProcess?
        defer { honest?.killGroup(); honest?.wait() }
        func startHonest(_ to: String, _ extra: [String] = ["--name", "honest"]) throws {
            honest = try startDetached(["worker", "--connect", to, "--data", data, "--procs", "1"] + extra)
        }
        if relay {
            try py.run()
            XCTAssertTrue(
                eventually(within: 30) { FileManager.default.fileExists(atPath: endpointFile) }, "the relay bound")
            try startHonest(read(endpointFile), ["--no-shared-memory", "--name", "pyrelay"])
        } else if peerFirst {
            try py.run()
            XCTAssertTrue(
                eventually(within: 30) { self.read(run + "/coordinator.log").contains("pypeer") },
                "\(name): the peer joined")
            try startHonest(endpoint)
        } else {
            // The honest worker first: the run has measured unit times by the time the peer joins.
            try startHonest(endpoint)
            XCTAssertTrue(
                eventually(within: 30) { FileManager.default.fileExists(atPath: run + "/metrics.jsonl") },
                "\(name): the first iteration")
            try py.run()
        }
        XCTAssertEqual(coord.wait(seconds: 240), 0, "\(name): the run ended\n" + read(run + "/coordinator.log"))
        let deadline = Date().addingTimeInterval(60)
        while py.isRunning && Date() < deadline { usleep(50_000) }
        if py.isRunning { py.terminate() }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        py.waitUntilExit()
        let last = text.split(separator: "\n").last.map(String.init) ?? ""
        let report = (try? JSONSerialization.jsonObject(with: Data(last.utf8))) as? [String: Any] ?? [:]
        XCTAssertFalse(report.isEmpty, "\(name): the peer said \(text)")
        return (report, read(run + "/coordinator.log"), run, py.terminationStatus)
    }

    /// Joined from the document: an empty run id in the first hello, the welcome's run id after
    /// it, the weights' size by the documented formula, a unit's task count. The peer joins
    /// first, so a train unit is sure to come to it before the run ends (joining after the
    /// honest worker, a loaded machine could finish the tiny run first).
    func testAPeerWrittenFromTheDocumentJoins() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        let r = try run("join", mode: ["--mode", "join"], data: data, peerFirst: true)
        XCTAssertEqual(r.report["theta"] as? Int, r.report["theta_documented"] as? Int, "\(r.report)")
        XCTAssertEqual(r.report["alpha"] as? Int, 0)
        let tasks = r.report["unit_tasks"] as? Int ?? 0
        XCTAssertTrue(
            tasks >= 2 && tasks <= 8 && tasks % 2 == 0, "a block of 2-task chunks of the meta-batch: \(tasks)")
        XCTAssertTrue(r.log.contains("worker pypeer joined"), r.log)
        XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)))
    }

    /// An honest peer whose every frame is the document's: the Python peer relays for a
    /// metatrain worker (its arithmetic; numpy cannot reproduce OpenBLAS's float32 bits) and
    /// decodes and re-encodes every frame both ways by the tables of "Frames", sending what it
    /// encoded. It is the run's only peer, so every result the coordinator accepts is one the
    /// Python encoder wrote, and the weights are bit-identical to `train --workers 1`.
    func testAnHonestPeerSpeakingTheDocumentComputesTheWholeRun() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        let r = try run("relay", mode: ["--mode", "relay", "--seconds", "240"], data: data, relay: true)
        let report = r.report, log = r.log
        XCTAssertEqual(r.status, 0, "\(report)")
        XCTAssertEqual((report["mismatches"] as? [String])?.isEmpty, true, "\(report)")
        let up = (report["relayed"] as? [String: Any])?["up"] as? [String: Int] ?? [:]
        let down = (report["relayed"] as? [String: Any])?["down"] as? [String: Int] ?? [:]
        XCTAssertGreaterThan(up["train_result"] ?? 0, 0, "\(report)")
        XCTAssertGreaterThan(up["eval_result"] ?? 0, 0, "\(report)")
        XCTAssertGreaterThan(down["work"] ?? 0, 0, "\(report)")
        XCTAssertEqual(down["welcome"], 1, "\(report)")
        XCTAssertTrue(log.contains("worker pyrelay joined"), log)
        XCTAssertFalse(log.contains("malformed"), log)
        XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)))
    }

    /// A peer that heartbeats and never answers, claiming 8 and then 4,096 processes: it gets one
    /// unit, which goes to the honest worker after its deadline (seconds); from then on its units
    /// are copied to the honest worker at once, and the weights are the honest worker's alone.
    func testAHolderClaimingManyProcessesCostsSecondsAndNoBits() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        for procs in [8, 4096] {
            let r = try run(
                "hold-\(procs)", mode: ["--mode", "hold", "--procs", "\(procs)", "--seconds", "200"], data: data)
            XCTAssertTrue(r.log.contains("host agent pypeer of \(procs) processes joined"), r.log)
            XCTAssertTrue(r.log.contains("worker pypeer has held unit") && r.log.contains("past its deadline"), r.log)
            XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)), "\(procs) processes")
        }
    }

    /// The holder joins first and takes the run's first unit, before any unit time is measured:
    /// the honest worker takes a copy after seconds (not the 120 s first-unit deadline), and
    /// the weights are the honest worker's alone.
    func testAHolderOfTheFirstUnitCostsSecondsAndNoBits() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        let r = try run(
            "hold-first", mode: ["--mode", "hold", "--procs", "4096", "--seconds", "200"], data: data,
            peerFirst: true)
        XCTAssertTrue(r.log.contains("no unit time is measured yet: worker honest, idle, takes a copy"), r.log)
        XCTAssertFalse(r.log.contains("past its deadline of 120s"), r.log)
        XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)))
    }

    /// A peer that answers every unit with a lie (NaN or infinite gradients, one float, 2^62
    /// tasks, another unit's id, an old version), joining again each time it is dropped: every
    /// lie is a strike, and the weights are the honest worker's alone.
    func testEveryLieCostsItsTellerAndNoBits() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        for lie in ["nan", "inf", "size", "tasks", "other", "version"] {
            let r = try run("lie-\(lie)", mode: ["--mode", "lie", "--lie", lie, "--seconds", "200"], data: data)
            XCTAssertGreaterThan(r.report["lies"] as? Int ?? 0, 0, "\(lie): \(r.report)")
            XCTAssertTrue(r.log.contains("dropped a bad result or message from worker pypeer"), "\(lie): " + r.log)
            XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)), lie)
        }
    }

    /// 1,000 of each message a joined peer can send to no use, each kind alone and all in turn:
    /// the log grows by a few dozen lines, the weights are sent a handful of times, the peer is
    /// dropped, the bits hold.
    func testAFloodOfEveryKindCostsLinesNotTheRun() throws {
        let data = try syntheticDataset(in: ProtocolPeerTests.dir)
        for kind in ["all", "result", "unit_failed", "ready", "fetch", "frames", "junk"] {
            let r = try run("flood-\(kind)", mode: ["--mode", "flood", "--count", "1000", "--kind", kind], data: data)
            let about = r.log.split(separator: "\n").filter {
                $0.contains("pypeer") || $0.contains("unknown peer") || $0.contains("malformed")
                    || $0.contains("more like that")
            }
            XCTAssertLessThanOrEqual(about.count, 40, "\(kind):\n" + about.joined(separator: "\n"))
            XCTAssertLessThanOrEqual(r.report["weights_replies"] as? Int ?? 999, 20, "\(kind): \(r.report)")
            if kind == "ready" {
                // `ready` is a strike only while the peer holds units, and its units then avoid it: once it
                // holds nothing, more readys cost nothing (and re-send nothing), so it need not be dropped.
                XCTAssertTrue(r.log.contains("said ready while holding unit(s)"), "\(kind): " + r.log)
            } else {
                XCTAssertTrue(r.log.contains("pypeer sent 3 bad results or messages"), "\(kind): " + r.log)
            }
            XCTAssertEqual(try bytes(r.run + "/final.h5"), try bytes(try reference(data)), kind)
        }
    }
}

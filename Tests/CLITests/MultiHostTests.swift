import Foundation
import NetworkLab
import Runtime
import Storage
import XCTest

/// Meta-training across hosts: network namespaces with their own addresses on
/// a bridge stand in for machines, the coordinator on one and a worker on each
/// of two others, talking TCP over the bridge (the workers keep to the socket,
/// as on real separate machines). Skips, saying why, where namespaces cannot be made.
final class MultiHostTests: XCTestCase {
    static let dir = freshDir("hosts")

    let small = [
        "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12", "--set", "maml.meta_batch_size=8",
        "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2", "--set", "maml.inner_lr=0.1",
        "--set", "maml.outer_lr=0.01", "--set", "eval.every=500", "--set", "eval.val_episodes=8",
        "--set", "checkpoint.every=100000", "--set", "eval.patience=1000"
    ]

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    func bytes(_ path: String) throws -> Data { try Data(contentsOf: URL(fileURLWithPath: path)) }

    func dataset() throws -> String { try syntheticDataset(in: MultiHostTests.dir) }

    /// Waits until `condition` holds, at most `seconds`.
    func waitFor(_ seconds: Double, _ what: String, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { throw NSError(domain: "timed out waiting for \(what)", code: 1) }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    /// Two hosts' host agents (two processes each) and a coordinator on a third give the bits of a
    /// one-machine run; then one host's link is cut mid-run: its units go to
    /// the other host, it rejoins when the link is back, and the run still
    /// ends bit-identical.
    func testWorkersOnTwoHostsAndACutLinkEndBitIdentical() throws {
        if let why = NetworkLab.unavailableReason() {
            print("MultiHostTests skipped: \(why)")
            throw XCTSkip(why)
        }
        let data = try dataset()
        let iterations = 8_000
        let args = ["--data", data, "--set", "maml.iterations=\(iterations)"] + small
        // The undisturbed run: 8 chunks per meta-batch, so that per-chunk results would be 8 a host.
        let counted = 2_000
        let countedArgs =
            ["--data", data, "--set", "maml.iterations=\(counted)"] + small + ["--set", "maml.meta_batch_size=16"]
        let reference = MultiHostTests.dir + "/one-machine", reference16 = MultiHostTests.dir + "/one-machine-16"
        for (run, a) in [(reference, args), (reference16, countedArgs)] {
            let r = try metatrain(["train", "--run-dir", run, "--workers", "2"] + a)
            XCTAssertEqual(r.status, 0, r.stderr)
        }

        let lab = try NetworkLab(hosts: 3)
        defer { lab.tearDown() }
        let (c, h1, h2) = (lab.hosts[0], lab.hosts[1], lab.hosts[2])
        // The hosts are other machines: every socket uses CURVE keys.
        let keys = MultiHostTests.dir + "/keys"
        for name in ["coordinator", "authorized/host1", "authorized/host2"]
        where !FileManager.default.fileExists(atPath: keys + "/\(name).pub") {
            XCTAssertEqual(try metatrain(["keygen", "--out", keys + "/" + name]).status, 0)
        }
        func coordinator(_ run: String, port: Int, _ args: [String]) throws -> GroupProcess {
            try startDetached(
                [
                    "coordinator", "--run-dir", run, "--bind", "tcp://\(c.address):\(port)", "--worker-timeout", "2",
                    "--key", keys + "/coordinator.secret", "--authorized-keys", keys + "/authorized"
                ] + args,
                stderr: run + ".err", prefix: lab.exec(c))
        }
        func worker(_ host: NetworkLab.Host, _ name: String, port: Int) throws -> GroupProcess {
            try startDetached(
                [
                    "worker", "--connect", "tcp://\(c.address):\(port)", "--data", data, "--name", name, "--procs", "2",
                    "--no-shared-memory",
                    "--key", keys + "/authorized/\(name).secret", "--coordinator-key", keys + "/coordinator.pub"
                ],
                stderr: MultiHostTests.dir + "/\(name)-\(port).err", prefix: lab.exec(host))
        }

        // Undisturbed: the same bits as one machine.
        let plain = MultiHostTests.dir + "/hosts"
        let coord = try coordinator(plain, port: 5555, countedArgs)
        defer { coord.killGroup(); coord.wait() }
        try waitFor(60, "the coordinator to listen") { read(plain + "/coordinator.log").contains("listening on") }
        let workers = [try worker(h1, "host1", port: 5555), try worker(h2, "host2", port: 5555)]
        defer { for w in workers { w.killGroup(); w.wait() } }
        XCTAssertEqual(coord.wait(seconds: 300), 0, read(plain + "/coordinator.log") + read(plain + ".err"))
        for w in workers { XCTAssertEqual(w.wait(seconds: 20), 0) }
        let log = read(plain + "/coordinator.log")
        XCTAssertTrue(log.contains("listening on tcp://10.213.0.1:5555"), log)
        XCTAssertTrue(
            log.contains("host agent host1 of 2 processes joined")
                && log.contains("host agent host2 of 2 processes joined"), log)
        XCTAssertEqual(try bytes(plain + "/final.h5"), try bytes(reference16 + "/final.h5"), "two hosts vs one machine")
        // One connection per host and at most two blocks per host and iteration: the coordinator's
        // link carries about 2 weight-sized payloads out (one per host) and at most 4 in (2 x hosts),
        // whatever the number of processes per host (TCP/IP headers and acknowledgements add ~5%).
        let counters = lab.counters(c)
        let V = try DatasetFile.read(data).nItems, E = 8, H = 12
        let payload = Double(4 * (V * E + 3 * H * E + 3 * H * H + 6 * H + V * H + V))
        let (out, into) = (
            Double(counters.tx) / Double(counted) / payload, Double(counters.rx) / Double(counted) / payload
        )
        print(
            String(
                format: "coordinator's link per iteration: %.2f payloads out, %.2f in (payload %.0f bytes)", out, into,
                payload))
        XCTAssertGreaterThan(out, 1.9, "the weights crossed the bridge to both hosts")
        XCTAssertLessThan(out, 2.5, "weights went out once per host and iteration")
        XCTAssertLessThan(into, 4.5, "at most 2 x hosts results per iteration")

        // Host 1's link is cut once the run is under way, and restored once host 2 has its units.
        let cut = MultiHostTests.dir + "/cut"
        let coord2 = try coordinator(cut, port: 5565, args)
        defer { coord2.killGroup(); coord2.wait() }
        try waitFor(60, "the second coordinator to listen") { read(cut + "/coordinator.log").contains("listening on") }
        let workers2 = [try worker(h1, "host1", port: 5565), try worker(h2, "host2", port: 5565)]
        defer { for w in workers2 { w.killGroup(); w.wait() } }
        try waitFor(60, "both hosts to join and 500 iterations") {
            let log = read(cut + "/coordinator.log")
            return log.contains("host agent host1 of 2 processes joined")
                && log.contains("host agent host2 of 2 processes joined")
                && read(cut + "/metrics.jsonl").split(separator: "\n").count >= 500
        }
        try lab.setLink(h1, up: false)
        try waitFor(60, "host 1 to be dropped") { read(cut + "/coordinator.log").contains("worker host1 silent for") }
        let whileCut = read(cut + "/metrics.jsonl").split(separator: "\n").count
        try waitFor(60, "host 2 to go on alone") {
            read(cut + "/metrics.jsonl").split(separator: "\n").count >= whileCut + 100
        }
        try lab.setLink(h1, up: true)
        try waitFor(120, "host 1 to rejoin") {
            read(cut + "/coordinator.log").components(separatedBy: "host agent host1 of 2 processes joined").count >= 3
        }
        XCTAssertEqual(coord2.wait(seconds: 300), 0, read(cut + "/coordinator.log"))
        for w in workers2 { XCTAssertEqual(w.wait(seconds: 20), 0) }
        let cutLog = read(cut + "/coordinator.log")
        XCTAssertTrue(cutLog.contains("finished \(iterations) iterations"), cutLog)
        XCTAssertEqual(
            try bytes(cut + "/final.h5"), try bytes(reference + "/final.h5"), "a cut and restored link changed the bits"
        )
    }
}

import ExperimentConfig
import Foundation
import Storage
import Transport
import Wire
import XCTest

/// A peer that speaks the protocol but lies, against a real coordinator: its
/// results are checked before they count, it is dropped after three bad ones,
/// nothing it sends ends the coordinator, and an honest worker then finishes
/// the run with the weights of a run that never met it.
final class HostilePeerTests: XCTestCase {
    static let dir = freshDir("hostile")
    let args = [
        "--set", "maml.iterations=20", "--set", "model.embedding_dim=8", "--set", "model.hidden_dim=12",
        "--set", "maml.meta_batch_size=8", "--set", "maml.chunk_size=2", "--set", "maml.inner_steps=2",
        "--set", "eval.every=10", "--set", "eval.val_episodes=8", "--set", "checkpoint.every=100"
    ]

    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    func testLyingResultsAreDroppedAndThePeerWithThem() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let whole = HostilePeerTests.dir + "/whole"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + args).status, 0)
        let run = HostilePeerTests.dir + "/run"
        let coord = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--worker-timeout", "600"
            ] + args, stderr: run + ".err")
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let dataset = try DatasetFile.read(data)
        let (V, E, H) = (dataset.nItems, 8, 12)
        let n = V * E + 3 * H * E + 3 * H * H + 6 * H + V * H + V

        // The stranger knows the fingerprint (prepare prints it) and joins as a plain worker.
        let ctx = ZMQContext()
        let peer = try ZMQSocket(ctx, .dealer)
        try peer.connect(endpoint)
        var runId = ""
        func send(_ m: Message) throws { try peer.send([Envelope(runId: runId, message: m).encode()]) }
        func next(_ wanted: (Message) -> Bool) throws -> Envelope {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                guard let frames = try peer.receive(timeoutMs: 100), frames.count == 1 else { continue }
                let e = try Envelope.decode(frames[0])
                if wanted(e.message) { return e }
            }
            throw NSError(domain: "no such message from the coordinator in 30 s", code: 1)
        }
        try send(.hello(Hello(workerName: "liar", datasetFingerprint: dataset.fingerprint)))
        runId = try next {
            if case .welcome = $0 { return true }; return false
        }.runId
        try send(.ready)
        func work() throws -> WorkUnit {
            guard
                case .work(let u) = try next({
                    if case .work = $0 { return true }; return false
                }).message
            else { fatalError() }
            return u
        }
        // Three lies, each about the next unit it is given: NaN, one float, 2^62 tasks.
        var u = try work()
        try send(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: Floats([Float](repeating: .nan, count: n)),
                    gradAlpha: [], lossSum: 1, tasks: u.episodes.count)))
        u = try work()
        try send(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: [1], gradAlpha: [], lossSum: 1, tasks: u.episodes.count
                )))
        u = try work()
        try send(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: Floats([Float](repeating: 0, count: n)),
                    gradAlpha: [], lossSum: 1, tasks: 1 << 62)))
        let deadline = Date().addingTimeInterval(30)
        while !read(run + "/coordinator.log").contains("worker liar sent 3 bad results") && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.02)
        }
        // A result for a unit it holds no longer, after it was dropped: asked to introduce itself, nothing more.
        try send(
            .trainResult(
                TrainResult(unitId: u.id, version: u.version, gradTheta: [1], gradAlpha: [], lossSum: 1, tasks: 1)))

        let honest = try metatrain(["worker", "--connect", endpoint, "--data", data, "--procs", "1"])
        XCTAssertEqual(honest.status, 0, honest.stderr)
        XCTAssertEqual(coord.wait(seconds: 60), 0, read(run + ".err"))
        let log = read(run + "/coordinator.log")
        XCTAssertTrue(
            log.contains("dropped a bad result or message from worker liar (1 of 3 allowed): unit")
                && log.contains(": non-finite values"), log)
        XCTAssertTrue(
            log.contains("(2 of 3 allowed): unit") && log.contains("gradients of 1+0 floats, the model has \(n)+0"), log
        )
        XCTAssertTrue(
            log.contains(
                "worker liar sent 3 bad results or messages (the last: unit \(u.id): it claims \(1 << 62) tasks"), log)
        XCTAssertTrue(log.contains("finished 20 iterations"), log)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: whole + "/final.h5")), "the lies changed the weights")
    }

    /// Finite gradients whose sum overflows are never applied: the coordinator
    /// keeps the last good state and stops with an error naming the iteration.
    func testAnOverflowingSumStopsTheRunWithoutTakingTheStep() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let run = HostilePeerTests.dir + "/overflow"
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + args,
            stderr: run + ".err")
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let dataset = try DatasetFile.read(data)
        let n = dataset.nItems * 8 + 3 * 12 * 8 + 3 * 12 * 12 + 6 * 12 + dataset.nItems * 12 + dataset.nItems
        // Two of them, so that the meta-batch goes out in several blocks whose sum overflows.
        let ctx = ZMQContext()
        let peers = try (0..<2).map { _ in try ZMQSocket(ctx, .dealer) }
        var runIds = ["", ""]
        for (i, peer) in peers.enumerated() {
            try peer.connect(endpoint)
            try peer.send([
                Envelope(
                    runId: "", message: .hello(Hello(workerName: "huge\(i)", datasetFingerprint: dataset.fingerprint))
                ).encode()
            ])
        }
        let deadline = Date().addingTimeInterval(30)
        var answered = 0
        var status: Int32?
        while status == nil && Date() < deadline {
            status = coord.wait(seconds: 0.01)
            for (i, peer) in peers.enumerated() {
                guard let frames = try peer.receive(timeoutMs: 20), frames.count == 1,
                    let e = try? Envelope.decode(frames[0])
                else { continue }
                switch e.message {
                case .welcome:
                    // Both say ready once both are in: the first meta-batch (planned before anyone joined)
                    // is one block; the second goes out in blocks over both.
                    runIds[i] = e.runId
                    if !runIds.contains("") {
                        for (k, p) in peers.enumerated() {
                            try p.send([Envelope(runId: runIds[k], message: .ready).encode()])
                        }
                    }
                case .work(let u):
                    answered += 1
                    try peer.send([
                        Envelope(
                            runId: runIds[i],
                            message: .trainResult(
                                TrainResult(
                                    unitId: u.id, version: u.version,
                                    gradTheta: Floats([Float](repeating: 3e38, count: n)), gradAlpha: [],
                                    lossSum: 1, tasks: u.episodes.count))
                        ).encode()
                    ])
                default: break
                }
            }
        }
        XCTAssertEqual(status, 1)
        XCTAssertEqual(answered, 1 + 4, "one block, then at most two per connection, and no step taken")
        let err = read(run + ".err"), log = read(run + "/coordinator.log")
        XCTAssertTrue(
            err.contains("error: iteration 2: the summed meta-gradient is not finite (units of episodes ["), err)
        XCTAssertEqual(err.components(separatedBy: "error: ").count, 2, "said once: \(err)")
        XCTAssertTrue(log.contains("kept the last good state: checkpoints/iter-000001.h5"), log)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/checkpoints/iter-000001.h5"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: run + "/final.h5"))
    }

    /// Junk cannot grow the coordinator or its log: a frame over the size limit
    /// ends its connection before it is buffered, 10,000 junk frames make a
    /// few log lines, a peer that takes another's identity takes it over, and
    /// the run still ends with the weights of a run that never met them.
    func testJunkFloodsAndStolenIdentitiesLeaveTheRunAlone() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let whole = HostilePeerTests.dir + "/whole-junk"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + args).status, 0)
        let run = HostilePeerTests.dir + "/junk"
        let coord = try startDetached(
            [
                "coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0",
                "--worker-timeout", "600"
            ] + args, stderr: run + ".err")
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        func rss() -> Int {
            let status = read("/proc/\(coord.pid)/status")
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0 // kB
        }
        let before = rss()
        let ctx = ZMQContext()
        // 64 MiB in one frame: over the limit (the model's payload and 1 MiB), so never buffered whole.
        let big = try ZMQSocket(ctx, .dealer)
        let bigEvents = try ZMQMonitor(ctx, watching: big)
        try big.connect(endpoint)
        try big.send([[UInt8](repeating: 7, count: 64 << 20)])
        // 10,000 tiny junk frames from one peer.
        let junk = try ZMQSocket(ctx, .dealer)
        try junk.connect(endpoint)
        for i in 0..<10_000 { try junk.send([[UInt8(i & 0xff), 1, 2]]) }
        // Two peers with one identity: the second takes it over. Each is answered (a stranger's
        // heartbeat gets "unknown worker") before the next one connects.
        for k in 0..<2 {
            let twin = try ZMQSocket(ctx, .dealer)
            twin.setRoutingId(Array("twin-identity".utf8))
            try twin.connect(endpoint)
            try twin.send([Envelope(runId: "", message: .heartbeat).encode()])
            XCTAssertNotNil(try twin.receive(timeoutMs: 30_000), "twin \(k) was not answered")
        }
        // The coordinator ended the big frame's connection, and read the junk.
        var events: [ConnectionEvent] = []
        XCTAssertTrue(
            eventually(within: 30) {
                events += (try? bigEvents.take()) ?? []
                return events.contains {
                    if case .disconnected = $0 { return true }; return false
                }
            }, "the coordinator kept the connection of a frame over its limit: \(events)")
        XCTAssertTrue(eventually(within: 30) { read(run + "/coordinator.log").contains("dropped malformed message") })
        XCTAssertNil(coord.wait(seconds: 0), "the coordinator is still running")
        XCTAssertLessThan(rss() - before, 32 << 10, "the big frame was not buffered (RSS \(before) kB -> \(rss()) kB)")
        let honest = try metatrain(["worker", "--connect", endpoint, "--data", data, "--procs", "1"])
        XCTAssertEqual(honest.status, 0, honest.stderr)
        XCTAssertEqual(coord.wait(seconds: 60), 0, read(run + ".err"))
        let log = read(run + "/coordinator.log")
        XCTAssertLessThanOrEqual(log.components(separatedBy: "dropped malformed message").count - 1, 5, log)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: whole + "/final.h5")))
    }

    /// 10,000 frames of fuzz from a peer that joined (valid frames mutated:
    /// flipped, cut, lengthened, retyped, or random) during a real run: the
    /// coordinator survives every one, logs a bounded number of lines, and the
    /// run ends with the weights of an undisturbed one.
    func testTenThousandFuzzedFramesFromAJoinedPeer() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let runArgs = args.map { $0 == "maml.iterations=20" ? "maml.iterations=200" : $0 }
        let whole = HostilePeerTests.dir + "/whole-fuzz"
        XCTAssertEqual(
            try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + runArgs).status, 0)
        let run = HostilePeerTests.dir + "/fuzz"
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0"] + runArgs,
            stderr: run + ".err")
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let dataset = try DatasetFile.read(data)
        let honest = try startDetached([
            "worker", "--connect", endpoint, "--data", data, "--procs", "1", "--name", "honest"
        ])
        defer { honest.killGroup(); honest.wait() }
        let ctx = ZMQContext()
        let peer = try ZMQSocket(ctx, .dealer)
        peer.setRoutingId(Array("fuzzer".utf8))
        try peer.connect(endpoint)
        let hello = Envelope(
            runId: "", message: .hello(Hello(workerName: "fuzzer", datasetFingerprint: dataset.fingerprint))
        ).encode()
        var runId = ""
        try peer.send([hello])
        let deadline = Date().addingTimeInterval(20)
        while runId.isEmpty && Date() < deadline {
            if let f = try peer.receive(timeoutMs: 100), let e = try? Envelope.decode(f[0]), case .welcome = e.message {
                runId = e.runId
            }
        }
        XCTAssertFalse(runId.isEmpty, "the fuzzer joined")
        // Seeds of valid frames of every kind a worker sends.
        let seeds: [[UInt8]] = [
            hello,
            Envelope(runId: runId, message: .ready).encode(),
            Envelope(runId: runId, message: .heartbeat).encode(),
            Envelope(runId: runId, message: .fetchWeights).encode(),
            Envelope(runId: runId, message: .goodbye(reason: "fuzz")).encode(),
            Envelope(
                runId: runId,
                message: .trainResult(
                    TrainResult(
                        unitId: 3, version: 1, gradTheta: [1, 2, 3], gradAlpha: [],
                        lossSum: 1, tasks: 2))
            ).encode(),
            Envelope(
                runId: runId,
                message: .trainResult(
                    TrainResult(
                        unitId: 4, version: 1, gradTheta: [], gradAlpha: [], lossSum: 1,
                        tasks: 2, ref: PayloadRef(offset: 4096, thetaCount: 9, alphaCount: 0)))
            ).encode(),
            Envelope(
                runId: runId,
                message: .evalResult(
                    EvalResult(unitId: 5, version: 10, sums: [1, 1, 1, 1, 1, 1], queries: [3], losses: [2]))
            ).encode()
        ]
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407; return Int(truncatingIfNeeded: state >> 33)
        }
        for i in 0..<10_000 {
            var f = seeds[next() % seeds.count]
            switch next() % 6 {
            case 0: for _ in 0..<(1 + next() % 4) { f[next() % f.count] ^= UInt8(1 << (next() % 8)) }
            case 1: f = Array(f.prefix(next() % f.count))
            case 2: f += (0..<(next() % 64)).map { _ in UInt8(next() & 0xff) }
            case 3: if f.count > 6 { f[6] = UInt8(next() % 16) } // another message type
            case 4: f = (0..<(next() % 200)).map { _ in UInt8(next() & 0xff) }
            default: // counts and ids
                if f.count > 20 { for k in 12..<min(f.count, 28) { f[k] = UInt8(next() & 0xff) } }
            }
            try peer.send([f])
            if i % 1000 == 999 { try peer.send([hello]) } // joined again if it was dropped
        }
        XCTAssertEqual(coord.wait(seconds: 120), 0, read(run + ".err"))
        let log = read(run + "/coordinator.log")
        XCTAssertLessThan(log.split(separator: "\n").count, 400, "a bounded log, not a line per frame")
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: whole + "/final.h5")), "the fuzz changed the weights")
    }

    /// Spot checks (`--verify 1`): a worker whose results differ from the others'
    /// in one bit (as a host with other kernels or bad memory would send) is
    /// caught by the bit-for-bit comparison, outvoted by a third worker and
    /// dropped, each time it comes back; metrics.jsonl counts the checks and
    /// mismatches, and the run ends with the weights of a run that never met it.
    func testSpotChecksCatchAWorkerWhoseBitsDiffer() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let args = self.args.map { $0 == "maml.iterations=20" ? "maml.iterations=300" : $0 }
        let whole = HostilePeerTests.dir + "/verify-whole"
        XCTAssertEqual(try metatrain(["train", "--data", data, "--run-dir", whole, "--workers", "1"] + args).status, 0)
        let run = HostilePeerTests.dir + "/verify"
        let coord = try startDetached(
            ["coordinator", "--data", data, "--run-dir", run, "--bind", "tcp://127.0.0.1:0", "--verify", "1"] + args,
            stderr: run + ".err")
        defer { coord.killGroup(); coord.wait() }
        let endpoint = try waitForEndpoint(run + "/coordinator.log")
        let honest = try ["h1", "h2"].map { name in
            try startDetached(["worker", "--connect", endpoint, "--data", data, "--name", name, "--procs", "1"])
        }
        defer { for w in honest { w.killGroup(); w.wait() } }
        let deadline = Date().addingTimeInterval(30)
        while !(read(run + "/coordinator.log").contains("worker h1 joined")
            && read(run + "/coordinator.log").contains("worker h2 joined")),
            Date() < deadline
        { Thread.sleep(forTimeInterval: 0.02) }
        let liar = try startDetached(
            ["worker", "--connect", endpoint, "--data", data, "--name", "liar", "--procs", "1"],
            environment: ["METATRAIN_TEST_FLIP_BIT": "1"])
        defer { liar.killGroup(); liar.wait() }
        XCTAssertEqual(coord.wait(seconds: 120), 0, read(run + ".err"))
        let log = read(run + "/coordinator.log")
        XCTAssertTrue(log.contains("worker liar joined"), log)
        XCTAssertTrue(
            log.range(
                of:
                    "verify: unit [0-9]+ differs between worker (h1|h2|liar) and worker (h1|h2|liar); computing it a third time",
                options: .regularExpression) != nil, log)
        XCTAssertTrue(log.contains("worker liar disagrees with the majority on unit"), log)
        XCTAssertFalse(log.contains("worker h1 disagrees") || log.contains("worker h2 disagrees"), log)
        let lines = read(run + "/metrics.jsonl").split(separator: "\n").map {
            try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        let checked = lines.map { $0["verified"] as? Int ?? -1 },
            mismatched = lines.map { $0["mismatches"] as? Int ?? -1 }
        XCTAssertFalse(checked.contains(-1) || mismatched.contains(-1), "every line counts checks and mismatches")
        XCTAssertEqual(checked.filter { $0 < 1 }.count, 0, "every iteration's units were checked")
        XCTAssertGreaterThanOrEqual(mismatched.reduce(0, +), 1)
        XCTAssertEqual(
            try Data(contentsOf: URL(fileURLWithPath: run + "/final.h5")),
            try Data(contentsOf: URL(fileURLWithPath: whole + "/final.h5")), "a lie counted")
    }

    /// A fake coordinator (our own ROUTER and PUB) welcomes a real worker, then
    /// sends an 8 MiB frame and a unit naming episode 10^9: the worker, which
    /// limits frames to its model's weights plus 1 MiB once welcomed, never
    /// buffers the big one (the connection that carried it ends; the worker
    /// opens it again and joins again), refuses the unit with a log line, keeps
    /// going, and exits cleanly on shutdown.
    func testAFakeCoordinatorCannotFloodOrCrashAWorker() throws {
        let data = try syntheticDataset(in: HostilePeerTests.dir)
        let ctx = ZMQContext()
        var router: ZMQSocket!, pub: ZMQSocket!, endpoint = ""
        for _ in 0..<50 where router == nil {
            let r = try ZMQSocket(ctx, .router)
            r.setRouterHandover(true) // as the real coordinator: the worker opens its sockets again once welcomed
            try r.bind("tcp://127.0.0.1:*")
            let p = try ZMQSocket(ctx, .pub)
            let port = Int(r.lastEndpoint.split(separator: ":").last!)!
            if (try? p.bind("tcp://127.0.0.1:\(port + 1)")) != nil { router = r; pub = p; endpoint = r.lastEndpoint }
        }
        XCTAssertNotNil(pub)
        let err = HostilePeerTests.dir + "/fake-coordinator-worker.err"
        let worker = try startDetached(
            ["worker", "--connect", endpoint, "--data", data, "--name", "w", "--procs", "1", "--verbose"], stderr: err)
        defer { worker.killGroup(); worker.wait() }
        func next(_ wanted: (Message) -> Bool) throws -> [UInt8] {
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                guard let frames = try router.receive(timeoutMs: 100), frames.count == 2 else { continue }
                if wanted(try Envelope.decode(frames[1]).message) { return frames[0] }
            }
            throw NSError(domain: "the worker did not say that in 30 s: \(read(err))", code: 1)
        }
        let identity = try next {
            if case .hello = $0 { return true }; return false
        }
        func send(_ m: Message) throws { try router.send([identity, Envelope(runId: "fake", message: m).encode()]) }
        let config = try Config.load(path: nil, overrides: ["model.embedding_dim=8", "model.hidden_dim=12"])
        try send(.welcome(Welcome(configJSON: config.json, version: -1)))
        _ = try next { $0 == .ready }
        func rss() -> Int {
            let line = read("/proc/\(worker.pid)/status").split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0 // kB
        }
        let before = rss()
        // 8 MiB: under the limit before the welcome (16 MiB), over the small model's weights + 1 MiB.
        try router.send([identity, [UInt8](repeating: 7, count: 8 << 20)])
        try pub.send([[UInt8](repeating: 7, count: 8 << 20)])
        // libzmq ends the connection that carried it (and never reconnects it by itself): the worker
        // hears nothing for its liveness (3 s), opens its sockets afresh and says hello again.
        _ = try next {
            if case .hello = $0 { return true }; return false
        }
        try send(.welcome(Welcome(configJSON: config.json, version: -1)))
        _ = try next { $0 == .ready }
        try send(.work(WorkUnit(id: 1, kind: .train, version: -1, episodes: [1_000_000_000])))
        _ = try next { $0 == .heartbeat }
        let deadline = Date().addingTimeInterval(10)
        while !read(err).contains("refused unit 1"), Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        XCTAssertTrue(
            read(err).contains("refused unit 1 from the coordinator: episode 1000000000 is not one of the dataset's"),
            read(err))
        XCTAssertNil(worker.wait(seconds: 0), "the worker is still running")
        XCTAssertLessThan(rss() - before, 16 << 10, "RSS \(before) kB -> \(rss()) kB")
        XCTAssertFalse(read(err).contains("malformed"), "an 8 MiB frame reached the decoder: \(read(err))")
        XCTAssertTrue(read(err).contains("opening the connection to \(endpoint) again"), read(err))
        try send(.shutdown(reason: "done"))
        XCTAssertEqual(worker.wait(seconds: 10), 0, read(err))
    }
}

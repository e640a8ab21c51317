import Core
import Datasets
import ExperimentConfig
import Foundation
import GRU4Rec
import NetworkLab
import Runtime
import Storage

/// `bench --hosts`: the coordinator and two "hosts" as network namespaces on a
/// bridge, their links limited with tc's token bucket (tbf), against the same
/// data on one machine in the same run. Figures, not tests.
extension BenchCommand {
    struct HostRun {
        /// Seconds per meta-iteration (best block).
        var per: Double
        /// Bytes per iteration into and out of the coordinator's link.
        var inBytes: Double, outBytes: Double
    }

    func benchHosts(dir: String, data: String, dataset: Dataset) throws {
        if let why = NetworkLab.unavailableReason() { throw MetatrainError("bench --hosts: \(why)") }
        let payload = 4 * ParameterLayout(ModelDims(V: dataset.nItems, E: 64, H: 128)).count
        print(
            String(
                format:
                    "across hosts: FOMAML at the default sizes, weights and gradients %.2f MB each; the coordinator and "
                    + "each host a network namespace, links limited with tc tbf in both directions, payloads through the socket",
                Double(payload) / 1e6))
        // One machine, in this same run: what `train --workers 2` does (a host agent of two processes).
        var one = Double.infinity
        for round in 0..<2 {
            one = min(
                one,
                try metaIterations(
                    data: data, dataset: dataset, workers: 2, iterations: metaIterations,
                    dir: dir, tag: "hosts-\(round)"
                ).per)
        }
        print(String(format: "  one machine (train --workers 2): %.3f s per meta-iteration", one))

        let lab = try NetworkLab(hosts: 3, tag: "b")
        defer { lab.tearDown() }
        var port = 15_555
        func run(mbit: Int, procs: Int, batch: Int) throws -> HostRun {
            for h in lab.hosts { try lab.limit(h, mbit: mbit) }
            port += 10
            let iterations = max(16, metaIterations * 32 / batch)
            return try hostRun(
                lab: lab, data: data, port: port, procs: procs, batch: batch, iterations: iterations,
                dir: dir + "/hosts-\(mbit)-\(procs)-\(batch)")
        }
        func mb(_ r: HostRun) -> String {
            String(
                format: "coordinator's link per iteration: %.2f payloads in, %.2f out", r.inBytes / Double(payload),
                r.outBytes / Double(payload))
        }
        for mbit in [1_000, 10_000] {
            var best: HostRun?
            for _ in 0..<2 {
                let r = try run(mbit: mbit, procs: 1, batch: 32)
                if r.per < best?.per ?? .infinity { best = r }
            }
            let r = best!
            print(
                String(
                    format:
                        "  2 hosts x 1 process, %d Gbit/s: %.3f s per meta-iteration = %.2fx one machine (target <= %@); %@",
                    mbit / 1000, r.per, r.per / one, mbit == 1_000 ? "1.5x" : "1.15x", mb(r)))
        }
        for procs in [1, 2] {
            for batch in [32, 128] {
                let r = try run(mbit: 10_000, procs: procs, batch: batch)
                print(
                    String(
                        format: "  2 hosts x %d process%@, meta_batch_size %d: %@ (target <= 4 = 2 x hosts each way)",
                        procs, procs == 1 ? "" : "es", batch, mb(r)))
            }
        }
        for batch in [32, 128, 256] {
            let r = try run(mbit: 10_000, procs: 1, batch: batch)
            print(
                String(
                    format:
                        "  2 hosts x 1 process, 10 Gbit/s, meta_batch_size %d: %.0f tasks/s (%.3f s per meta-iteration)",
                    batch, Double(batch) / r.per, r.per))
        }
    }

    /// A coordinator in the lab's first host and a worker (`--procs procs`) in each of the
    /// other two, over TCP; the time per iteration from the coordinator's trace and the
    /// coordinator link's byte counters over the run.
    func hostRun(lab: NetworkLab, data: String, port: Int, procs: Int, batch: Int, iterations: Int, dir: String) throws
        -> HostRun
    {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let c = lab.hosts[0]
        func start(_ host: NetworkLab.Host, _ args: [String], log: String) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: lab.exec(host)[0])
            p.arguments = Array(lab.exec(host).dropFirst()) + [exe] + args
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            p.standardOutput = FileHandle(forWritingAtPath: log); p.standardError = p.standardOutput
            try p.run()
            return p
        }
        let before = lab.counters(c)
        let coordinator = try start(
            c,
            [
                "coordinator", "--data", data, "--run-dir", dir + "/run", "--bind", "tcp://\(c.address):\(port)",
                "--set", "maml.iterations=\(iterations)", "--set", "maml.meta_batch_size=\(batch)",
                "--set", "eval.every=1000000", "--set", "checkpoint.every=1000000",
                "--trace", dir + "/coordinator.jsonl", "--insecure"
            ], log: dir + "/coordinator.out")
        let workers = try lab.hosts.dropFirst().enumerated().map { i, h in
            try start(
                h,
                [
                    "worker", "--connect", "tcp://\(c.address):\(port)", "--data", data, "--procs", "\(procs)",
                    "--no-shared-memory", "--name", "host\(i + 1)"
                ], log: dir + "/host\(i + 1).out")
        }
        coordinator.waitUntilExit()
        for w in workers { w.waitUntilExit() }
        let after = lab.counters(c)
        guard coordinator.terminationStatus == 0 else {
            throw MetatrainError("bench --hosts: the coordinator failed (\(dir)/coordinator.out)")
        }
        var published: [Int: Double] = [:]
        for r in try Trace.read(dir + "/coordinator.jsonl") where r.event == .published { published[r.n] = r.t }
        return HostRun(
            per: bestBlock(published, iterations: iterations),
            inBytes: Double(after.rx - before.rx) / Double(iterations),
            outBytes: Double(after.tx - before.tx) / Double(iterations))
    }

    /// Seconds per iteration: the first iterations skipped (process start, first
    /// fetch), then the best of 5 blocks of consecutive iterations.
    func bestBlock(_ published: [Int: Double], iterations: Int) -> Double {
        let warm = min(5, iterations / 4) + 1
        let length = max(1, (iterations - warm) / 5)
        var best = Double.infinity, start = warm
        while start + length <= iterations {
            if let a = published[start], let b = published[start + length] {
                best = min(best, (b - a) / Double(length))
            }
            start += length
        }
        return best
    }
}

import ArgumentParser
import Configuration
import Core
import Data
import Foundation
import GRU4Rec
import Kernels

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measures model and pipeline throughput on this machine (build with -c release).",
        discussion: """
        Prints the single-thread sgemm rate on large matrices, the model's
        forward+backward GFLOP/s on a batch of 32 prefixes (lengths 1..50) and on
        a support set of 5 (lengths 1..5) as fractions of it, and prepare's
        events per second. Figures, not tests.
        Example:
          swift build -c release && .build/release/metatrain bench
        """)

    @Option(help: "Seconds to spend on each measurement (best of 5 blocks).") var seconds = 3.0
    @Option(help: "Synthetic users for the prepare measurement.") var users = 3000

    /// Seconds per call: the best of 5 timed blocks of `seconds`/5 each, so a
    /// neighbour stealing the CPU for a moment does not count against us.
    func timeIt(_ body: () -> Void) -> Double {
        body()  // warm up
        var best = Double.infinity
        for _ in 0..<5 {
            var n = 0
            let start = Date()
            repeat { body(); n += 1 } while Date().timeIntervalSince(start) < seconds / 5
            best = min(best, Date().timeIntervalSince(start) / Double(n))
        }
        return best
    }

    func run() throws {
        BLAS.useSingleThread()
        #if DEBUG
        print("warning: debug build; measure with `swift build -c release`")
        #endif
        // (a) reference: large single-thread sgemm.
        let n = 1024
        let a = FloatBuffer(count: n * n), b = FloatBuffer(count: n * n), c = FloatBuffer(count: n * n)
        for i in 0..<(n * n) { a[i] = Float(i % 7) * 0.1; b[i] = Float(i % 5) * 0.1 }
        let tg = timeIt { BLAS.sgemm(false, false, m: n, n: n, k: n, a: a.ptr, lda: n, b: b.ptr, ldb: n, beta: 0, c: c.ptr, ldc: n) }
        let peak = 2 * Double(n * n * n) / tg / 1e9
        print(String(format: "sgemm %dx%dx%d, 1 thread: %.1f GFLOP/s", n, n, n, peak))

        // (b) model forward+backward at the default sizes.
        let dims = ModelDims(V: 1519, E: 64, H: 128)
        let model = GRU4Rec(dims: dims)
        var rng = SeededGenerator(seed: 1)
        let params = model.initialParameters(rng: &rng), grads = FloatBuffer(count: model.parameterCount)
        func batch(_ lengths: [Int]) -> PackedBatch {
            var g = SeededGenerator(seed: 2)
            let prefixes = lengths.map { l in (0..<l).map { _ in Int32(1 + g.below(dims.V - 1)) } }
            return PackedBatch(prefixes: prefixes, labels: prefixes.map { _ in Int32(1 + g.below(dims.V - 1)) })
        }
        for (title, lengths, target) in [("batch of 32, lengths 1..50", (0..<32).map { 1 + $0 * 49 / 31 }, 0.40),
                                         ("support set of 5, lengths 1..5", [1, 2, 3, 4, 5], 0.20)] {
            let bt = batch(lengths)
            let t = timeIt { grads.zero(); model.lossAndGradient(params, grads, bt) }
            let gf = model.flops(bt.layout) / t / 1e9
            print(String(format: "forward+backward, %@: %.3f ms, %.1f GFLOP/s = %.0f%% of sgemm (target %.0f%%)",
                         title, t * 1000, gf, 100 * gf / peak, 100 * target))
        }

        // (c) prepare throughput.
        let dir = NSTemporaryDirectory() + "metatrain-bench-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var o = SynthOptions(); o.users = users
        let s = try Synth.write(to: dir + "/events.csv", options: o)
        let start = Date()
        _ = try Prepare.run(csvPath: dir + "/events.csv", config: Config.defaults())
        let secs = Date().timeIntervalSince(start)
        print(String(format: "prepare: %d events in %.2fs = %.0f events/s", s.events, secs, Double(s.events) / secs))
    }
}

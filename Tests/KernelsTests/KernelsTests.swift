import Foundation
import XCTest

@testable import Kernels

final class BLASTests: XCTestCase {
    /// The vectorised sweeps give the scalar loops' bits, at every length (tails included).
    func testVectorSweepsMatchTheScalarLoops() {
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 7, 8, 9, 63, 64, 1001] {
            let x = (0..<n).map { _ in Float.random(in: -3...3, using: &rng) }
            let y = (0..<n).map { _ in Float.random(in: -3...3, using: &rng) }
            let a = Float.random(in: -0.1...0.1, using: &rng)
            var scalarMax: Float = 0
            for v in x { scalarMax = max(scalarMax, abs(v)) }
            XCTAssertEqual(maxAbs(x, count: n).bitPattern, scalarMax.bitPattern, "maxAbs, n \(n)")
            var dst = [Float](repeating: 0, count: n)
            addScaled(&dst, x, a, y, count: n)
            XCTAssertEqual(dst.map(\.bitPattern), zip(x, y).map { ($0 + a * $1).bitPattern }, "addScaled, n \(n)")
            var fused = [Float](repeating: 0, count: n)
            let m1 = subtractScaledMaxAbs(&fused, x, a, y, count: n)
            let expected = zip(x, y).map { $0 - a * $1 }
            XCTAssertEqual(fused.map(\.bitPattern), expected.map(\.bitPattern), "subtractScaledMaxAbs, n \(n)")
            XCTAssertEqual(m1.bitPattern, expected.reduce(Float(0)) { max($0, abs($1)) }.bitPattern)
            var yz = y
            let m3 = subtractScaledMaxAbsClearing(&fused, x, a, &yz, count: n)
            XCTAssertEqual(fused.map(\.bitPattern), expected.map(\.bitPattern), "subtractScaledMaxAbsClearing, n \(n)")
            XCTAssertEqual(m3.bitPattern, m1.bitPattern)
            XCTAssertEqual(yz.map(\.bitPattern), [UInt32](repeating: 0, count: n))
            let m2 = scaleMaxAbs(&fused, a, y, count: n)
            XCTAssertEqual(fused.map(\.bitPattern), y.map { (a * $0).bitPattern }, "scaleMaxAbs, n \(n)")
            XCTAssertEqual(m2.bitPattern, y.reduce(Float(0)) { max($0, abs(a * $1)) }.bitPattern)
            // v −= (x − y)·a: the bits of d = (x − y)·a, then v −= d (v holds signed zeros and NaN
            // too); x and y come back zeroed.
            let v = (0..<n).map { i in i % 8 < 4 ? [Float(0), -0, .nan, 1e-30][i % 4] : x[i] }
            var (w, xc, yc) = (v, x, y)
            subtractScaledDifferenceClearing(&w, &xc, &yc, a, count: n)
            XCTAssertEqual(
                w.map(\.bitPattern), (0..<n).map { i in v[i] - (x[i] - y[i]) * a }.map(\.bitPattern),
                "subtractScaledDifferenceClearing, n \(n)")
            XCTAssertEqual((xc + yc).map(\.bitPattern), [UInt32](repeating: 0, count: 2 * n))
            var (p, m) = ([Float](repeating: 1, count: n), [Float](repeating: 1, count: n))
            addScaledPair(&p, &m, x, a, y, count: n)
            XCTAssertEqual(p.map(\.bitPattern), zip(x, y).map { ($0 + a * $1).bitPattern }, "addScaledPair +, n \(n)")
            XCTAssertEqual(m.map(\.bitPattern), zip(x, y).map { ($0 + -a * $1).bitPattern }, "addScaledPair −, n \(n)")
        }
    }

    /// A fallback pick on a CPU with wider vectors names the family to set; a good pick, or a
    /// CPU with nothing better, names none.
    func testAFallbackKernelFamilyNamesTheCPUsOwn() {
        let sapphire: Set<String> = [
            "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"
        ]
        XCTAssertEqual(BLAS.fasterCore(than: "Prescott", flags: sapphire), "SkylakeX")
        XCTAssertEqual(BLAS.fasterCore(than: "Prescott", flags: ["sse4_2", "avx", "avx2", "fma"]), "Haswell")
        XCTAssertEqual(BLAS.fasterCore(than: "Core2", flags: ["avx"]), "Sandybridge")
        XCTAssertNil(BLAS.fasterCore(than: "Prescott", flags: ["sse3", "ssse3"]))
        XCTAssertNil(BLAS.fasterCore(than: "SkylakeX", flags: sapphire))
        XCTAssertNil(BLAS.fasterCore(than: "Haswell", flags: sapphire))
        XCTAssertNil(BLAS.fasterCore(than: "Zen", flags: ["avx", "avx2", "fma"]))
    }

    /// Unless OPENBLAS_CORETYPE pins a family, this process runs the CPU's own: OpenBLAS's pick,
    /// or the faster family the CPU's flags name when that pick was a generic fallback.
    func testTheProcessRunsTheCPUsOwnKernels() {
        let k = BLAS.kernels
        XCTAssertEqual(BLAS.coreName, k.runs)
        XCTAssertFalse(BLAS.cpuFlags().isEmpty, "no flags in /proc/cpuinfo")
        if k.pinned {
            XCTAssertEqual(k.runs, k.picked)
        } else {
            XCTAssertEqual(k.runs, BLAS.fasterCore(than: k.picked, flags: BLAS.cpuFlags()) ?? k.picked)
            XCTAssertNil(BLAS.fasterCore(than: k.runs, flags: BLAS.cpuFlags()))
        }
    }

    func testSgemmTransposes() {
        // A [2,3], B [3,2]
        let a: [Float] = [1, 2, 3, 4, 5, 6], b: [Float] = [7, 8, 9, 10, 11, 12]
        var c = [Float](repeating: 1, count: 4)
        BLAS.sgemm(false, false, m: 2, n: 2, k: 3, a: a, lda: 3, b: b, ldb: 2, beta: 1, c: &c, ldc: 2)
        XCTAssertEqual(c, [59, 65, 140, 155])
        // Aᵀ·A where A is [2,3] -> [3,3]
        var d = [Float](repeating: 0, count: 9)
        BLAS.sgemm(true, false, m: 3, n: 3, k: 2, a: a, lda: 3, b: a, ldb: 3, beta: 0, c: &d, ldc: 3)
        XCTAssertEqual(d, [17, 22, 27, 22, 29, 36, 27, 36, 45])
    }
}

final class OptimizerTests: XCTestCase {
    /// Reference values from torch.optim.Adam(lr=0.1) on p = [1, -2], grads
    /// g1 = [0.5, -1], g2 = [0.1, 0.3], computed by hand from PyTorch's update rule.
    func testAdamMatchesPyTorchRule() {
        let p = FloatBuffer([1, -2]), g = FloatBuffer([0.5, -1])
        let adam = Adam(count: 2)
        adam.update(p, g, lr: 0.1)
        // Step 1 of Adam moves every coordinate by lr·sign(g) (up to eps).
        XCTAssertEqual(p[0], 0.9, accuracy: 1e-6)
        XCTAssertEqual(p[1], -1.9, accuracy: 1e-6)
        g[0] = 0.1; g[1] = 0.3
        adam.update(p, g, lr: 0.1)
        func expected(_ g1: Double, _ g2: Double) -> Double {
            let m = 0.9 * 0.1 * g1 + 0.1 * g2, v = 0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2
            return 0.1 / (1 - 0.81) * m / (v.squareRoot() / (1 - 0.998001).squareRoot() + 1e-8)
        }
        XCTAssertEqual(Double(p[0]), 0.9 - expected(0.5, 0.1), accuracy: 1e-6)
        XCTAssertEqual(Double(p[1]), -1.9 - expected(-1, 0.3), accuracy: 1e-6)
    }

    func testAdamRangesLeaveOthersUntouched() {
        let p = FloatBuffer([1, 1, 1]), g = FloatBuffer([1, 1, 1])
        let adam = Adam(count: 3)
        adam.update(p, g, lr: 0.5, ranges: [1..<2])
        XCTAssertEqual(p.array, [1, 0.5, 1])
        XCTAssertEqual(adam.m[0], 0); XCTAssertEqual(adam.m[2], 0)
        XCTAssertEqual(adam.m[1], 0.1, accuracy: 1e-6)
    }

    /// The 8-lane Adam gives the scalar rule's bits on every element, ranges with
    /// tails of every length included.
    func testVectorAdamHasTheScalarRulesBits() {
        var rng = SystemRandomNumberGenerator()
        let n = 203
        let p = FloatBuffer((0..<n).map { _ in Float.random(in: -2...2, using: &rng) })
        let ref = p.array
        var m = [Float](repeating: 0, count: n), v = m, q = ref
        let adam = Adam(count: n)
        let p2 = p.copy(), adam2 = Adam(count: n) // the same steps on two threads
        let ranges = [0..<1, 3..<20, 21..<150, 157..<203]
        for step in 1...3 {
            let g = FloatBuffer((0..<n).map { _ in Float.random(in: -1...1, using: &rng) })
            adam.update(p, g, gradScale: 0.37, lr: 0.01, ranges: ranges)
            adam2.update(p2, g, gradScale: 0.37, lr: 0.01, ranges: ranges, threads: 2)
            let bc1 = 1 - powf(0.9, Float(step)), bc2 = sqrtf(1 - powf(0.999, Float(step))),
                stepSize: Float = 0.01 / bc1
            for r in ranges {
                for i in r {
                    let gi = g[i] * 0.37
                    m[i] = 0.9 * m[i] + (1 - 0.9) * gi
                    v[i] = 0.999 * v[i] + (1 - 0.999) * gi * gi
                    q[i] -= stepSize * m[i] / (sqrtf(v[i]) / bc2 + 1e-8)
                }
            }
        }
        XCTAssertEqual(p.array.map(\.bitPattern), q.map(\.bitPattern))
        XCTAssertEqual(adam.m.array.map(\.bitPattern), m.map(\.bitPattern))
        XCTAssertEqual(adam.v.array.map(\.bitPattern), v.map(\.bitPattern))
        XCTAssertEqual(p2.array.map(\.bitPattern), q.map(\.bitPattern))
        XCTAssertEqual(adam2.m.array.map(\.bitPattern), m.map(\.bitPattern))
        // The two threads' shares cover the ranges exactly, in order.
        let parts = split(ranges, into: 2)
        XCTAssertEqual(parts.count, 2)
        XCTAssertEqual(parts.flatMap { $0 }.flatMap { Array($0) }, ranges.flatMap { Array($0) })
    }

    func testClipGradNorm() {
        let g = FloatBuffer([3, 4])
        XCTAssertEqual(clipGradNorm(g, maxNorm: 10), 5)
        XCTAssertEqual(g.array, [3, 4])
        XCTAssertEqual(clipGradNorm(g, maxNorm: 1), 5)
        XCTAssertEqual(g[0], 0.6, accuracy: 1e-5)
        XCTAssertEqual(g[1], 0.8, accuracy: 1e-5)
    }
}

final class PackedLayoutTests: XCTestCase {
    func testLayout() {
        let l = PackedLayout(sortedLengths: [3, 2, 2, 1])
        XCTAssertEqual(l.batchSizes, [4, 3, 1])
        XCTAssertEqual(l.offsets, [0, 4, 7, 8])
        XCTAssertEqual(l.N, 8)
        XCTAssertEqual((0..<4).map(l.lastRow), [7, 5, 6, 3])
        XCTAssertEqual(l.readoutRow, [7, 5, 6, 3])
        // Two readouts of chain 0 (after 1 and 3 steps) and one of chain 1 (after 2).
        var m = PackedLayout()
        m.reset(sortedLengths: [3, 2], readouts: [(0, 3), (1, 2), (0, 1)])
        XCTAssertEqual(m.readoutRow, [4, 3, 0])
        XCTAssertEqual(m.readoutStepStart, [0, 1, 2, 3])
        XCTAssertEqual(m.readoutByStep, [2, 1, 0])
    }
}

final class FastMathTests: XCTestCase {
    func testAgainstLibm() {
        var worstExp: Double = 0, worstSig: Double = 0, worstTanh: Double = 0
        var x: Float = -90
        while x <= 90 {
            let e = Double(fastExp(x)), r = Foundation.exp(Double(x))
            if x > -80 && x < 88 { worstExp = max(worstExp, abs(e - r) / r) }
            worstSig = max(worstSig, abs(Double(fastSigmoid(x)) - 1 / (1 + Foundation.exp(-Double(x)))))
            worstTanh = max(worstTanh, abs(Double(fastTanh(x)) - Foundation.tanh(Double(x))))
            x += 0.0137
        }
        XCTAssertLessThan(worstExp, 5e-7)
        XCTAssertLessThan(worstSig, 2e-7)
        XCTAssertLessThan(worstTanh, 5e-7)
        XCTAssertEqual(fastExp(0), 1)
        XCTAssertEqual(fastTanh(-200), -1); XCTAssertEqual(fastTanh(200), 1)
        XCTAssertEqual(fastSigmoid(-200), 0, accuracy: 1e-30)
    }

    /// The 8-lane exp gives the scalar one's bits, inside and outside the clamped range.
    func testEightLanesMatchTheScalarBits() {
        var x: Float = -200
        while x <= 200 {
            let v = F8((0..<8).map { x + Float($0) * 0.0031 })
            let lanes = fastExp(v)
            for i in 0..<8 {
                XCTAssertEqual(lanes[i].bitPattern, fastExp(v[i]).bitPattern, "fastExp(\(v[i]))")
            }
            x += 0.173
        }
        XCTAssertTrue(fastExp(F8(repeating: .nan))[0].isNaN)
    }
}

final class ReduceTests: XCTestCase {
    /// The 8-lane inner-loop sweeps give the scalar loops' bits, in place or not.
    func testSweepsHaveTheScalarLoopsBits() {
        var rng = SystemRandomNumberGenerator()
        let n = 1003
        let theta = (0..<n).map { _ in Float.random(in: -2...2, using: &rng) }
        let grad = (0..<n).map { _ in Float.random(in: -1...1, using: &rng) }
        let lr: Float = 0.0137
        let expected = zip(theta, grad).map { $0 - lr * $1 }
        let src = FloatBuffer(theta), dst = FloatBuffer(count: n), g = FloatBuffer(grad)
        sgdStepClearing(dst.ptr, from: UnsafePointer(src.ptr), g.ptr, lr: lr, count: n)
        XCTAssertEqual(dst.array.map(\.bitPattern), expected.map(\.bitPattern))
        XCTAssertEqual(g.array, [Float](repeating: 0, count: n))
        let inPlace = FloatBuffer(theta), g2 = FloatBuffer(grad)
        sgdStepClearing(inPlace.ptr, from: UnsafePointer(inPlace.ptr), g2.ptr, lr: lr, count: n)
        XCTAssertEqual(inPlace.array.map(\.bitPattern), expected.map(\.bitPattern))
        let acc = FloatBuffer(theta), g3 = FloatBuffer(grad)
        addClearing(acc.ptr, g3.ptr, count: n)
        XCTAssertEqual(acc.array.map(\.bitPattern), zip(theta, grad).map { ($0 + $1).bitPattern })
        XCTAssertEqual(g3.array, [Float](repeating: 0, count: n))
    }

    /// The fused reduce adds sources in the given order with the bits of a plain
    /// loop, reads unaligned sources, and returns BLAS.sumSquares' exact value.
    func testSumInOrderIsTheSequentialSumAndItsSquares() {
        var rng = SystemRandomNumberGenerator()
        for n in [1, 7, 8, 2047, 2048, 2049, 5003] {
            let sources = (0..<5).map { _ in (0..<n).map { _ in Float.random(in: -1e3...1e3, using: &rng) } }
            // Unaligned copies: each source starts 1 byte into its buffer.
            let raws = sources.map { s -> UnsafeMutableRawPointer in
                let r = UnsafeMutableRawPointer.allocate(byteCount: 4 * n + 1, alignment: 16)
                s.withUnsafeBytes { (r + 1).copyMemory(from: $0.baseAddress!, byteCount: 4 * n) }
                return r
            }
            defer { raws.forEach { $0.deallocate() } }
            let out = FloatBuffer(count: n)
            let sq = sumInOrder(raws.map { UnsafeRawPointer($0 + 1) }, count: n, into: out.ptr)
            var expected = sources[0]
            for s in sources.dropFirst() { for i in 0..<n { expected[i] += s[i] } }
            XCTAssertEqual(out.array.map(\.bitPattern), expected.map(\.bitPattern), "n = \(n)")
            XCTAssertEqual(sq.bitPattern, BLAS.sumSquares(out.ptr, n).bitPattern, "n = \(n)")
        }
    }
}

import Core
import Kernels
import XCTest

@testable import GRU4Rec

final class GradientTests: XCTestCase {
    func testParameterCountMatchesPyTorch() {
        // nn.Embedding(1518, 64) + nn.GRU(64, 128) + nn.Linear(128, 1518)
        XCTAssertEqual(ParameterLayout(ModelDims(V: 1518, E: 64, H: 128)).count, 367_470)
    }

    func testLayoutOffsetsAreContiguous() {
        let l = ParameterLayout(ModelDims(V: 11, E: 3, H: 5))
        var off = 0
        for e in l.entries { XCTAssertEqual(e.offset, off); off += e.count }
        XCTAssertEqual(off, l.count)
        XCTAssertEqual(l["gru.weight_hh_l0"].shape, [15, 5])
    }

    /// Every parameter's analytic gradient against central finite differences,
    /// on sequences of different lengths with unequal weights and dropout off.
    func testEveryParameterAgainstFiniteDifferences() {
        // H = 10: one 8-lane SIMD block and a scalar tail in the gate loops.
        let dims = ModelDims(V: 9, E: 3, H: 10)
        let model = GRU4Rec(dims: dims)
        var rng = SeededGenerator(seed: 11)
        let params = model.initialParameters(rng: &rng)
        // Larger fc scale so the loss is not flat.
        let fc = model.layout["fc.weight"]
        for i in fc.range { params[i] *= 3 }
        // Includes nested prefixes ([1,2] and [1,2,3] share [1,2,3,4,5]'s chain).
        let prefixes: [[Int32]] = [[1, 2, 3, 4, 5], [8], [2, 2, 7], [6, 1], [3, 4, 5, 6], [7], [1, 2, 3], [1, 2]]
        let labels: [Int32] = [6, 3, 1, 8, 2, 4, 5, 7]
        let weights: [Float] = [1, 0.5, 2, 0.25, 1.5, 0, 0.75, 1.25]
        let batch = PackedBatch(prefixes: prefixes, labels: labels, weights: weights)
        let grads = FloatBuffer(count: model.parameterCount)
        _ = model.lossAndGradient(params, grads, batch)
        let eps: Float = 1e-2
        var worst: Float = 0
        for e in model.layout.entries {
            for i in e.range {
                let saved = params[i]
                params[i] = saved + eps; let lp = model.loss(params, batch)
                params[i] = saved - eps; let lm = model.loss(params, batch)
                params[i] = saved
                let numeric = (lp - lm) / (2 * eps)
                let err = abs(numeric - grads[i]) / max(1e-2, abs(numeric) + abs(grads[i]))
                worst = max(worst, err)
                XCTAssertLessThan(err, 5e-3, "\(e.name)[\(i - e.offset)]: analytic \(grads[i]) numeric \(numeric)")
            }
        }
        // Padding row receives no gradient.
        for j in 0..<dims.E { XCTAssertEqual(grads[j], 0) }
        print("worst relative FD error \(worst)")
    }

    /// Dropout on the final hidden state: same mask (same generator key) for the
    /// analytic and the numeric side.
    func testDropoutGradientAgainstFiniteDifferences() {
        let model = GRU4Rec(dims: ModelDims(V: 6, E: 2, H: 5))
        var rng = SeededGenerator(seed: 2)
        let p = model.initialParameters(rng: &rng)
        let batch = PackedBatch(prefixes: [[1, 2, 3], [4], [5, 1]], labels: [4, 2, 3], weights: [1, 2, 0.5])
        func lossWithMask(_ g: FloatBuffer) -> Float {
            var r = SeededGenerator(seed: 99, [Stream.dropout])
            return model.lossAndGradient(p, g, batch, dropout: 0.4, rng: &r)
        }
        let grads = FloatBuffer(count: model.parameterCount), scratch = FloatBuffer(count: model.parameterCount)
        _ = lossWithMask(grads)
        let eps: Float = 1e-2
        for i in model.layout["gru.weight_hh_l0"].range.prefix(30) {
            let saved = p[i]
            p[i] = saved + eps; let lp = lossWithMask(scratch)
            p[i] = saved - eps; let lm = lossWithMask(scratch)
            p[i] = saved
            let numeric = (lp - lm) / (2 * eps)
            XCTAssertEqual(numeric, grads[i], accuracy: 5e-3 * max(1e-1, abs(numeric)))
        }
    }

    /// Shared chains are exact: a batch of nested prefixes gives the weighted
    /// combination of the examples computed one at a time.
    func testSharedChainsEqualSeparateExamples() {
        let model = GRU4Rec(dims: ModelDims(V: 9, E: 3, H: 10))
        var rng = SeededGenerator(seed: 21)
        let p = model.initialParameters(rng: &rng)
        let prefixes: [[Int32]] = [[4, 1], [4, 1, 7, 2], [4], [4, 1, 7], [3, 3], [3]]
        let labels: [Int32] = [7, 5, 1, 2, 8, 3]
        let weights: [Float] = [1, 2, 0.5, 1, 1.5, 0.25]
        let batch = PackedBatch(prefixes: prefixes, labels: labels, weights: weights)
        XCTAssertEqual(batch.layout.B, 2, "two chains")
        XCTAssertEqual(batch.layout.N, 6, "4 + 2 rows instead of 13")
        let g = FloatBuffer(count: model.parameterCount)
        let loss = model.lossAndGradient(p, g, batch)
        let wsum = weights.reduce(0, +)
        var want = 0.0
        let sum = FloatBuffer(count: model.parameterCount)
        for i in prefixes.indices {
            let gi = FloatBuffer(count: model.parameterCount)
            let li = model.lossAndGradient(p, gi, PackedBatch(prefixes: [prefixes[i]], labels: [labels[i]]))
            want += Double(weights[i] * li / wsum)
            for k in 0..<sum.count { sum[k] += weights[i] / wsum * gi[k] }
        }
        XCTAssertEqual(Double(loss), want, accuracy: 1e-5)
        for k in 0..<sum.count { XCTAssertEqual(g[k], sum[k], accuracy: 1e-5) }
    }

    func testGradientAccumulatesAndBatchOrderDoesNotMatter() {
        let model = GRU4Rec(dims: ModelDims(V: 7, E: 2, H: 3))
        var rng = SeededGenerator(seed: 5)
        let p = model.initialParameters(rng: &rng)
        let a = PackedBatch(prefixes: [[1, 2], [3], [4, 5, 6]], labels: [3, 4, 1])
        let b = PackedBatch(prefixes: [[4, 5, 6], [1, 2], [3]], labels: [1, 3, 4])
        let ga = FloatBuffer(count: model.parameterCount), gb = FloatBuffer(count: model.parameterCount)
        let la = model.lossAndGradient(p, ga, a)
        let lb = model.lossAndGradient(p, gb, b)
        XCTAssertEqual(la, lb, accuracy: 1e-6)
        for i in 0..<ga.count { XCTAssertEqual(ga[i], gb[i], accuracy: 1e-6) }
        model.lossAndGradient(p, ga, a) // accumulates: now twice
        for i in 0..<ga.count { XCTAssertEqual(ga[i], 2 * gb[i], accuracy: 1e-5) }
    }

    func testItemZeroIsNeverPredicted() {
        let model = GRU4Rec(dims: ModelDims(V: 5, E: 2, H: 2))
        var rng = SeededGenerator(seed: 1)
        let p = model.initialParameters(rng: &rng)
        p[model.layout["fc.bias"].offset] = 100 // huge logit for item 0
        let batch = PackedBatch(prefixes: [[1]], labels: [2])
        let g = FloatBuffer(count: model.parameterCount)
        let loss = model.lossAndGradient(p, g, batch)
        XCTAssertLessThan(loss, 10) // item 0's logit does not enter the softmax
        XCTAssertEqual(g[model.layout["fc.bias"].offset], 0)
    }
}

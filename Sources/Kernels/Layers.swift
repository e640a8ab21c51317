#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

// Forward/backward pairs, llm.c style. Argument order: outputs, inputs, weights,
// sizes. Backward ACCUMULATES into gradient buffers; zero them separately.
//
// Dimension legend:
//   N  rows of a packed batch (sum of sequence lengths)
//   B  sequences in a batch          T  longest sequence
//   E  embedding width               H  GRU hidden width
//   V  items, including padding row 0

// MARK: - Embedding

/// out[N,E] = W[tokens[i], :]
public func embeddingForward(
    _ out: UnsafeMutablePointer<Float>, _ tokens: UnsafePointer<Int32>,
    _ W: UnsafePointer<Float>, N: Int, E: Int
) {
    for i in 0..<N {
        (out + i * E).update(from: W + Int(tokens[i]) * E, count: E)
    }
}

/// dW[tokens[i], :] += dout[i, :]. Row 0 (padding) never receives gradient,
/// matching `nn.Embedding(padding_idx=0)`.
public func embeddingBackward(
    _ dW: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
    _ tokens: UnsafePointer<Int32>, N: Int, E: Int
) {
    for i in 0..<N {
        let t = Int(tokens[i])
        if t == 0 { continue }
        let d = dW + t * E, g = dout + i * E
        for j in 0..<E { d[j] += g[j] }
    }
}

// MARK: - Linear

/// out[N,O] = inp[N,I] · W[O,I]ᵀ + b[O]
public func linearForward(
    _ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>,
    _ W: UnsafePointer<Float>, _ b: UnsafePointer<Float>, N: Int, I: Int, O: Int
) {
    for i in 0..<N { (out + i * O).update(from: b, count: O) }
    BLAS.sgemm(false, true, m: N, n: O, k: I, a: inp, lda: I, b: W, ldb: I, beta: 1, c: out, ldc: O)
}

/// dinp[N,I] += dout · W; dW[O,I] += doutᵀ · inp; db[O] += Σ_rows dout. `dinp` may be nil.
public func linearBackward(
    _ dinp: UnsafeMutablePointer<Float>?, _ dW: UnsafeMutablePointer<Float>,
    _ db: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>,
    _ inp: UnsafePointer<Float>, _ W: UnsafePointer<Float>, N: Int, I: Int, O: Int
) {
    if let dinp { BLAS.sgemm(false, false, m: N, n: I, k: O, a: dout, lda: O, b: W, ldb: I, beta: 1, c: dinp, ldc: I) }
    BLAS.sgemm(true, false, m: O, n: I, k: N, a: dout, lda: O, b: inp, ldb: I, beta: 1, c: dW, ldc: I)
    addColumnSums(db, dout, rows: N, cols: O)
}

/// db[C] += Σ_r x[r, :]
@inline(__always)
public func addColumnSums(_ db: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, rows: Int, cols: Int) {
    for r in 0..<rows {
        let row = x + r * cols
        for j in 0..<cols { db[j] += row[j] }
    }
}

// MARK: - Softmax cross-entropy over items 1..V-1

/// Weighted mean cross-entropy Σ w_b ℓ_b / Σ w_b over items 1..V-1 (column 0,
/// the padding item, is excluded from the softmax). Writes the probabilities
/// (column 0 set to 0) into `probs[B,V]` for the backward pass and returns the
/// loss, accumulated in double precision. `probs` may alias `logits`. `losses[B]`, if given, receives ℓ_b.
public func crossEntropyForward(
    _ probs: UnsafeMutablePointer<Float>, _ losses: UnsafeMutablePointer<Float>?,
    _ logits: UnsafePointer<Float>, _ labels: UnsafePointer<Int32>,
    _ weights: UnsafePointer<Float>, B: Int, V: Int
) -> Float {
    var total: Double = 0, wsum: Double = 0
    for b in 0..<B {
        let z = logits + b * V, p = probs + b * V
        let zl = z[Int(labels[b])] // read before probs may overwrite logits in place
        var mx = -Float.infinity
        for j in 1..<V where z[j] > mx { mx = z[j] }
        var s: Float = 0
        p[0] = 0
        var j = 1
        var acc = F8()
        let m8 = F8(repeating: mx)
        while j + 8 <= V {
            let e = fastExp(load8(z + j) - m8)
            store8(p + j, e); acc += e; j += 8
        }
        s = acc.sum()
        while j < V { let e = fastExp(z[j] - mx); p[j] = e; s += e; j += 1 }
        let inv = 1 / s
        for j in 1..<V { p[j] *= inv }
        let l = Double(logf(s) + mx - zl)
        losses?[b] = Float(l)
        total += Double(weights[b]) * l
        wsum += Double(weights[b])
    }
    return wsum > 0 ? Float(total / wsum) : 0
}

/// Backward of crossEntropyForward, in place: turns the probabilities it left
/// in `probs[B,V]` into dlogits = (w_b / Σw) · (p_b − onehot(label_b)); column 0
/// stays 0. The chain rule starts here: d(loss)/d(loss) = 1.
public func crossEntropyBackward(
    _ probs: UnsafeMutablePointer<Float>, _ labels: UnsafePointer<Int32>,
    _ weights: UnsafePointer<Float>, B: Int, V: Int
) {
    var wsum: Double = 0
    for b in 0..<B { wsum += Double(weights[b]) }
    for b in 0..<B {
        let scale = wsum > 0 ? Float(Double(weights[b]) / wsum) : 0
        let d = probs + b * V
        for j in 1..<V { d[j] *= scale }
        d[Int(labels[b])] -= scale
    }
}

// MARK: - Dropout (inverted)

/// x ← x ⊙ mask, in place, where mask holds 0 or 1/(1−p) (drawn by the caller
/// from a seeded generator). Caches nothing beyond the mask.
public func dropoutForward(_ x: UnsafeMutablePointer<Float>, _ mask: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { x[i] *= mask[i] }
}

/// Backward of dropoutForward, in place (the forward overwrote its input): dx ← dx ⊙ mask.
public func dropoutBackward(_ dx: UnsafeMutablePointer<Float>, _ mask: UnsafePointer<Float>, count: Int) {
    for i in 0..<count { dx[i] *= mask[i] }
}

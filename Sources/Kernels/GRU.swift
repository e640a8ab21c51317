#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Where the rows of B variable-length sequences ("chains") live in a packed
/// batch, and where each example reads its hidden state. Chains are sorted by
/// length, longest first (PyTorch's `pack_padded_sequence` order); time step t
/// holds rows `offsets[t] ..< offsets[t] + batchSizes[t]`, and row
/// `offsets[t] + b` is chain b. No row holds padding, so no arithmetic is
/// spent on it. Examples whose prefixes are prefixes of one another (an
/// episode's consecutive pairs) share one chain and read out at different
/// steps, so their common steps are computed once.
public struct PackedLayout: Sendable, Equatable {
    /// Length of each chain, in sorted (descending) order. [B]
    public private(set) var lengths: [Int] = []
    /// Number of chains still running at each step. [T]
    public private(set) var batchSizes: [Int] = []
    /// First row of each step, plus the total. [T+1]
    public private(set) var offsets: [Int] = [0]
    /// Row whose hidden state example e reads. [examples]
    public private(set) var readoutRow: [Int] = []
    /// Examples grouped by readout step: those of step t are
    /// `readoutByStep[readoutStepStart[t] ..< readoutStepStart[t+1]]`.
    public private(set) var readoutStepStart: [Int] = [0]
    public private(set) var readoutByStep: [Int] = []

    public init() {}

    /// One example per chain, reading out at the chain's end.
    /// `sortedLengths` must be non-increasing and every length ≥ 1.
    public init(sortedLengths: [Int]) {
        reset(sortedLengths: sortedLengths, readouts: sortedLengths.enumerated().map { ($0.offset, $0.element) })
    }

    /// `readouts[e] = (chain, length)`: example e reads chain's state after `length` steps.
    public mutating func reset(sortedLengths: [Int], readouts: [(chain: Int, length: Int)]) {
        lengths.removeAll(keepingCapacity: true)
        lengths.append(contentsOf: sortedLengths)
        let T = sortedLengths.first ?? 0
        batchSizes.removeAll(keepingCapacity: true)
        offsets.removeAll(keepingCapacity: true)
        offsets.append(0)
        var bt = sortedLengths.count
        for t in 0..<T {
            while bt > 0 && sortedLengths[bt - 1] <= t { bt -= 1 }
            batchSizes.append(bt)
            offsets.append(offsets[t] + bt)
        }
        readoutRow.removeAll(keepingCapacity: true)
        readoutStepStart = [Int](repeating: 0, count: T + 1)
        for r in readouts {
            precondition(r.length >= 1 && r.length <= sortedLengths[r.chain], "readout outside its chain")
            readoutRow.append(offsets[r.length - 1] + r.chain)
            readoutStepStart[r.length] += 1
        }
        for t in 0..<T { readoutStepStart[t + 1] += readoutStepStart[t] }
        readoutByStep = [Int](repeating: 0, count: readouts.count)
        var fill = readoutStepStart
        for (e, r) in readouts.enumerated() { readoutByStep[fill[r.length - 1]] = e; fill[r.length - 1] += 1 }
    }

    /// Chains.
    public var B: Int { lengths.count }
    public var T: Int { batchSizes.count }
    public var N: Int { offsets[batchSizes.count] }
    /// Examples read out.
    public var examples: Int { readoutRow.count }
    /// Row of chain b's last step.
    @inline(__always) public func lastRow(_ b: Int) -> Int { offsets[lengths[b] - 1] + b }
}

/// Buffers the GRU forward pass leaves for its backward pass. All [N, ·] in packed row order.
public struct GRUCache {
    /// After forward: post-activation gates (r, z, n) per row. [N, 3H]
    public var gates: UnsafeMutablePointer<Float>
    /// W_hn·h_prev + b_hn per row (needed for dr). [N, H]
    public var hn: UnsafeMutablePointer<Float>
    /// h_prev per row (zero at t = 0). [N, H]
    public var hprev: UnsafeMutablePointer<Float>
    /// h per row. [N, H]
    public var hout: UnsafeMutablePointer<Float>
    public init(
        gates: UnsafeMutablePointer<Float>, hn: UnsafeMutablePointer<Float>,
        hprev: UnsafeMutablePointer<Float>, hout: UnsafeMutablePointer<Float>
    ) {
        self.gates = gates; self.hn = hn; self.hprev = hprev; self.hout = hout
    }
}

/// One-layer GRU over a packed batch, PyTorch's equations (gate order r, z, n):
///   r = σ(W_ir x + b_ir + W_hr h + b_hr)
///   z = σ(W_iz x + b_iz + W_hz h + b_hz)
///   n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
///   h' = (1 − z) ⊙ n + z ⊙ h,   h_0 = 0
///
/// x: [N,E] inputs; Wih: [3H,E]; Whh: [3H,H]; bih, bhh: [3H].
/// The input projections of all steps are one sgemm; each step adds one
/// [B_t,H]·[H,3H] sgemm. `ghStep` is scratch of at least [B,3H].
/// Caches gates, hn, hprev and hout (see GRUCache).
public func gruForward(
    _ cache: GRUCache, _ x: UnsafePointer<Float>,
    _ Wih: UnsafePointer<Float>, _ Whh: UnsafePointer<Float>,
    _ bih: UnsafePointer<Float>, _ bhh: UnsafePointer<Float>,
    _ ghStep: UnsafeMutablePointer<Float>,
    layout: PackedLayout, E: Int, H: Int
) {
    let N = layout.N, G = 3 * H
    // Input projections of every step at once: gates[N,3H] = x·Wihᵀ + bih.
    linearForward(cache.gates, x, Wih, bih, N: N, I: E, O: G)
    for t in 0..<layout.T {
        let bt = layout.batchSizes[t], off = layout.offsets[t]
        let hp = cache.hprev + off * H
        // gh[bt,3H] = h_prev·Whhᵀ + bhh (h_prev = 0 at t = 0).
        for i in 0..<bt { (ghStep + i * G).update(from: bhh, count: G) }
        if t == 0 {
            hp.update(repeating: 0, count: bt * H)
        } else {
            hp.update(from: cache.hout + layout.offsets[t - 1] * H, count: bt * H)
            BLAS.sgemm(false, true, m: bt, n: G, k: H, a: hp, lda: H, b: Whh, ldb: H, beta: 1, c: ghStep, ldc: G)
        }
        for i in 0..<bt {
            let row = off + i
            let g = cache.gates + row * G, gh = ghStep + i * G
            let hn = cache.hn + row * H, hpr = cache.hprev + row * H, ho = cache.hout + row * H
            var j0 = 0
            while j0 + 8 <= H { // 8 lanes at a time
                let r = fastSigmoid(load8(g + j0) + load8(gh + j0))
                let z = fastSigmoid(load8(g + H + j0) + load8(gh + H + j0))
                let hnj = load8(gh + 2 * H + j0)
                let n = fastTanh(load8(g + 2 * H + j0) + r * hnj)
                store8(hn + j0, hnj)
                store8(ho + j0, (1 - z) * n + z * load8(hpr + j0))
                store8(g + j0, r); store8(g + H + j0, z); store8(g + 2 * H + j0, n)
                j0 += 8
            }
            for j in j0..<H {
                let r = fastSigmoid(g[j] + gh[j])
                let z = fastSigmoid(g[H + j] + gh[H + j])
                let hnj = gh[2 * H + j]
                let n = fastTanh(g[2 * H + j] + r * hnj)
                hn[j] = hnj
                ho[j] = (1 - z) * n + z * hpr[j]
                g[j] = r; g[H + j] = z; g[2 * H + j] = n
            }
        }
    }
}

/// Backward of gruForward. The chain rule starts from dLast[examples,H], the
/// gradient with respect to each example's read-out hidden state; it is added
/// into the running dh at the example's readout step.
/// Accumulates into dWih, dWhh, dbih, dbhh and dx[N,E] (dx may be nil).
/// Scratch: dh [B,H], dGi [N,3H], dGh [N,3H], overwritten.
public func gruBackward(
    _ dx: UnsafeMutablePointer<Float>?,
    _ dWih: UnsafeMutablePointer<Float>, _ dWhh: UnsafeMutablePointer<Float>,
    _ dbih: UnsafeMutablePointer<Float>, _ dbhh: UnsafeMutablePointer<Float>,
    _ dLast: UnsafePointer<Float>,
    _ cache: GRUCache, _ x: UnsafePointer<Float>,
    _ Wih: UnsafePointer<Float>, _ Whh: UnsafePointer<Float>,
    _ dh: UnsafeMutablePointer<Float>, _ dGi: UnsafeMutablePointer<Float>,
    _ dGh: UnsafeMutablePointer<Float>,
    layout: PackedLayout, E: Int, H: Int
) {
    let N = layout.N, G = 3 * H, T = layout.T
    guard N > 0 else { return }
    // Walk the steps in reverse; dh[b] holds dL/dh for sequence b at step t.
    for t in stride(from: T - 1, through: 0, by: -1) {
        let bt = layout.batchSizes[t], off = layout.offsets[t]
        let bnext = t + 1 < T ? layout.batchSizes[t + 1] : 0
        // Chains whose last step is t start with zero gradient; examples read out
        // at step t add theirs.
        if bt > bnext { (dh + bnext * H).update(repeating: 0, count: (bt - bnext) * H) }
        for r in layout.readoutStepStart[t]..<layout.readoutStepStart[t + 1] {
            let e = layout.readoutByStep[r]
            let d = dh + (layout.readoutRow[e] - off) * H, g = dLast + e * H
            for j in 0..<H { d[j] += g[j] }
        }
        for i in 0..<bt {
            let row = off + i
            let g = cache.gates + row * G, hn = cache.hn + row * H, hpr = cache.hprev + row * H
            let di = dGi + row * G, dg = dGh + row * G, d = dh + i * H
            for j in 0..<H {
                let r = g[j], z = g[H + j], n = g[2 * H + j]
                let dhv = d[j]
                let dnpre = dhv * (1 - z) * (1 - n * n)
                let dzpre = dhv * (hpr[j] - n) * z * (1 - z)
                let drpre = dnpre * hn[j] * r * (1 - r)
                di[j] = drpre; di[H + j] = dzpre; di[2 * H + j] = dnpre
                dg[j] = drpre; dg[H + j] = dzpre; dg[2 * H + j] = dnpre * r
                d[j] = dhv * z // direct path h' ← z ⊙ h
            }
        }
        // Path through the recurrent weights: dh_prev += dGh_t · Whh.
        if t > 0 {
            BLAS.sgemm(
                false, false, m: bt, n: H, k: G, a: dGh + off * G, lda: G, b: Whh, ldb: H,
                beta: 1, c: dh, ldc: H)
        }
    }
    // Weight gradients of all steps at once.
    let r1 = layout.offsets[min(1, T)] // rows of step 0 have h_prev = 0
    BLAS.sgemm(
        true, false, m: G, n: H, k: N - r1, a: dGh + r1 * G, lda: G, b: cache.hprev + r1 * H, ldb: H,
        beta: 1, c: dWhh, ldc: H)
    addColumnSums(dbhh, dGh, rows: N, cols: G)
    linearBackward(dx, dWih, dbih, dGi, x, Wih, N: N, I: E, O: G)
}

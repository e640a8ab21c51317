/// The coordinator's reduce: unit gradient sums added IN A FIXED ORDER, so the
/// bits depend neither on which worker computed a unit nor on when it arrived.

/// out[i] = ((s₀[i] + s₁[i]) + s₂[i]) + … for every i (the sources in the given
/// order), and returns Σ out[i]² accumulated exactly as `BLAS.sumSquares(out, n)`
/// would (the same bits), in the same pass. Sources are float32 runs that may be
/// unaligned (views into received frames); there must be at least one.
///
/// One pass in cache-sized blocks: each block of `out` is written once and read
/// back from L1 for the next source and the squares, instead of a sweep over the
/// whole 1.5 MB buffer per source.
public func sumInOrder(_ sources: [UnsafeRawPointer], count n: Int, into out: UnsafeMutablePointer<Float>) -> Double {
    precondition(!sources.isEmpty, "nothing to reduce")
    let block = 2048   // a multiple of 8 (and of sumSquares' 4 lanes)
    var acc = SIMD4<Double>()
    var start = 0
    while start < n {
        let len = min(block, n - start)
        let o = out + start
        UnsafeMutableRawPointer(o).copyMemory(from: sources[0] + 4 * start, byteCount: 4 * len)
        for s in sources.dropFirst() {
            let p = s + 4 * start
            var i = 0
            while i + 8 <= len {
                let x = UnsafeRawPointer(o + i).loadUnaligned(as: SIMD8<Float>.self)
                let y = p.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(o + i).storeBytes(of: x + y, as: SIMD8<Float>.self)
                i += 8
            }
            while i < len { o[i] += p.loadUnaligned(fromByteOffset: 4 * i, as: Float.self); i += 1 }
        }
        // Squares in sumSquares' order: 4 interleaved lanes over whole groups of 4.
        var i = 0
        while i + 4 <= len {
            let v = SIMD4<Double>(Double(o[i]), Double(o[i + 1]), Double(o[i + 2]), Double(o[i + 3]))
            acc += v * v
            i += 4
        }
        start += len
    }
    var s = (acc[0] + acc[1]) + (acc[2] + acc[3])
    var i = n - n % 4
    while i < n { let v = Double(out[i]); s += v * v; i += 1 }
    return s
}

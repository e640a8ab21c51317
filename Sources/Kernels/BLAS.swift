import COpenBLAS

/// The one place metatrain calls BLAS. Row-major throughout.
public enum BLAS {
    /// Workers and benchmarks run OpenBLAS on one thread; parallelism is processes.
    public static func useSingleThread() { openblas_set_num_threads(1) }

    /// The kernel family OpenBLAS picked for this CPU (e.g. "Haswell"; OPENBLAS_CORETYPE overrides it).
    /// Processes with different ones may compute different bits.
    public static var coreName: String { String(cString: openblas_get_corename()) }

    /// The kernel family that would run faster than `picked` on a CPU with these
    /// /proc/cpuinfo flags, when OpenBLAS fell back to a generic family (it picks by the
    /// CPU's model number, and an OpenBLAS older than the CPU does not know the model:
    /// Debian's 0.3.21 runs its SSE3 Prescott kernels on an AVX-512 Xeon of model 207,
    /// 1.4–2.8× slower on second-order MAML); nil when the pick is not a fallback.
    public static func fasterCore(than picked: String, flags: Set<String>) -> String? {
        let fallbacks: Set<String> = [
            "prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "katmai", "coppermine", "northwood",
            "banias"
        ]
        guard fallbacks.contains(picked.lowercased()) else { return nil }
        if flags.isSuperset(of: ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]) { return "SkylakeX" }
        if flags.isSuperset(of: ["avx2", "fma"]) { return "Haswell" }
        if flags.contains("avx") { return "Sandybridge" }
        return nil
    }

    /// C[m,n] = alpha · op(A) · op(B) + beta · C, where op(A) is [m,k] and op(B) is [k,n].
    /// `lda`, `ldb`, `ldc` are the row strides of A, B, C as stored.
    @inline(__always)
    public static func sgemm(
        _ transA: Bool, _ transB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        if m == 0 || n == 0 { return }
        if k == 0 {
            if beta == 0 {
                for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) }
            } else if beta != 1 {
                for i in 0..<m { for j in 0..<n { c[i * ldc + j] *= beta } }
            }
            return
        }
        cblas_sgemm(
            CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Σ x_i² in double precision, in a fixed order (4 interleaved lanes, then
    /// the tail), so the result is the same bits on every run.
    public static func sumSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        var acc = SIMD4<Double>()
        var i = 0
        while i + 4 <= n {
            let v = SIMD4<Double>(Double(x[i]), Double(x[i + 1]), Double(x[i + 2]), Double(x[i + 3]))
            acc += v * v
            i += 4
        }
        var s = (acc[0] + acc[1]) + (acc[2] + acc[3])
        while i < n { let v = Double(x[i]); s += v * v; i += 1 }
        return s
    }
}

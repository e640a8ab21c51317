import COpenBLAS

#if canImport(Glibc)
import Glibc
#endif

/// The one place metatrain calls BLAS. Row-major throughout.
public enum BLAS {
    /// Workers and benchmarks run OpenBLAS on one thread; parallelism is processes.
    public static func useSingleThread() {
        _ = kernels
        openblas_set_num_threads(1)
    }

    /// The kernel family this process runs (e.g. "Haswell"; OPENBLAS_CORETYPE overrides it).
    /// Processes with different ones may compute different bits.
    public static var coreName: String {
        _ = kernels
        return String(cString: openblas_get_corename())
    }

    /// How this process's kernel family was settled (`kernels`).
    public struct Kernels: Sendable {
        /// The family OpenBLAS picked itself (by the CPU's model, or OPENBLAS_CORETYPE).
        public let picked: String
        /// The family this process runs.
        public let runs: String
        /// Whether OPENBLAS_CORETYPE was given (metatrain then keeps OpenBLAS's pick).
        public let pinned: Bool
    }

    /// Settled once per process, before its first product. When OpenBLAS fell back to a
    /// generic family on a CPU it does not know by model and the CPU's flags name a faster
    /// one (`fasterCore`), metatrain selects that one, as OPENBLAS_CORETYPE would, and sets
    /// OPENBLAS_CORETYPE so that the processes it starts begin with it. Decided by the CPU
    /// alone, so hosts with the same CPU agree, as they do on OpenBLAS's own picks; a given
    /// OPENBLAS_CORETYPE is left as it is (to pin one family across unlike hosts, or to keep
    /// OpenBLAS's pick).
    public static let kernels: Kernels = settleKernels()

    private static func settleKernels() -> Kernels {
        let picked = String(cString: openblas_get_corename())
        let pinned = getenv("OPENBLAS_CORETYPE") != nil
        guard !pinned, let better = fasterCore(than: picked, flags: cpuFlags()),
            let quit = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "gotoblas_dynamic_quit"),
            let initialize = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "gotoblas_dynamic_init")
        else { return Kernels(picked: picked, runs: picked, pinned: pinned) }
        // An OpenBLAS built for many CPUs (DYNAMIC_ARCH, as Debian's) chooses its kernel table in
        // gotoblas_dynamic_init, honouring OPENBLAS_CORETYPE; quitting clears the choice. No product
        // has run yet, and every call reads the table afresh.
        setenv("OPENBLAS_CORETYPE", better, 1)
        typealias Hook = @convention(c) () -> Void
        unsafeBitCast(quit, to: Hook.self)()
        unsafeBitCast(initialize, to: Hook.self)()
        return Kernels(picked: picked, runs: String(cString: openblas_get_corename()), pinned: false)
    }

    /// The CPU's feature flags from /proc/cpuinfo (empty where there is none).
    static func cpuFlags() -> Set<String> {
        Set((cpuInfo("flags") ?? "").split(separator: " ").map(String.init))
    }

    /// The first value of `field` in /proc/cpuinfo, trimmed (nil where there is none).
    public static func cpuInfo(_ field: String) -> String? {
        guard let file = fopen("/proc/cpuinfo", "r") else { return nil }
        defer { fclose(file) }
        var line: UnsafeMutablePointer<CChar>?
        var capacity = 0
        defer { free(line) }
        while getline(&line, &capacity, file) > 0, let line {
            let text = String(cString: line)
            guard text.hasPrefix(field), let colon = text.firstIndex(of: ":") else { continue }
            var value = text[text.index(after: colon)...]
            while let c = value.first, c == " " || c == "\t" { value.removeFirst() }
            while let c = value.last, c == " " || c == "\t" || c == "\n" { value.removeLast() }
            return String(value)
        }
        return nil
    }

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
        _ = kernels
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

import Dispatch

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Adam with PyTorch's semantics (torch.optim.Adam, weight_decay = 0, amsgrad off):
///   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
///   θ ← θ − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + ε)
/// m and v share the parameters' flat layout.
public final class Adam: @unchecked Sendable {
    public let m: FloatBuffer
    public let v: FloatBuffer
    public var step: Int = 0
    public let beta1: Float, beta2: Float, eps: Float

    public init(count: Int, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8) {
        m = FloatBuffer(count: count); v = FloatBuffer(count: count)
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps
    }

    /// One step over `ranges` of the flat buffer (default: all of it). Elements
    /// outside the ranges (e.g. frozen embeddings) are left untouched, moments included.
    public func update(_ params: FloatBuffer, _ grads: FloatBuffer, lr: Float, ranges: [Range<Int>]? = nil) {
        update(params, grads, gradScale: 1, lr: lr, ranges: ranges)
    }

    /// The same step on `gradScale · grads` (e.g. 1/tasks × a clipping factor),
    /// without a separate pass to scale the gradient. With `threads: 2` the
    /// elements are split between two threads; every element gets the same
    /// operations either way, so the bits do not depend on it.
    public func update(
        _ params: FloatBuffer, _ grads: FloatBuffer, gradScale: Float, lr: Float, ranges: [Range<Int>]? = nil,
        threads: Int = 1
    ) {
        precondition(params.count == m.count && grads.count == m.count)
        step += 1
        let bc1 = 1 - powf(beta1, Float(step))
        let bc2 = 1 - powf(beta2, Float(step))
        let stepSize = lr / bc1
        let bc2Sqrt = sqrtf(bc2)
        let all = ranges ?? [0..<m.count]
        if threads <= 1 {
            apply(params, grads, gradScale: gradScale, stepSize: stepSize, bc2Sqrt: bc2Sqrt, ranges: all)
            return
        }
        let parts = split(all, into: threads)
        DispatchQueue.concurrentPerform(iterations: parts.count) { k in
            apply(params, grads, gradScale: gradScale, stepSize: stepSize, bc2Sqrt: bc2Sqrt, ranges: parts[k])
        }
    }

    func apply(
        _ params: FloatBuffer, _ grads: FloatBuffer, gradScale: Float, stepSize: Float, bc2Sqrt: Float,
        ranges: [Range<Int>]
    ) {
        let p = params.ptr, g = grads.ptr, mm = m.ptr, vv = v.ptr
        let b1 = beta1, b2 = beta2, e = eps
        // 8 lanes at a time, then the tail; every lane does the scalar rule's
        // operations in the same order, so the bits equal the scalar loop's.
        typealias F8 = SIMD8<Float>
        let vb1 = F8(repeating: b1), vb2 = F8(repeating: b2), c1 = F8(repeating: 1 - b1), c2 = F8(repeating: 1 - b2)
        let vscale = F8(repeating: gradScale), ve = F8(repeating: e), vbc2 = F8(repeating: bc2Sqrt),
            vstep = F8(repeating: stepSize)
        for r in ranges {
            var i = r.lowerBound
            while i + 8 <= r.upperBound {
                let gi = load8(UnsafePointer(g + i)) * vscale
                let mi = vb1 * load8(UnsafePointer(mm + i)) + c1 * gi
                let vi = vb2 * load8(UnsafePointer(vv + i)) + c2 * gi * gi
                let denom = vi.squareRoot() / vbc2 + ve
                let pi = load8(UnsafePointer(p + i)) - vstep * mi / denom
                store8(mm + i, mi); store8(vv + i, vi); store8(p + i, pi)
                i += 8
            }
            while i < r.upperBound {
                let gi = g[i] * gradScale
                mm[i] = b1 * mm[i] + (1 - b1) * gi
                vv[i] = b2 * vv[i] + (1 - b2) * gi * gi
                let denom = sqrtf(vv[i]) / bc2Sqrt + e
                p[i] -= stepSize * mm[i] / denom
                i += 1
            }
        }
    }
}

/// Splits a list of ranges into `parts` lists of about equal total length.
func split(_ ranges: [Range<Int>], into parts: Int) -> [[Range<Int>]] {
    let total = ranges.reduce(0) { $0 + $1.count }
    let per = (total + parts - 1) / max(parts, 1)
    var out: [[Range<Int>]] = [[]], room = per
    for var r in ranges {
        while !r.isEmpty {
            if room == 0 { out.append([]); room = per }
            let take = min(room, r.count)
            out[out.count - 1].append(r.lowerBound..<(r.lowerBound + take))
            r = (r.lowerBound + take)..<r.upperBound
            room -= take
        }
    }
    return out
}

/// torch.nn.utils.clip_grad_norm_: scales g by maxNorm / (‖g‖ + 1e-6) when that
/// is below 1. Returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ grads: FloatBuffer, maxNorm: Float) -> Float {
    let norm = Float(BLAS.sumSquares(grads.ptr, grads.count).squareRoot())
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
        for i in 0..<grads.count { grads.ptr[i] *= coef }
    }
    return norm
}

/// dst = src − lr·g, then g = 0, 8 lanes at a time (dst may be src: an
/// in-place step). The same operations per element as the scalar loop, so the
/// same bits; written out because the compiler keeps the scalar loop when dst
/// and src alias.
public func sgdStepClearing(
    _ dst: UnsafeMutablePointer<Float>, from src: UnsafePointer<Float>,
    _ g: UnsafeMutablePointer<Float>, lr: Float, count n: Int
) {
    let vlr = F8(repeating: lr)
    var i = 0
    while i + 8 <= n {
        store8(dst + i, load8(src + i) - vlr * load8(UnsafePointer(g + i)))
        store8(g + i, F8())
        i += 8
    }
    while i < n { dst[i] = src[i] - lr * g[i]; g[i] = 0; i += 1 }
}

/// acc += g, then g = 0, 8 lanes at a time (same bits as the scalar loop).
public func addClearing(_ acc: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 8 <= n {
        store8(acc + i, load8(UnsafePointer(acc + i)) + load8(UnsafePointer(g + i)))
        store8(g + i, F8())
        i += 8
    }
    while i < n { acc[i] += g[i]; g[i] = 0; i += 1 }
}

/// The largest |x[i]|, 8 lanes at a time (exact: the same value as the scalar loop for finite x).
public func maxAbs(_ x: UnsafePointer<Float>, count n: Int) -> Float {
    var acc = F8()
    var i = 0
    while i + 8 <= n {
        acc = maxAbs8(acc, load8(x + i))
        i += 8
    }
    var m = acc.max()
    while i < n { m = max(m, abs(x[i])); i += 1 }
    return m
}

/// dst = x + a·y, 8 lanes at a time (a multiply then an add, as the scalar loop: same bits).
public func addScaled(
    _ dst: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ a: Float, _ y: UnsafePointer<Float>, count n: Int
) {
    let va = F8(repeating: a)
    var i = 0
    while i + 8 <= n {
        store8(dst + i, load8(x + i) + va * load8(y + i))
        i += 8
    }
    while i < n { dst[i] = x[i] + a * y[i]; i += 1 }
}

/// v −= (x − y)·s, then x = y = 0, 8 lanes at a time: the bits of x = (x − y)·s followed by
/// v −= x, leaving both gradients cleared for their next use in the same pass.
public func subtractScaledDifferenceClearing(
    _ v: UnsafeMutablePointer<Float>, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ s: Float,
    count n: Int
) {
    let vs = F8(repeating: s)
    var i = 0
    while i + 8 <= n {
        store8(v + i, load8(UnsafePointer(v + i)) - (load8(UnsafePointer(x + i)) - load8(UnsafePointer(y + i))) * vs)
        store8(x + i, F8())
        store8(y + i, F8())
        i += 8
    }
    while i < n { v[i] -= (x[i] - y[i]) * s; x[i] = 0; y[i] = 0; i += 1 }
}

/// plus = x + a·y and minus = x + (−a)·y in one pass, 8 lanes at a time (each the bits of
/// `addScaled`).
public func addScaledPair(
    _ plus: UnsafeMutablePointer<Float>, _ minus: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ a: Float,
    _ y: UnsafePointer<Float>, count n: Int
) {
    let va = F8(repeating: a), vm = F8(repeating: -a)
    var i = 0
    while i + 8 <= n {
        let xv = load8(x + i), yv = load8(y + i)
        store8(plus + i, xv + va * yv)
        store8(minus + i, xv + vm * yv)
        i += 8
    }
    while i < n { plus[i] = x[i] + a * y[i]; minus[i] = x[i] + -a * y[i]; i += 1 }
}

/// The larger of each lane's |v| and `acc` (a NaN never wins, as with the scalar `max(acc, abs(x))`).
@inline(__always) func maxAbs8(_ acc: F8, _ v: F8) -> F8 {
    let a = v.replacing(with: -v, where: v .< 0)
    return acc.replacing(with: a, where: a .> acc)
}

/// dst = x − a·y, returning the largest |dst[i]| (one pass instead of two; the scalar loops' bits).
public func subtractScaledMaxAbs(
    _ dst: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ a: Float, _ y: UnsafePointer<Float>, count n: Int
) -> Float {
    let va = F8(repeating: a)
    var acc = F8()
    var i = 0
    while i + 8 <= n {
        let d = load8(x + i) - va * load8(y + i)
        store8(dst + i, d)
        acc = maxAbs8(acc, d)
        i += 8
    }
    var m = acc.max()
    while i < n { dst[i] = x[i] - a * y[i]; m = max(m, abs(dst[i])); i += 1 }
    return m
}

/// dst = x − a·y, then y = 0, returning the largest |dst[i]| (one pass; the scalar loops' bits).
public func subtractScaledMaxAbsClearing(
    _ dst: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ a: Float, _ y: UnsafeMutablePointer<Float>,
    count n: Int
) -> Float {
    let va = F8(repeating: a)
    var acc = F8()
    var i = 0
    while i + 8 <= n {
        let d = load8(x + i) - va * load8(UnsafePointer(y + i))
        store8(dst + i, d)
        store8(y + i, F8())
        acc = maxAbs8(acc, d)
        i += 8
    }
    var m = acc.max()
    while i < n { dst[i] = x[i] - a * y[i]; y[i] = 0; m = max(m, abs(dst[i])); i += 1 }
    return m
}

/// dst = a·x, returning the largest |dst[i]| (one pass instead of two; the scalar loops' bits).
public func scaleMaxAbs(_ dst: UnsafeMutablePointer<Float>, _ a: Float, _ x: UnsafePointer<Float>, count n: Int)
    -> Float
{
    let va = F8(repeating: a)
    var acc = F8()
    var i = 0
    while i + 8 <= n {
        let d = va * load8(x + i)
        store8(dst + i, d)
        acc = maxAbs8(acc, d)
        i += 8
    }
    var m = acc.max()
    while i < n { dst[i] = a * x[i]; m = max(m, abs(dst[i])); i += 1 }
    return m
}

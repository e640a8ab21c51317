/// Branch-free float exp (Cephes `expf` polynomial with Cody–Waite range
/// reduction, relative error ≈ 1e-7 over the clamped range [−87.3, 88.4]).
/// Written as straight-line scalar code so loops that call it vectorise;
/// libm's expf/tanhf are opaque calls and dominated the GRU's gate loops.
@inline(__always)
public func fastExp(_ x0: Float) -> Float {
    let x1 = min(max(x0, -87.3), 88.37)
    // n = round(x·log2 e) by the 1.5·2²³ trick (exact here, and unlike floorf
    // it stays inline and vectorises); its integer value sits in t's low bits.
    let t = x1 * 1.44269504088896341 + 12_582_912
    let fx = t - 12_582_912
    var x = x1 - fx * 0.693359375
    x = x + fx * 2.12194440e-4
    let z = x * x
    var y: Float = 1.9875691500e-4
    y = y * x + 1.3981999507e-3
    y = y * x + 8.3334519073e-3
    y = y * x + 4.1665795894e-2
    y = y * x + 1.6666665459e-1
    y = y * x + 5.0000001201e-1
    y = y * z + x + 1
    let e = Int32(bitPattern: t.bitPattern) &- 0x4B40_0000 &+ 127
    return y * Float(bitPattern: UInt32(truncatingIfNeeded: e) << 23)
}

/// σ(x) = 1 / (1 + e^−x)
@inline(__always) public func fastSigmoid(_ x: Float) -> Float { 1 / (1 + fastExp(-x)) }

/// tanh(x) = 2σ(2x) − 1 (absolute error ≈ 1e-7).
@inline(__always) public func fastTanh(_ x: Float) -> Float { 2 / (1 + fastExp(-2 * x)) - 1 }

public typealias F8 = SIMD8<Float>

/// fastExp on 8 lanes (same polynomial and reduction as the scalar version).
@inline(__always)
public func fastExp(_ x0: F8) -> F8 {
    // clamped(lowerBound:upperBound:) lane by lane, as Swift.max then Swift.min do it (a NaN
    // stays NaN), written out: the standard library's generic pointwiseMax/Min were calls, not inlined.
    let lo = F8(repeating: -87.3), hi = F8(repeating: 88.37)
    let m = x0.replacing(with: lo, where: lo .>= x0)
    let x1 = m.replacing(with: hi, where: hi .< m)
    let t = x1 * 1.44269504088896341 + 12_582_912
    let fx = t - 12_582_912
    var x = x1 - fx * 0.693359375
    x = x + fx * 2.12194440e-4
    let z = x * x
    var y = F8(repeating: 1.9875691500e-4)
    y = y * x + 1.3981999507e-3
    y = y * x + 8.3334519073e-3
    y = y * x + 4.1665795894e-2
    y = y * x + 1.6666665459e-1
    y = y * x + 5.0000001201e-1
    y = y * z + x + 1
    let e = unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000 &+ 127
    return y * unsafeBitCast(e &<< 23, to: F8.self)
}

@inline(__always) public func fastSigmoid(_ x: F8) -> F8 { 1 / (1 + fastExp(-x)) }
@inline(__always) public func fastTanh(_ x: F8) -> F8 { 2 / (1 + fastExp(-2 * x)) - 1 }

@inline(__always) func load8(_ p: UnsafePointer<Float>) -> F8 { UnsafeRawPointer(p).loadUnaligned(as: F8.self) }
@inline(__always) func store8(_ p: UnsafeMutablePointer<Float>, _ v: F8) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: F8.self)
}

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Deterministic random numbers. Every generator in metatrain is built from an
/// explicit key — (seed, purpose, iteration, ...) — never from global state, so
/// any draw can be recomputed from its key alone.
///
/// The generator is xoshiro256** (Blackman & Vigna), seeded by SplitMix64 from a
/// 64-bit hash of the key words.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    /// Creates the generator for a key: the seed followed by any number of words
    /// that name the stream (e.g. `[Stream.split]`, `[Stream.pretrainEpoch, epoch]`).
    public init(seed: UInt64, _ stream: [UInt64] = []) {
        var h = SplitMix64(state: seed ^ 0x6D65_7461_7472_6169) // "metatrai"
        var acc = h.next()
        for w in stream {
            var m = SplitMix64(state: acc ^ w &* 0x9E37_79B9_7F4A_7C15)
            acc = m.next() ^ (acc >> 7)
        }
        h = SplitMix64(state: acc)
        s = (h.next(), h.next(), h.next(), h.next())
    }

    public mutating func next() -> UInt64 {
        let result = rotl(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = rotl(s.3, 45)
        return result
    }

    /// Uniform integer in 0..<n without modulo bias (Lemire's method).
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        let bound = UInt64(n)
        var m = next().multipliedFullWidth(by: bound)
        if m.low < bound {
            let threshold = (0 &- bound) % bound
            while m.low < threshold { m = next().multipliedFullWidth(by: bound) }
        }
        return Int(m.high)
    }

    /// Uniform Float in [0, 1) with 24 random bits.
    public mutating func uniformFloat() -> Float { Float(next() >> 40) * (1.0 / 16_777_216.0) }

    /// Uniform Double in [0, 1) with 53 random bits.
    public mutating func uniformDouble() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// Standard normal draw (Box–Muller, one value per call).
    public mutating func normal() -> Double {
        var u1 = uniformDouble()
        while u1 <= 0 { u1 = uniformDouble() }
        let u2 = uniformDouble()
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
    }

    /// Fisher–Yates shuffle with this generator (the standard library's shuffle
    /// algorithm is not specified, so it is not used where bits must be stable).
    public mutating func shuffle<T>(_ a: inout [T]) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) {
            let j = below(i + 1)
            if i != j { a.swapAt(i, j) }
        }
    }
}

/// Stream names: one word per purpose, so generators for different purposes
/// never share a sequence even with the same seed.
public enum Stream {
    public static let split: UInt64 = 1
    public static let synth: UInt64 = 2
    public static let modelInit: UInt64 = 3
    public static let pretrainEpoch: UInt64 = 4
    public static let dropout: UInt64 = 5
    public static let bootstrap: UInt64 = 6
    public static let metaBatch: UInt64 = 7
    public static let sampledNegatives: UInt64 = 8
    public static let permutation: UInt64 = 9
}

@inline(__always) private func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

#if canImport(Glibc)
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#else
@inline(__always) func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Darwin.cos(x) }
#endif

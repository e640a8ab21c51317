import CSHA256

/// SHA-256 (FIPS 180-4), streaming. Used for dataset fingerprints. Blocks go through the
/// CPU's SHA instructions where it has them (CSHA256), else through `compress` here; the
/// digest is the same (CoreTests compares the two).
public struct SHA256: Sendable {
    /// Whether this CPU's SHA instructions are used.
    public static let hardware = metatrain_sha256_hardware() != 0
    /// Whether this hasher uses them (tests turn it off to compare).
    var useHardware = SHA256.hardware
    private var h: [UInt32] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
    ]
    private var buffer: [UInt8] = []
    private var length: UInt64 = 0

    public init() { buffer.reserveCapacity(64) }

    /// Feeds bytes.
    public mutating func update(_ raw: UnsafeRawBufferPointer) {
        var i = 0
        let n = raw.count
        length &+= UInt64(n)
        if !buffer.isEmpty {
            while i < n && buffer.count < 64 { buffer.append(raw[i]); i += 1 }
            if buffer.count == 64 { compressBuffer(); buffer.removeAll(keepingCapacity: true) }
        }
        if n - i >= 64 {
            let blocks = (n - i) / 64
            self.blocks(raw.baseAddress!.advanced(by: i), blocks)
            i += 64 * blocks
        }
        while i < n { buffer.append(raw[i]); i += 1 }
    }

    public mutating func update(string: String) {
        var s = string
        s.withUTF8 { update(UnsafeRawBufferPointer($0)) }
    }

    public mutating func update<T>(array: [T]) {
        array.withUnsafeBytes { update($0) }
    }

    public mutating func finalizeHex() -> String {
        let bitLength = length &* 8
        var pad: [UInt8] = [0x80]
        let rem = (Int(length % 64) + 1) % 64
        let zeros = rem <= 56 ? 56 - rem : 120 - rem
        pad += [UInt8](repeating: 0, count: zeros)
        for i in (0..<8).reversed() { pad.append(UInt8((bitLength >> (UInt64(i) * 8)) & 0xff)) }
        let savedLength = length
        pad.withUnsafeBytes { update($0) }
        length = savedLength
        precondition(buffer.isEmpty)
        let digits = Array("0123456789abcdef")
        var out = ""
        for word in h {
            for shift in stride(from: 28, through: 0, by: -4) { out.append(digits[Int((word >> UInt32(shift)) & 0xf)]) }
        }
        return out
    }

    private mutating func compressBuffer() {
        buffer.withUnsafeBytes { blocks($0.baseAddress!, 1) }
    }

    private mutating func blocks(_ p: UnsafeRawPointer, _ count: Int) {
        if useHardware {
            h.withUnsafeMutableBufferPointer {
                metatrain_sha256_blocks($0.baseAddress!, p.assumingMemoryBound(to: UInt8.self), count)
            }
        } else {
            for b in 0..<count { compress(p + 64 * b) }
        }
    }

    /// The round constants, from CSHA256 (one table for both block functions).
    private static let k = withUnsafeBytes(of: metatrain_sha256_k) { Array($0.bindMemory(to: UInt32.self)) }

    /// One 64-byte block. The message schedule lives on the stack and the state in locals
    /// (a heap-allocated schedule per block made fingerprints of large datasets slow).
    private mutating func compress(_ p: UnsafeRawPointer) {
        var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7]
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { w in
            for i in 0..<16 { w[i] = UInt32(bigEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)) }
            for i in 16..<64 {
                let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            SHA256.k.withUnsafeBufferPointer { k in
                for i in 0..<64 {
                    let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
                    let ch = (e & f) ^ (~e & g)
                    let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
                    let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
                    let maj = (a & b) ^ (a & c) ^ (b & c)
                    let t2 = s0 &+ maj
                    hh = g; g = f; f = e; e = d &+ t1; d = c; c = b; b = a; a = t1 &+ t2
                }
            }
        }
        h[0] &+= a; h[1] &+= b; h[2] &+= c; h[3] &+= d
        h[4] &+= e; h[5] &+= f; h[6] &+= g; h[7] &+= hh
    }
}

@inline(__always) private func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }

/// Little-endian byte writer for message bodies.
public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func int(_ v: Int) { i64(Int64(v)) }
    public mutating func f64(_ v: Double) { u64(v.bitPattern) }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func string(_ s: String) { let u = Array(s.utf8); u32(UInt32(u.count)); bytes.append(contentsOf: u) }
    public mutating func floats(_ a: [Float]) {
        u32(UInt32(a.count))
        a.withUnsafeBytes { bytes.append(contentsOf: $0) }   // little-endian hosts only (x86-64, arm64)
    }
    public mutating func floats(_ p: UnsafePointer<Float>, count: Int) {
        u32(UInt32(count))
        bytes.append(contentsOf: UnsafeRawBufferPointer(start: p, count: count * 4))
    }
    public mutating func doubles(_ a: [Double]) { u32(UInt32(a.count)); for x in a { f64(x) } }
    public mutating func ints(_ a: [Int]) { u32(UInt32(a.count)); for x in a { int(x) } }
}

/// Why a frame could not be decoded.
public enum WireError: Error, Equatable, CustomStringConvertible {
    case truncated(String)
    case badMagic
    case protocolMismatch(theirs: UInt16)
    case unknownType(UInt8)
    case invalid(String)

    public var description: String {
        switch self {
        case .truncated(let what): return "truncated message (reading \(what))"
        case .badMagic: return "not a metatrain message (bad magic)"
        case .protocolMismatch(let v): return "peer speaks protocol version \(v), this process speaks \(Envelope.protocolVersion)"
        case .unknownType(let t): return "unknown message type \(t)"
        case .invalid(let why): return "invalid message: \(why)"
        }
    }
}

/// Bounds-checked little-endian reader; every read can fail, none can crash.
public struct ByteReader {
    let bytes: [UInt8]
    public private(set) var pos = 0
    public init(_ b: [UInt8]) { bytes = b }
    public var remaining: Int { bytes.count - pos }

    mutating func take(_ n: Int, _ what: String) throws -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw WireError.truncated(what) }
        defer { pos += n }
        return bytes[pos..<(pos + n)]
    }
    public mutating func u8(_ w: String = "u8") throws -> UInt8 { try take(1, w).first! }
    public mutating func u16(_ w: String = "u16") throws -> UInt16 { try le(w) }
    public mutating func u32(_ w: String = "u32") throws -> UInt32 { try le(w) }
    public mutating func u64(_ w: String = "u64") throws -> UInt64 { try le(w) }
    public mutating func i64(_ w: String = "i64") throws -> Int64 { Int64(bitPattern: try u64(w)) }
    public mutating func int(_ w: String = "int") throws -> Int {
        let v = try i64(w)
        guard let i = Int(exactly: v) else { throw WireError.invalid("\(w) out of range") }
        return i
    }
    public mutating func f64(_ w: String = "f64") throws -> Double { Double(bitPattern: try u64(w)) }
    public mutating func bool(_ w: String = "bool") throws -> Bool {
        switch try u8(w) { case 0: return false; case 1: return true; default: throw WireError.invalid("\(w) is not a boolean") }
    }
    public mutating func string(_ w: String = "string") throws -> String {
        let n = Int(try u32(w))
        return String(decoding: try take(n, w), as: UTF8.self)
    }
    public mutating func floats(_ w: String = "floats") throws -> [Float] {
        let n = Int(try u32(w))
        guard n <= remaining / 4 else { throw WireError.truncated(w) }
        let s = try take(n * 4, w)
        return [Float](unsafeUninitializedCapacity: n) { buf, c in
            s.withUnsafeBytes { raw in UnsafeMutableRawBufferPointer(buf).copyMemory(from: raw) }
            c = n
        }
    }
    public mutating func doubles(_ w: String = "doubles") throws -> [Double] {
        let n = Int(try u32(w))
        guard n <= remaining / 8 else { throw WireError.truncated(w) }
        return try (0..<n).map { _ in try f64(w) }
    }
    public mutating func ints(_ w: String = "ints") throws -> [Int] {
        let n = Int(try u32(w))
        guard n <= remaining / 8 else { throw WireError.truncated(w) }
        return try (0..<n).map { _ in try int(w) }
    }
    private mutating func le<T: FixedWidthInteger>(_ w: String) throws -> T {
        let s = try take(MemoryLayout<T>.size, w)
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }
}

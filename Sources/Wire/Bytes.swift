#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// Where an encoder's bytes go: a growing array, a pre-sized frame, or nowhere
/// (counting only, to size a frame before filling it).
public protocol ByteSink {
    mutating func put(_ raw: UnsafeRawBufferPointer)
}

/// Little-endian writer for message bodies over any sink. Floats are written
/// as their raw bits (little-endian hosts only: x86-64, arm64).
public struct ByteWriter<Sink: ByteSink> {
    public var sink: Sink
    public init(_ sink: Sink) { self.sink = sink }

    public mutating func u8(_ v: UInt8) { withUnsafeBytes(of: v) { sink.put($0) } }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { sink.put($0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { sink.put($0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { sink.put($0) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func int(_ v: Int) { i64(Int64(v)) }
    public mutating func f64(_ v: Double) { u64(v.bitPattern) }
    public mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
    public mutating func string(_ s: String) {
        let u = Array(s.utf8)
        u32(UInt32(u.count))
        u.withUnsafeBytes { sink.put($0) }
    }
    public mutating func floats(_ f: Floats) {
        u32(UInt32(f.count))
        f.withUnsafeBytes { sink.put($0) }
    }
    public mutating func doubles(_ a: [Double]) { u32(UInt32(a.count)); for x in a { f64(x) } }
    public mutating func ints(_ a: [Int]) { u32(UInt32(a.count)); for x in a { int(x) } }
}

/// Collects bytes in an array.
public struct ArraySink: ByteSink {
    public var bytes: [UInt8] = []
    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }
    public mutating func put(_ raw: UnsafeRawBufferPointer) { bytes.append(contentsOf: raw) }
}

/// Counts bytes without storing them.
public struct CountingSink: ByteSink {
    public var count = 0
    public init() {}
    public mutating func put(_ raw: UnsafeRawBufferPointer) { count += raw.count }
}

/// Fills caller-owned memory (e.g. a ZeroMQ message buffer) of exactly the right size.
public struct RawSink: ByteSink {
    let base: UnsafeMutableRawBufferPointer
    public private(set) var position = 0
    public init(_ base: UnsafeMutableRawBufferPointer) { self.base = base }
    public mutating func put(_ raw: UnsafeRawBufferPointer) {
        precondition(position + raw.count <= base.count, "frame sized too small")
        if raw.count > 0 { (base.baseAddress! + position).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
        position += raw.count
    }
}

/// Immutable bytes that decoded messages may keep views into. Owns a copy,
/// or keeps another owner (a received ZeroMQ frame) alive.
public final class ByteBlock: @unchecked Sendable {
    public let bytes: UnsafeRawBufferPointer
    private let owner: AnyObject?
    private let owned: UnsafeMutableRawBufferPointer?

    /// A view of memory that stays valid and unchanged while `owner` is alive.
    public init(view: UnsafeRawBufferPointer, owner: AnyObject) {
        bytes = view; self.owner = owner; owned = nil
    }

    /// A private copy.
    public init(copying raw: UnsafeRawBufferPointer) {
        let m = UnsafeMutableRawBufferPointer.allocate(byteCount: max(raw.count, 1), alignment: 16)
        if raw.count > 0 { m.baseAddress!.copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
        owned = m; owner = nil
        bytes = UnsafeRawBufferPointer(start: m.baseAddress, count: raw.count)
    }

    /// A private copy of an array's bytes.
    public static func copy(of a: [UInt8]) -> ByteBlock { a.withUnsafeBytes { ByteBlock(copying: $0) } }

    deinit { owned?.deallocate() }
}

/// A run of float32s: either built from values or a view into a received
/// frame, so megabyte gradients and weights are read where they landed
/// instead of being copied into arrays. Equal when the bits are equal.
/// The view may be unaligned; read it with `load`, `withUnsafeBytes` or `copy`.
public struct Floats: Equatable, Sendable, ExpressibleByArrayLiteral, CustomStringConvertible {
    let block: ByteBlock
    let offset: Int
    public let count: Int

    public init(_ values: [Float]) {
        block = values.withUnsafeBytes { ByteBlock(copying: $0) }
        offset = 0; count = values.count
    }
    public init(arrayLiteral elements: Float...) { self.init(elements) }
    init(block: ByteBlock, offset: Int, count: Int) { self.block = block; self.offset = offset; self.count = count }
    /// A view of a whole block as floats (e.g. a parameter buffer about to be encoded).
    public init(viewing block: ByteBlock) {
        precondition(block.bytes.count % 4 == 0, "a block of \(block.bytes.count) bytes is not a run of floats")
        self.init(block: block, offset: 0, count: block.bytes.count / 4)
    }

    public var isEmpty: Bool { count == 0 }

    /// Whether every value is finite (no NaN, no infinity): 8 lanes at a time
    /// over the bit patterns, whose exponent is all ones only for those.
    public var allFinite: Bool {
        withUnsafeBytes { raw in
            let exponent = SIMD8<UInt32>(repeating: 0x7f80_0000)
            var i = 0, bad = SIMD8<UInt32>()
            while i + 8 <= count {
                let x = raw.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<UInt32>.self) & exponent
                bad.replace(with: 1, where: x .== exponent)
                i += 8
            }
            if bad != SIMD8<UInt32>() { return false }
            while i < count {
                if raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x7f80_0000 == 0x7f80_0000 {
                    return false
                }
                i += 1
            }
            return true
        }
    }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: block.bytes[offset..<(offset + 4 * count)]))
    }
    /// The first float's address (possibly unaligned); valid while this value is alive.
    public var baseAddress: UnsafeRawPointer? { count == 0 ? nil : block.bytes.baseAddress! + offset }
    public subscript(i: Int) -> Float {
        precondition(i >= 0 && i < count, "index \(i) out of range 0..<\(count)")
        return block.bytes.baseAddress!.loadUnaligned(fromByteOffset: offset + 4 * i, as: Float.self)
    }
    /// Copies the floats to `dst` (which must hold `count`).
    public func copy(to dst: UnsafeMutablePointer<Float>) {
        withUnsafeBytes {
            if $0.count > 0 { UnsafeMutableRawPointer(dst).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
    }
    public var array: [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, c in
            if let b = buf.baseAddress { copy(to: b) }
            c = count
        }
    }
    public static func == (a: Floats, b: Floats) -> Bool {
        // memcmp: spot checks compare megabyte gradients.
        a.count == b.count
            && a.withUnsafeBytes { x in
                b.withUnsafeBytes { y in x.isEmpty || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0 }
            }
    }
    public var description: String { count <= 8 ? "\(array)" : "Floats(\(count))" }
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
        case .protocolMismatch(let v):
            return "peer speaks protocol version \(v), this process speaks \(Envelope.protocolVersion)"
        case .unknownType(let t): return "unknown message type \(t)"
        case .invalid(let why): return "invalid message: \(why)"
        }
    }
}

/// Bounds-checked little-endian reader over a ByteBlock; every read can fail,
/// none can crash. Float runs come back as views into the block.
public struct ByteReader {
    let block: ByteBlock
    public private(set) var pos = 0
    public init(_ block: ByteBlock) { self.block = block }
    public var remaining: Int { block.bytes.count - pos }

    mutating func take(_ n: Int, _ what: String) throws -> UnsafeRawBufferPointer {
        guard n >= 0, remaining >= n else { throw WireError.truncated(what) }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: block.bytes[pos..<(pos + n)])
    }
    public mutating func u8(_ w: String = "u8") throws -> UInt8 { try take(1, w)[0] }
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
        switch try u8(w) {
        case 0: return false;
        case 1: return true;
        default: throw WireError.invalid("\(w) is not a boolean")
        }
    }
    public mutating func string(_ w: String = "string") throws -> String {
        let n = Int(try u32(w))
        return String(decoding: try take(n, w), as: UTF8.self)
    }
    /// A view of the floats in place (no copy).
    public mutating func floats(_ w: String = "floats") throws -> Floats {
        let n = Int(try u32(w))
        guard n <= remaining / 4 else { throw WireError.truncated(w) }
        let start = pos
        _ = try take(n * 4, w)
        return Floats(block: block, offset: start, count: n)
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
        return T(littleEndian: s.loadUnaligned(as: T.self))
    }
}

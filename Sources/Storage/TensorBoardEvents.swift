import Core
import Foundation

/// TensorBoard's event file, for scalars: a TFRecord file (each record: u64
/// length, masked CRC-32C of the length, the bytes, masked CRC-32C of the
/// bytes, all little-endian) of `Event` protocol buffers. The first event
/// carries `file_version` "brain.Event:2"; each later one a wall time, a step
/// and a `Summary` of `simple_value`s:
///
///     Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
///     Summary { repeated Value value = 1; }
///     Value   { string tag = 1; float simple_value = 2; }
///
/// `tensorboard --logdir RUN/tb` reads it; each process that writes to a run
/// directory adds a file of its own (TensorBoard merges them).
public final class TensorBoardEvents {
    public let path: String
    private let handle: FileHandle

    /// Creates DIR/events.out.tfevents.SECONDS.HOST.PID and writes its version record.
    public init(directory: String, now: Date = Date()) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path =
            directory
            + "/events.out.tfevents.\(Int(now.timeIntervalSince1970)).\(ProcessInfo.processInfo.hostName).\(getpid())"
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path)
        else {
            throw MetatrainError("\(path): cannot create TensorBoard event file")
        }
        handle = h
        var event = Proto()
        event.double(1, now.timeIntervalSince1970)
        event.bytes(3, Array("brain.Event:2".utf8))
        try write(record: event.bytes)
    }

    deinit { try? handle.close() }

    /// One event of scalars at `step` (tags as given; values as float32, as TensorBoard keeps them).
    public func scalars(_ values: [(tag: String, value: Double)], step: Int, wallTime: Double) throws {
        var summary = Proto()
        for (tag, value) in values {
            var v = Proto()
            v.bytes(1, Array(tag.utf8))
            v.float(2, Float(value))
            summary.bytes(1, v.bytes)
        }
        var event = Proto()
        event.double(1, wallTime)
        event.varint(2, UInt64(bitPattern: Int64(step)))
        event.bytes(5, summary.bytes)
        try write(record: event.bytes)
    }

    func write(record data: [UInt8]) throws {
        var out: [UInt8] = []
        let length = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
        out += length
        out += withUnsafeBytes(of: TensorBoardEvents.maskedCRC(length).littleEndian, Array.init)
        out += data
        out += withUnsafeBytes(of: TensorBoardEvents.maskedCRC(data).littleEndian, Array.init)
        do { try handle.write(contentsOf: Data(out)) } catch {
            throw MetatrainError("\(path): cannot write (\(error.localizedDescription))")
        }
    }

    /// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
    public static func crc32c(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }

    /// TFRecord's masked CRC: rotated right by 15 bits, plus a constant.
    public static func maskedCRC(_ bytes: [UInt8]) -> UInt32 {
        let c = crc32c(bytes)
        return ((c >> 15) | (c << 17)) &+ 0xA282_EAD8
    }

    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
        return c
    }
}

/// A protocol-buffer message being encoded (the three wire types scalars need).
struct Proto {
    var bytes: [UInt8] = []
    mutating func key(_ field: Int, _ wire: UInt64) { raw(UInt64(field) << 3 | wire) }
    mutating func raw(_ v: UInt64) {
        var v = v
        while v >= 0x80 { bytes.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        bytes.append(UInt8(v))
    }
    mutating func varint(_ field: Int, _ v: UInt64) { key(field, 0); raw(v) }
    mutating func double(_ field: Int, _ v: Double) {
        key(field, 1); bytes += withUnsafeBytes(of: v.bitPattern.littleEndian, Array.init)
    }
    mutating func float(_ field: Int, _ v: Float) {
        key(field, 5); bytes += withUnsafeBytes(of: v.bitPattern.littleEndian, Array.init)
    }
    mutating func bytes(_ field: Int, _ b: [UInt8]) { key(field, 2); raw(UInt64(b.count)); bytes += b }
}

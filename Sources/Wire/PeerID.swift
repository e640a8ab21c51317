/// A peer's identity on the coordinator's ROUTER socket: which connection a
/// message came from and goes to (a worker picks a random one, see docs/PROTOCOL.md).
public struct PeerID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(_ b: [UInt8]) { bytes = b }
    public var description: String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

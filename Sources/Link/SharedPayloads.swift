import Foundation
import Transport
import Wire

extension SharedView {
    /// Maps the file a hello offers (see `SharedArena`).
    convenience init(_ offer: PayloadStore) throws {
        let hex = Array(offer.token.utf8)
        guard hex.count == 32 else { throw SharedMemoryError("a token of \(hex.count) hex digits, expected 32") }
        var token: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let b = UInt8(String(decoding: hex[i..<(i + 2)], as: UTF8.self), radix: 16) else {
                throw SharedMemoryError("the token is not hex")
            }
            token.append(b)
        }
        try self.init(path: offer.path, token: token)
    }

    /// The two float runs a payload points to, read in place (the views keep this mapping alive).
    func floats(_ p: PayloadRef) throws -> (Floats, Floats) {
        let raw = try bytes(offset: p.offset, count: p.byteCount)
        return (
            Floats(
                viewing: ByteBlock(view: UnsafeRawBufferPointer(rebasing: raw[0..<(4 * p.thetaCount)]), owner: self)),
            Floats(viewing: ByteBlock(view: UnsafeRawBufferPointer(rebasing: raw[(4 * p.thetaCount)...]), owner: self))
        )
    }
}

extension SharedArena {
    /// This arena as the offer a hello or welcome carries.
    var offer: PayloadStore { PayloadStore(path: path, token: token.map { String(format: "%02x", $0) }.joined()) }

    /// Writes θ then α back to back into `space` (from `allocate` or `slot`) and says where they lie.
    static func put(_ theta: Floats, _ alpha: Floats, into space: (offset: Int, memory: UnsafeMutableRawBufferPointer))
        -> PayloadRef
    {
        let p = PayloadRef(offset: space.offset, thetaCount: theta.count, alphaCount: alpha.count)
        precondition(space.memory.count >= p.byteCount, "\(space.memory.count) bytes for a payload of \(p.byteCount)")
        let floats = space.memory.bindMemory(to: Float.self).baseAddress!
        theta.copy(to: floats)
        alpha.copy(to: floats + theta.count)
        return p
    }
}

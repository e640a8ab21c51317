// Module Link.
//
// The two ends of the coordinator–worker connection, in the spirit of
// ps-lite's "van": each link owns its sockets (Transport's ZeroMQ) and its
// shared-memory files and turns frames into envelopes (Wire) and back. It is
// the only code that knows where a payload lies: in the frame, or in a
// shared-memory file both processes map. A message's payload references
// (`PayloadRef`, `PayloadStore`) are resolved before it is handed on, and
// placed as the link sees fit when it is sent; what the link cannot keep up
// comes out as a typed event (`WorkerLink.Event`). Also here: CURVE key files
// and what connection events tell a person who cannot get in.

import Core
import Foundation
import Transport
import Wire

/// Messages a link hands over per `receive` call at most.
let receiveBatch = 256

/// A received frame: a message, or why it could not be read.
public enum Incoming {
    case message(Envelope)
    case undecodable(WireError)
}

/// The PUB endpoint that goes with a ROUTER endpoint: tcp port + 1, or the ipc path + ".pub".
public func publishEndpoint(for endpoint: String) throws -> String {
    if endpoint.hasPrefix("ipc://") { return endpoint + ".pub" }
    guard endpoint.hasPrefix("tcp://"), let colon = endpoint.lastIndex(of: ":"),
        let port = Int(endpoint[endpoint.index(after: colon)...]), port > 0, port < 65535
    else {
        throw MetatrainError(
            "endpoint '\(endpoint)' must be tcp://HOST:PORT (PORT+1 carries weight broadcasts) or ipc://PATH")
    }
    return String(endpoint[..<colon]) + ":\(port + 1)"
}

/// A line said at most once per `every` seconds: `due` answers how many
/// occurrences the line now stands for (this one and those held back), or nil
/// while it must stay quiet.
public struct RateLimitedLine {
    let every: Double
    private var last: Double?
    private var held = 0
    public init(every: Double) { self.every = every }
    public mutating func due(now: Double) -> Int? {
        held += 1
        if let last, now - last < every { return nil }
        last = now
        defer { held = 0 }
        return held
    }
}

import Transport

/// Turns a worker link's connection events into lines a person can act on:
/// why this worker cannot get in (nothing listens, keys missing or not let in,
/// a key that does not match), each naming the flag to fix. Each kind is said
/// once until a handshake succeeds; the worker keeps trying all the while.
/// A vague diagnosis (the handshake failed, the connect is retried) waits
/// `patience` seconds for a precise one: a mechanism mismatch often shows as a
/// bare failure (the server closed first), and the link then reads the
/// coordinator's greeting (`zmtpMechanism`) and adds the mismatch it finds.
struct JoinAdvice {
    let endpoint: String
    /// This worker's public key when it connects with CURVE (nil: no keys).
    let publicKey: String?
    var patience = 3.0
    private var said: Set<String> = []
    /// Vague lines seen and not yet said: (first seen, line).
    private var held: [String: (Double, String)] = [:]

    init(endpoint: String, publicKey: String?) { self.endpoint = endpoint; self.publicKey = publicKey }

    mutating func lines(for events: [ConnectionEvent], now: Double) -> [String] {
        var out: [String] = []
        // A diagnosis outranks what follows from it: after "requires keys" the closed connection
        // also fails its handshake and retries its connect, which would only mislead.
        let rank = ["unreachable": 0, "handshake": 1, "mechanism": 2, "auth": 2]
        func say(_ kind: String, _ line: String) {
            if said.contains(where: { rank[$0]! > rank[kind]! }) { return }
            if rank[kind]! < 2 {
                if held[kind] == nil && !said.contains(kind) { held[kind] = (now, line) }
                return
            }
            held = [:]
            if said.insert(kind).inserted { out.append(line + "; still trying") }
        }
        for e in events {
            switch e {
            case .handshakeSucceeded: said.removeAll(); held = [:]
            case .connectRetried:
                say(
                    "unreachable",
                    "cannot reach the coordinator at \(endpoint) (connection refused or unreachable): is it running, and is --connect right?"
                )
            case .mechanismMismatch:
                if publicKey != nil {
                    say(
                        "mechanism",
                        "the coordinator at \(endpoint) takes no keys: drop --key and --coordinator-key, or start it with --key and --authorized-keys"
                    )
                } else {
                    say(
                        "mechanism",
                        "the coordinator at \(endpoint) requires CURVE keys: give --key WORKER.secret and --coordinator-key COORDINATOR.pub (metatrain keygen), with WORKER.pub in the coordinator's --authorized-keys"
                    )
                }
            case .authenticationFailed(_, let status):
                say(
                    "auth",
                    "the coordinator at \(endpoint) refused this worker's key\(publicKey.map { " (public key \($0))" } ?? "")"
                        + (status == 400 ? "" : " with status \(status)")
                        + ": add its .pub file to the coordinator's --authorized-keys, or give --key a secret key it lists"
                )
            case .handshakeFailed, .protocolError:
                if publicKey != nil {
                    say(
                        "handshake",
                        "the CURVE handshake with the coordinator at \(endpoint) failed: is --coordinator-key the public half of the coordinator's --key?"
                    )
                } else {
                    say(
                        "handshake",
                        "the handshake with \(endpoint) failed: is a metatrain coordinator listening there (not another program)?"
                    )
                }
            case .disconnected: break
            }
        }
        for (kind, (since, line)) in held.sorted(by: { rank[$0.key]! > rank[$1.key]! }) where now - since >= patience {
            held[kind] = nil
            if said.contains(where: { rank[$0]! >= rank[kind]! }) { continue }
            said.insert(kind)
            out.append(line + "; still trying")
        }
        return out
    }
}

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// The security mechanism a ZMTP 3 peer listening at `endpoint` (tcp://HOST:PORT)
/// announces in its greeting ("NULL", "PLAIN", "CURVE"), or nil when nothing
/// answers as ZeroMQ does within `timeoutMs`.
///
/// Why: a libzmq client whose mechanism differs from the server's learns it only
/// if it reads the server's greeting before the server, having read the
/// client's, closes the connection; when the server is first, the client sees a
/// bare failed handshake (a reset), and cannot tell "keys required" from "not a
/// ZeroMQ peer". This probe sends only the greeting's first 11 bytes (signature
/// and major version 3, ZMTP 3.0 §"Greeting"): a libzmq server then sends its
/// whole 64-byte greeting, mechanism included, and has not yet seen a mechanism
/// of ours to refuse. The probe then closes; the server counts a failed handshake.
public func zmtpMechanism(at endpoint: String, timeoutMs: Int) -> String? {
    guard endpoint.hasPrefix("tcp://"), let colon = endpoint.lastIndex(of: ":") else { return nil }
    var host = String(endpoint[endpoint.index(endpoint.startIndex, offsetBy: 6)..<colon])
    let port = String(endpoint[endpoint.index(after: colon)...])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, port, &hints, &list) == 0, let first = list else { return nil }
    defer { freeaddrinfo(list) }
    let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    // Bounded waits: connect, send and receive each give up after `timeoutMs`.
    var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: Int((timeoutMs % 1000) * 1000))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else { return nil }
    // Signature (0xFF, 8 bytes of padding, 0x7F) and major version 3.
    let opening: [UInt8] = [0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3]
    guard opening.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == opening.count
    else { return nil }
    var greeting = [UInt8](repeating: 0, count: 64)
    var have = 0
    while have < 64 {
        let n = greeting.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + have, 64 - have, 0) }
        guard n > 0 else { return nil }
        have += n
    }
    // A ZMTP 3 greeting: signature, major 3, minor, 20-byte mechanism name padded with zeros.
    guard greeting[0] == 0xFF, greeting[9] & 1 == 1, greeting[10] == 3 else { return nil }
    let name = greeting[12..<32].prefix { $0 != 0 }
    guard !name.isEmpty, name.allSatisfy({ (0x21...0x7E).contains($0) }) else { return nil }
    return String(decoding: name, as: UTF8.self)
}

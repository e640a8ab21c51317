import XCTest

@testable import Transport

#if canImport(Glibc)
import Glibc
#endif

final class TransportTests: XCTestCase {
    func testRouterDealerRoundTripOverTCP() throws {
        let ctx = ZMQContext()
        let router = try ZMQSocket(ctx, .router)
        try router.bind("tcp://127.0.0.1:*")
        let dealer = try ZMQSocket(ctx, .dealer)
        try dealer.connect(router.lastEndpoint)
        try dealer.send([[1, 2, 3], Array("payload".utf8)])
        let got = try XCTUnwrap(try router.receive(timeoutMs: 5000))
        XCTAssertEqual(got.count, 3) // identity + 2 frames
        XCTAssertEqual(got[1], [1, 2, 3])
        try router.send([got[0], Array("reply".utf8)])
        XCTAssertEqual(try dealer.receive(timeoutMs: 5000), [Array("reply".utf8)])
        XCTAssertNil(try dealer.receive(timeoutMs: 10))
    }

    func testBindErrorNamesEndpoint() throws {
        let ctx = ZMQContext()
        let s = try ZMQSocket(ctx, .router)
        XCTAssertThrowsError(try s.bind("bogus://x")) { XCTAssertTrue("\($0)".contains("bogus://x")) }
        XCTAssertGreaterThanOrEqual(zmqVersion().0, 4)
        XCTAssertTrue(zmqHasCurve())
    }

    /// The greeting probe reads the mechanism a ZeroMQ server announces, every time (a client's own
    /// failed handshake may not: the server can close first), and nothing from what is not ZeroMQ.
    func testGreetingProbeReadsTheServersMechanism() throws {
        let ctx = ZMQContext()
        let curve = try ZMQSocket(ctx, .router)
        try curve.setCurveServer(secretKey: try CurveKeyPair.generate().secretKey)
        try curve.bind("tcp://127.0.0.1:*")
        let plain = try ZMQSocket(ctx, .router)
        try plain.bind("tcp://127.0.0.1:*")
        for _ in 0..<20 {
            XCTAssertEqual(zmtpMechanism(at: curve.lastEndpoint, timeoutMs: 2000), "CURVE")
            XCTAssertEqual(zmtpMechanism(at: plain.lastEndpoint, timeoutMs: 2000), "NULL")
        }
        // A listener that accepts and never speaks (the kernel accepts into its backlog).
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        XCTAssertTrue(bound && listen(fd, 4) == 0)
        let silent = "tcp://127.0.0.1:\(UInt16(bigEndian: addr.sin_port))"
        XCTAssertNil(zmtpMechanism(at: silent, timeoutMs: 200))
        close(fd)
        XCTAssertNil(zmtpMechanism(at: silent, timeoutMs: 200), "nothing listens")
        XCTAssertNil(zmtpMechanism(at: "ipc:///tmp/x", timeoutMs: 200))
    }
}

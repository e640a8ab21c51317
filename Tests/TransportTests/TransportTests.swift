import XCTest

@testable import Transport

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
}

import Transport
import XCTest

@testable import Link

/// What a worker that cannot get in says, from its socket's events alone (no sockets, a manual clock).
final class JoinAdviceTests: XCTestCase {
    let at = "tcp://10.0.0.1:5555"

    func testAPreciseReasonOutranksTheVagueOnesBeforeAndAfterIt() {
        var a = JoinAdvice(endpoint: at, publicKey: nil)
        // A keyless worker's first failed handshake often shows as a bare failure, then the mismatch.
        XCTAssertEqual(a.lines(for: [.handshakeFailed(address: at), .disconnected(address: at)], now: 0), [])
        let lines = a.lines(for: [.connectRetried(address: at), .mechanismMismatch(address: at)], now: 0.5)
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].contains("requires CURVE keys: give --key WORKER.secret"), lines[0])
        // Said once, and the vague ones never after it.
        XCTAssertEqual(a.lines(for: [.mechanismMismatch(address: at), .handshakeFailed(address: at)], now: 9), [])
    }

    func testAVagueReasonIsSaidWhenNothingPreciseFollows() {
        var a = JoinAdvice(endpoint: at, publicKey: "KEY")
        XCTAssertEqual(a.lines(for: [.handshakeFailed(address: at)], now: 0), [])
        XCTAssertEqual(a.lines(for: [], now: 2.9), [])
        let lines = a.lines(for: [.connectRetried(address: at)], now: 3)
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].contains("is --coordinator-key the public half"), lines[0])
        XCTAssertEqual(a.lines(for: [], now: 10), [], "unreachable is outranked by the handshake already said")
    }

    func testEachKindAgainAfterAHandshakeSucceeds() {
        var a = JoinAdvice(endpoint: at, publicKey: "KEY")
        XCTAssertEqual(a.lines(for: [.authenticationFailed(address: at, status: 400)], now: 0).count, 1)
        XCTAssertEqual(a.lines(for: [.authenticationFailed(address: at, status: 400)], now: 1).count, 0)
        XCTAssertEqual(a.lines(for: [.handshakeSucceeded(address: at)], now: 2).count, 0)
        let again = a.lines(for: [.authenticationFailed(address: at, status: 400)], now: 3)
        XCTAssertEqual(again.count, 1)
        XCTAssertTrue(again[0].contains("refused this worker's key (public key KEY)"), again[0])
    }

    func testNothingListeningIsSaidAfterPatience() {
        var a = JoinAdvice(endpoint: at, publicKey: nil)
        XCTAssertEqual(a.lines(for: [.connectRetried(address: at)], now: 0), [])
        let lines = a.lines(for: [.connectRetried(address: at)], now: 3.5)
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].contains("cannot reach the coordinator at \(at)"), lines[0])
    }
}

import Foundation
import Transport
import Wire
import XCTest

@testable import Link

/// The coordinator's link over real sockets: what it keeps of each peer between a hello and its welcome.
final class CoordinatorLinkTests: XCTestCase {
    /// A refusal of an earlier message leaves a later hello's shared-memory offer in the same
    /// batch: the welcome still maps the worker's file and offers the coordinator's. (Seen in a
    /// fresh-clone CI run: a host agent's stale result and its new hello reached a restarted
    /// coordinator in one batch; the result's refusal dropped the hello's offer, and the agent
    /// joined without shared memory.)
    func testARefusalBeforeAHelloOfTheSameBatchKeepsTheHellosOffer() throws {
        final class Lines: @unchecked Sendable { var all: [String] = [] }
        let lines = Lines()
        let link = CoordinatorLink(endpoint: "tcp://127.0.0.1:0", log: { lines.all.append($0) })
        let ctx = ZMQContext()
        try link.bind(ctx)
        let arena = try SharedArena(name: "test-offer")
        let dealer = try ZMQSocket(ctx, .dealer)
        try dealer.connect(link.boundEndpoint)
        try dealer.send([Envelope(runId: "an-old-run", message: .ready).encode()])
        let hello = Hello(workerName: "w", datasetFingerprint: "f", store: arena.offer)
        try dealer.send([Envelope(runId: "", message: .hello(hello)).encode()])
        // Both wait at the ROUTER before the link reads: one batch.
        var batch: [(PeerID, Incoming)] = []
        let deadline = Date().addingTimeInterval(10)
        Thread.sleep(forTimeInterval: 0.3)
        while batch.count < 2 && Date() < deadline { batch += try link.receive(timeoutMs: 100) }
        XCTAssertEqual(batch.count, 2)
        let peer = batch[0].0
        // What the machine answers, in order: the result from an unknown peer, then the hello.
        link.send(peer, .refuse(.unknownWorker, detail: "who are you?"))
        link.send(peer, .welcome(Welcome(configJSON: "{}", version: 0)))
        XCTAssertTrue(
            lines.all.contains("worker w: results through shared memory (\(arena.offer.path))"), "\(lines.all)")
        var replies: [Message] = []
        while replies.count < 2 && Date() < deadline, let frames = try dealer.receive(timeoutMs: 100) {
            replies.append(try Envelope.decode(frames[0]).message)
        }
        guard replies.count == 2, case .welcome(let w) = replies[1] else { return XCTFail("\(replies)") }
        XCTAssertNotNil(w.store, "the welcome offers the coordinator's weights file")
    }
}

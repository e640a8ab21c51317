import Foundation
import Runtime
import XCTest

final class TraceTests: XCTestCase {
    func testTimelineRoundTripsThroughItsFile() throws {
        let t = Trace(process: "worker \"a\"")
        t.mark(.work, 7); t.mark(.compute, 7); t.mark(.computed, 7); t.mark(.sent, 7)
        let path = NSTemporaryDirectory() + "trace-\(getpid()).jsonl"
        defer { unlink(path) }
        try t.write(to: path)
        let back = try Trace.read(path)
        XCTAssertEqual(back.map(\.event), [.work, .compute, .computed, .sent])
        XCTAssertEqual(back.map(\.n), [7, 7, 7, 7])
        XCTAssertEqual(back.map(\.process), Array(repeating: "worker \"a\"", count: 4))
        // Microsecond timestamps survive, and they are monotonic.
        for (a, b) in zip(t.records, back) { XCTAssertEqual(a.t, b.t, accuracy: 1e-6) }
        XCTAssertEqual(back.map(\.t), back.map(\.t).sorted())
    }

    func testAMalformedLineIsNamedWithItsFileAndLine() throws {
        let path = NSTemporaryDirectory() + "trace-bad-\(getpid()).jsonl"
        defer { unlink(path) }
        try
            "{\"t\":1.0,\"process\":\"w\",\"event\":\"work\",\"n\":1}\n{\"t\":2.0,\"process\":\"w\",\"event\":\"nap\",\"n\":1}\n"
            .write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Trace.read(path)) { XCTAssertTrue("\($0)".contains("\(path):2"), "\($0)") }
    }

    /// Two iterations of 100 ms; worker a computes 2–40 and 41–80, worker b 3–50 and 52–90 (ms).
    func testBreakdownSplitsEachWorkersIterationIntoComputeAndIdleParts() {
        var r: [Trace.Record] = []
        func add(_ ms: Double, _ p: String, _ e: Trace.Event, _ n: Int) {
            r.append(.init(t: ms / 1000, process: p, event: e, n: n))
        }
        for it in 0..<2 {
            let o = Double(100 * it)
            add(o, "coordinator", .published, it)
            add(o + 2, "a", .compute, 1); add(o + 40, "a", .computed, 1)
            add(o + 41, "a", .compute, 2); add(o + 80, "a", .computed, 2)
            add(o + 3, "b", .compute, 3); add(o + 50, "b", .computed, 3)
            add(o + 52, "b", .compute, 4); add(o + 90, "b", .computed, 4)
        }
        add(200, "coordinator", .published, 2)
        let p = IterationBreakdown(r, versions: 1...2)
        XCTAssertEqual(p.iterations, 2)
        XCTAssertEqual(p.length, 0.100, accuracy: 1e-9)
        XCTAssertEqual(p.compute, 0.0810, accuracy: 1e-9) // (77 + 85) / 2
        XCTAssertEqual(p.start, 0.0025, accuracy: 1e-9) // (2 + 3) / 2
        XCTAssertEqual(p.between, 0.0015, accuracy: 1e-9) // (1 + 2) / 2
        XCTAssertEqual(p.tail, 0.0050, accuracy: 1e-9) // (10 + 0) / 2
        XCTAssertEqual(p.end, 0.0100, accuracy: 1e-9) // 90 → 100
        XCTAssertEqual(p.compute + p.start + p.between + p.tail + p.end, p.length, accuracy: 1e-9)
        // Versions without both publishes are skipped, not guessed.
        XCTAssertEqual(IterationBreakdown(r, versions: 3...4).iterations, 0)
    }
}

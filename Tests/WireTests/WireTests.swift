import XCTest

@testable import Wire

final class WireTests: XCTestCase {
    let samples: [Message] = [
        .hello(Hello(workerName: "w1@host", datasetFingerprint: "abc123")),
        .hello(
            Hello(
                workerName: "w3", datasetFingerprint: "abc123",
                hardware: Hardware(cpuModel: "AMD EPYC 7B13", blasCore: "Zen"))),
        .hello(
            Hello(
                workerName: "w2@host", datasetFingerprint: "abc123",
                store: PayloadStore(path: "/proc/12/fd/7", token: String(repeating: "0f", count: 16)))),
        .welcome(Welcome(configJSON: "{\"seed\":1}", version: 7)),
        .welcome(
            Welcome(
                configJSON: "{}", version: 0,
                store: PayloadStore(path: "/proc/9/fd/4", token: String(repeating: "a1", count: 16)))),
        .refuse(.datasetFingerprint, detail: "worker has 0123…, coordinator has 4567…"),
        .refuse(.unknownWorker, detail: ""),
        .ready, .fetchWeights, .heartbeat,
        .work(WorkUnit(id: 3, kind: .train, version: 7, episodes: [5, 1, 9, 2])),
        .work(WorkUnit(id: 4, kind: .eval, version: 8, episodes: [])),
        .work(WorkUnit(id: 6, kind: .train, version: 9, leaves: [[1, 2], [3], [4, 5, 6, 7]])),
        .hello(Hello(workerName: "agent", datasetFingerprint: "abc123", procs: 16)),
        .trainResult(
            TrainResult(
                unitId: 3, version: 7, gradTheta: [1, -2.5, .leastNonzeroMagnitude], gradAlpha: [], lossSum: 1.25,
                tasks: 4)),
        .trainResult(
            TrainResult(
                unitId: 5, version: 7, gradTheta: [], gradAlpha: [], lossSum: -0.5, tasks: 2,
                ref: PayloadRef(offset: 4096 + 64, thetaCount: 368_000, alphaCount: 368_000))),
        .evalResult(
            EvalResult(
                unitId: 4, version: 8, sums: [1, 2, 3, 4, 5, 6, 0, 1, 1, 0.5, 0.5, 1], queries: [10, 3],
                losses: [3.5, 0.25])),
        .weights(Weights(version: 8, theta: [0.5, 0.25], alpha: [0.01, 0.02])),
        .weights(
            Weights(
                version: 9, theta: [], alpha: [],
                ref: PayloadRef(offset: 8192, thetaCount: 368_000, alphaCount: 0))),
        .shutdown(reason: "finished"),
        .goodbye(reason: "internal: unit 2 failed — ünïcode"),
        .unitFailed(unitId: 17, reason: "crashed agent-1 (signal 4) and agent-2 (signal 4)")
    ]

    /// Every message type has a sample here, so the round trips cover the whole protocol.
    func testSamplesCoverEveryMessageType() {
        XCTAssertEqual(Set(samples.map(\.kind)), Set(MessageKind.allCases), "a sample of every kind")
        XCTAssertEqual(Set(MessageKind.allCases.map(\.name)).count, MessageKind.allCases.count, "names differ")
        for m in samples { XCTAssertEqual(Envelope.typeCode(m), m.kind.rawValue) }
    }

    func testRoundTripEveryMessage() throws {
        for m in samples {
            let e = Envelope(runId: "run-42", message: m)
            XCTAssertEqual(try Envelope.decode(e.encode()), e, m.typeName)
        }
    }

    /// `encode(into:)` (straight into a ZeroMQ message) writes exactly `encode()`'s bytes.
    func testEncodingIntoAFrameMatchesTheArrayEncoding() {
        for m in samples {
            let e = Envelope(runId: "run-42", message: m)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: e.encodedCount, alignment: 1)
            defer { buf.deallocate() }
            e.encode(into: buf)
            XCTAssertEqual(Array(buf), e.encode(), m.typeName)
        }
    }

    /// Every non-finite value is found, wherever it lies in a run of floats (lanes and tail), at any offset.
    func testAllFiniteFindsEveryNaNAndInfinity() throws {
        for count in [0, 1, 7, 8, 9, 17, 64] {
            XCTAssertTrue(Floats([Float](repeating: 3.4e38, count: count)).allFinite)
            for at in 0..<count {
                for bad in [Float.nan, .infinity, -.infinity, .signalingNaN] {
                    var x = [Float](repeating: -1, count: count)
                    x[at] = bad
                    XCTAssertFalse(Floats(x).allFinite, "\(bad) at \(at) of \(count)")
                    // Unaligned, as decoded in place from a frame.
                    let e = Envelope(runId: "r", message: .weights(Weights(version: 1, theta: Floats(x), alpha: [])))
                    guard case .weights(let w) = try Envelope.decode(ByteBlock.copy(of: e.encode())).message else {
                        return XCTFail()
                    }
                    XCTAssertFalse(w.theta.allFinite)
                }
            }
        }
    }

    /// Counts that cannot be right are malformed: a unit of no leaves, a host of no processes.
    func testImpossibleCountsAreMalformed() {
        var bytes = Envelope(runId: "r", message: .work(WorkUnit(id: 1, kind: .train, version: 0, leaves: [[1]])))
            .encode()
        let leafCount = bytes.count - 12 - 4 // u32 leaves, then the one leaf: u32 count and one i64
        bytes.replaceSubrange(leafCount..<(leafCount + 4), with: [0, 0, 0, 0])
        XCTAssertThrowsError(try Envelope.decode(bytes))
        bytes.replaceSubrange(leafCount..<(leafCount + 4), with: [255, 255, 255, 127])
        XCTAssertThrowsError(try Envelope.decode(bytes))
        let long = Envelope(
            runId: "r",
            message: .hello(Hello(workerName: String(repeating: "w", count: 20 << 20), datasetFingerprint: "f")))
        XCTAssertThrowsError(try Envelope.decode(long.encode())) { e in
            XCTAssertEqual("\(e)", "invalid message: hello with a worker name of 20971520 bytes (at most 256)")
        }
        XCTAssertThrowsError(
            try Envelope.decode(
                Envelope(
                    runId: "r",
                    message: .hello(
                        Hello(
                            workerName: "w", datasetFingerprint: "f",
                            procs: 1 << 40))
                ).encode()))
        var hello = Envelope(runId: "r", message: .hello(Hello(workerName: "w", datasetFingerprint: "f", procs: 1)))
            .encode()
        let procs = hello.count - 1 - 8 // int procs, then bool (no offer)
        hello.replaceSubrange(procs..<(procs + 8), with: [0, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertThrowsError(try Envelope.decode(hello))
    }

    func testFloatsKeepTheirBits() throws {
        let x: [Float] = [.nan, -0.0, .infinity, 1.0000001, .ulpOfOne]
        let e = Envelope(runId: "r", message: .weights(Weights(version: 1, theta: Floats(x), alpha: [])))
        guard case .weights(let w) = try Envelope.decode(e.encode()).message else { return XCTFail() }
        XCTAssertEqual(w.theta.array.map(\.bitPattern), x.map(\.bitPattern))
        XCTAssertNotEqual(Floats([0.0]), Floats([-0.0]), "equality is bitwise")
    }

    /// Decoding in place: gradients are views into the received frame (at an
    /// unaligned offset here), kept alive by the message, not copies.
    func testDecodedFloatsAreViewsThatKeepTheFrameAlive() throws {
        let g = (0..<1000).map { Float($0) * 0.5 - 3 }
        let e = Envelope(
            runId: "odd",
            message: .trainResult(
                TrainResult(
                    unitId: 1, version: 2, gradTheta: Floats(g),
                    gradAlpha: [], lossSum: 1, tasks: 4)))
        var decoded: TrainResult?
        do {
            let block = ByteBlock.copy(of: e.encode())
            guard case .trainResult(let r) = try Envelope.decode(block).message else { return XCTFail() }
            let start = block.bytes.baseAddress!, end = start + block.bytes.count
            let p = try XCTUnwrap(r.gradTheta.baseAddress)
            XCTAssertTrue(p >= start && p < end, "a view into the frame")
            XCTAssertNotEqual(Int(bitPattern: p) % 4, 0, "this run id puts the floats at an unaligned offset")
            decoded = r
        }
        // The block went out of scope; the view still reads the right values.
        XCTAssertEqual(decoded?.gradTheta.array, g)
        XCTAssertEqual(decoded?.gradTheta[999], g[999])
    }

    func testMalformedFramesThrowAndNeverCrash() {
        let good = Envelope(
            runId: "run", message: .work(WorkUnit(id: 1, kind: .train, version: 2, episodes: [1, 2, 3]))
        ).encode()
        // Every truncation is an error.
        for n in 0..<good.count { XCTAssertThrowsError(try Envelope.decode(Array(good.prefix(n))), "prefix \(n)") }
        XCTAssertThrowsError(try Envelope.decode(good + [0])) { XCTAssertTrue("\($0)".contains("trailing")) }
        XCTAssertThrowsError(try Envelope.decode(Array("GET / HTTP/1.1".utf8))) {
            XCTAssertEqual($0 as? WireError, .badMagic)
        }
        for code: UInt8 in [0, 6, 15, 200] {
            var unknown = good; unknown[6] = code
            XCTAssertThrowsError(try Envelope.decode(unknown)) { XCTAssertEqual($0 as? WireError, .unknownType(code)) }
        }
        // A train result's payload is either in the message (0) or in shared memory (1).
        var place = Envelope(
            runId: "run",
            message: .trainResult(
                TrainResult(
                    unitId: 1, version: 2, gradTheta: [1], gradAlpha: [],
                    lossSum: 0, tasks: 1))
        ).encode()
        place[4 + 2 + 1 + 4 + 3 + 16] = 2
        XCTAssertThrowsError(try Envelope.decode(place)) {
            XCTAssertEqual($0 as? WireError, .invalid("unknown payload place"))
        }
        // Random garbage after a valid header never crashes.
        var g = 0x9E3779B97F4A7C15 as UInt64
        for _ in 0..<2000 {
            var b = Array(good.prefix(7))
            for _ in 0..<Int(g % 60) {
                g = g &* 6364136223846793005 &+ 1442695040888963407; b.append(UInt8(truncatingIfNeeded: g >> 33))
            }
            _ = try? Envelope.decode(b)
        }
    }

    func testOtherProtocolVersionIsNamed() {
        let e = Envelope(
            runId: "r", message: .hello(Hello(workerName: "w", datasetFingerprint: "f")), protocolVersion: 99)
        XCTAssertThrowsError(try Envelope.decode(e.encode())) { err in
            XCTAssertEqual(err as? WireError, .protocolMismatch(theirs: 99))
            XCTAssertTrue("\(err)".contains("protocol version 99"))
        }
        XCTAssertEqual(try Envelope.peekHeader(e.encode()).protocolVersion, 99)
    }
}

/// docs/PROTOCOL.md's worked example is what the encoder writes, byte for byte, and decodes back:
/// the document a second implementation follows is the protocol.
final class ProtocolDocumentTests: XCTestCase {
    func testTheWorkedExampleIsWhatTheEncoderWrites() throws {
        let doc = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("docs/PROTOCOL.md")
        let text = try String(contentsOf: doc, encoding: .utf8)
        var lines: [String: [UInt8]] = [:]
        for line in text.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard let name = words.first, ["hello", "welcome", "work", "train_result"].contains(String(name)),
                words.count > 10
            else { continue }
            lines[String(name)] = words.dropFirst().map { UInt8($0, radix: 16)! }
        }
        let expected: [(String, Envelope)] = [
            ("hello", Envelope(runId: "", message: .hello(Hello(workerName: "w1", datasetFingerprint: "ab12")))),
            ("welcome", Envelope(runId: "r1", message: .welcome(Welcome(configJSON: "{}", version: 0)))),
            (
                "work",
                Envelope(runId: "r1", message: .work(WorkUnit(id: 0, kind: .train, version: 0, leaves: [[3, 5]])))
            ),
            (
                "train_result",
                Envelope(
                    runId: "r1",
                    message: .trainResult(
                        TrainResult(
                            unitId: 0, version: 0, gradTheta: [1.0, -0.5], gradAlpha: [], lossSum: 2.25, tasks: 2)))
            )
        ]
        for (name, e) in expected {
            let bytes = try XCTUnwrap(lines[name], "docs/PROTOCOL.md has no '\(name)' line")
            XCTAssertEqual(e.encode(), bytes, name)
            XCTAssertEqual(try Envelope.decode(bytes), e, name)
        }
    }
}

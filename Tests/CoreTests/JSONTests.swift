import Foundation
import Testing

@testable import Core

/// The JSON writer used for report.json and metrics.jsonl.
@Suite struct JSONTests {
    @Test func keepsKeyOrderAndEscapes() {
        let j: JSON = .object([
            ("b", .int(1)), ("a", .string("x\"y\n")), ("c", .array([.number(0.5), .null, .bool(true)]))
        ])
        #expect(j.compact == #"{"b":1,"a":"x\"y\n","c":[0.5,null,true]}"#)
    }

    @Test func nonFiniteNumbersBecomeNull() {
        #expect(JSON.number(.nan).compact == "null")
        #expect(JSON.number(.infinity).compact == "null")
    }

    @Test func prettyOutputParsesBack() throws {
        let j: JSON = .object([("split", .string("test")), ("n", .int(3)), ("m", .object([("hr@10", .number(0.25))]))])
        let back = try JSON.parse(j.pretty)
        #expect(back["split"]?.string == "test")
        #expect(back["n"]?.double == 3)
        #expect(back["m"]?["hr@10"]?.double == 0.25)
    }

    /// Every number written reads back as the same double, bit for bit: a Unix time
    /// keeps its milliseconds, a p-value its small digits (they once kept 6).
    @Test func numbersReadBackBitForBit() throws {
        var rng = SeededGenerator(seed: 11)
        var values: [Double] = [
            1_796_320_123.456, 0.1, 1.0 / 3.0, 1e-300, Double.leastNonzeroMagnitude, -0.0, 123_456_789_012_345_680,
            0.000_012_345_678_9,
            Double(Float(0.1)), 3
        ]
        for _ in 0..<2000 {
            let d = Double(bitPattern: rng.next())
            if d.isFinite { values.append(d) }
        }
        // Read back with strtod (Swift's Double(String)); Foundation's JSON reader on Linux is
        // itself not exact, so it is no judge here. CLI tests read the files with Python's json.
        let text = JSON.array(values.map { .number($0) }).compact
        let tokens = text.dropFirst().dropLast().split(separator: ",")
        #expect(tokens.count == values.count)
        for (v, t) in zip(values, tokens) {
            let d = Double(String(t))
            #expect(d?.bitPattern == v.bitPattern, "\(v) was written as \(t)")
        }
        #expect(JSON.number(1_796_320_123.456).compact == "1796320123.456")
    }
}

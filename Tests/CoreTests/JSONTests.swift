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
}

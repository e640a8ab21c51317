import Core
import Datasets
import Foundation

/// A request the service refuses, with the HTTP status and the field at fault.
public struct RequestError: Error, Sendable {
    public var status: Int
    public var message: String
    public var field: String
    public init(_ status: Int, _ field: String, _ message: String) {
        self.status = status; self.field = field; self.message = message
    }
    /// `{"error": "field: message", "field": "field"}`.
    public var json: String {
        JSON.object([("error", .string(field.isEmpty ? message : "\(field): \(message)")), ("field", .string(field))])
            .compact
    }
}

/// The body of `POST /v1/recommend` (docs/SERVING.md), checked field by field.
public struct RecommendRequest: Sendable {
    public static let maxEvents = 10_000
    public var events: Prepare.Events
    public var k: Int
    public var includeSeen: Bool

    /// Parses and checks a body; `catalogue` bounds k. Every refusal names its field.
    public static func parse(_ body: [UInt8], catalogue: Int) throws(RequestError) -> RecommendRequest {
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: Data(body), options: []) } catch {
            throw RequestError(400, "body", "not JSON")
        }
        guard let object = root as? [String: Any] else {
            throw RequestError(400, "body", "not a JSON object")
        }
        let known: Set<String> = ["events", "k", "include_seen"]
        if let extra = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw RequestError(400, extra, "unknown field (known: events, k, include_seen)")
        }
        var k = 10
        if let raw = object["k"] {
            guard let v = integer(raw) else { throw RequestError(400, "k", "not an integer") }
            guard v >= 1 && v <= catalogue else {
                throw RequestError(400, "k", "\(v) is outside 1...\(catalogue) (the catalogue's size)")
            }
            k = v
        }
        var includeSeen = false
        if let raw = object["include_seen"] {
            guard let b = boolean(raw) else { throw RequestError(400, "include_seen", "not true or false") }
            includeSeen = b
        }
        guard let rawEvents = object["events"] else { throw RequestError(400, "events", "required") }
        guard let list = rawEvents as? [Any] else { throw RequestError(400, "events", "not an array") }
        guard list.count <= maxEvents else {
            throw RequestError(400, "events", "\(list.count) events; at most \(maxEvents)")
        }
        var ev = Prepare.Events(), names = Prepare.Interning()
        var sessions: Bool?, actions: Bool?
        for (i, raw) in list.enumerated() {
            let at = "events[\(i)]"
            guard let e = raw as? [String: Any] else { throw RequestError(400, at, "not an object") }
            let fields: Set<String> = ["item", "time", "session", "action"]
            if let extra = e.keys.sorted().first(where: { !fields.contains($0) }) {
                throw RequestError(400, "\(at).\(extra)", "unknown field (known: item, time, session, action)")
            }
            guard let itemRaw = e["item"] else { throw RequestError(400, "\(at).item", "required") }
            guard let item = text(itemRaw), !item.isEmpty else {
                throw RequestError(400, "\(at).item", "not a course id (a string or an integer)")
            }
            guard let timeRaw = e["time"] else { throw RequestError(400, "\(at).time", "required") }
            guard let timeText = text(timeRaw, fractions: true), let time = parseTime(timeText) else {
                throw RequestError(400, "\(at).time", "not a date (ISO-8601 or unix seconds)")
            }
            func optional(_ name: String, _ seen: inout Bool?) throws(RequestError) -> String? {
                let value = e[name].flatMap { text($0) }
                if e[name] != nil && value == nil {
                    throw RequestError(400, "\(at).\(name)", "not a string or an integer")
                }
                if let seen, seen != (value != nil) {
                    throw RequestError(
                        400, "\(at).\(name)",
                        value == nil ? "missing while other events have one" : "given while others have none")
                }
                seen = value != nil
                return value
            }
            let session = try optional("session", &sessions)
            let action = try optional("action", &actions)
            ev.append(user: "learner", item: item, time: time, session: session, action: action, interning: &names)
        }
        return RecommendRequest(events: ev, k: k, includeSeen: includeSeen)
    }

    /// A JSON integer (not a boolean, not a fraction).
    static func integer(_ v: Any) -> Int? {
        guard let n = v as? NSNumber, !isBoolean(n) else { return nil }
        let d = n.doubleValue
        guard d.isFinite, d == d.rounded(), abs(d) < 9e15 else { return nil }
        return n.intValue
    }

    static func boolean(_ v: Any) -> Bool? {
        guard let n = v as? NSNumber, isBoolean(n) else { return nil }
        return n.boolValue
    }

    /// JSON's true and false come back from Foundation as NSNumber's boolean subclass.
    static func isBoolean(_ n: NSNumber) -> Bool { String(describing: type(of: n)).contains("Boolean") }

    /// A string as it is, an integer in decimal (a number with a fraction only for `fractions`).
    static func text(_ v: Any, fractions: Bool = false) -> String? {
        if let s = v as? String { return s }
        guard let n = v as? NSNumber, !isBoolean(n) else { return nil }
        if let i = integer(n) { return String(i) }
        return fractions && n.doubleValue.isFinite ? String(n.doubleValue) : nil
    }
}

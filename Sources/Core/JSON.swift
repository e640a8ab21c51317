import Foundation

/// An ordered JSON value for reports and logs (keys keep insertion order, so
/// files diff cleanly and read in a sensible order).
public indirect enum JSON: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool { a.compact == b.compact }

    public subscript(key: String) -> JSON? {
        if case .object(let kv) = self { return kv.first { $0.0 == key }?.1 }
        return nil
    }

    public var compact: String { render(indent: nil, level: 0) }
    public var pretty: String { render(indent: 2, level: 0) + "\n" }

    private func render(indent: Int?, level: Int) -> String {
        let nl = indent == nil ? "" : "\n"
        let pad = { (l: Int) in indent.map { String(repeating: " ", count: $0 * l) } ?? "" }
        let sep = indent == nil ? ":" : ": "
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .number(let d):
            // Swift's description is the shortest decimal that reads back as the same
            // double (1.796320123456e9 stays whole; 0.1 stays 0.1), always valid JSON.
            guard d.isFinite else { return "null" }
            return d.description
        case .string(let s): return JSON.quote(s)
        case .array(let a):
            if a.isEmpty { return "[]" }
            if a.allSatisfy({
                if case .object = $0 { return false }; if case .array = $0 { return false }; return true
            }) {
                return "[" + a.map { $0.render(indent: nil, level: 0) }.joined(separator: indent == nil ? "," : ", ")
                    + "]"
            }
            return "[" + nl
                + a.map { pad(level + 1) + $0.render(indent: indent, level: level + 1) }.joined(separator: "," + nl)
                + nl + pad(level) + "]"
        case .object(let kv):
            if kv.isEmpty { return "{}" }
            return "{" + nl
                + kv.map { pad(level + 1) + JSON.quote($0.0) + sep + $0.1.render(indent: indent, level: level + 1) }
                .joined(separator: "," + nl) + nl + pad(level) + "}"
        }
    }

    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    /// Parses JSON text (via Foundation) into an ordered value; object keys
    /// come back sorted, which is fine for reading.
    public static func parse(_ text: String) throws -> JSON {
        let obj = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        return convert(obj)
    }

    private static func convert(_ o: Any) -> JSON {
        switch o {
        case let d as [String: Any]: return .object(d.keys.sorted().map { ($0, convert(d[$0]!)) })
        case let a as [Any]: return .array(a.map(convert))
        case let s as String: return .string(s)
        case let b as Bool where type(of: o) != NSNumber.self || "\(o)" == "true" || "\(o)" == "false":
            return .bool(b)
        case let n as NSNumber:
            if n.doubleValue == n.doubleValue.rounded() && !"\(n)".contains(".") { return .int(n.intValue) }
            return .number(n.doubleValue)
        default: return .null
        }
    }

    public var double: Double? {
        switch self {
        case .int(let i): return Double(i);
        case .number(let d): return d;
        default: return nil
        }
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var array: [JSON]? { if case .array(let a) = self { return a }; return nil }
}

import Core
import Foundation
import Yams

/// A parsed YAML value, order-preserving, as the configuration layer sees it.
public indirect enum ConfigValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([ConfigValue])
    case map(ConfigMap)

    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .list: return "a list"
        case .map: return "a mapping"
        }
    }
}

/// An ordered mapping from keys to values.
public struct ConfigMap: Equatable, Sendable {
    public private(set) var keys: [String] = []
    private var values: [String: ConfigValue] = [:]
    public init() {}
    public subscript(key: String) -> ConfigValue? {
        get { values[key] }
        set {
            if let v = newValue {
                if values[key] == nil { keys.append(key) }
                values[key] = v
            } else if values.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
}

enum YAMLReader {
    /// Parses YAML text into a ConfigValue; `origin` names the source in errors.
    static func parse(_ text: String, origin: String) throws -> ConfigValue {
        let node: Node?
        do { node = try Yams.compose(yaml: text) } catch {
            throw ConfigError("\(origin): invalid YAML: \(error)")
        }
        guard let node else { return .map(ConfigMap()) }
        return try convert(node, origin: origin, path: "")
    }

    static func convert(_ node: Node, origin: String, path: String) throws -> ConfigValue {
        switch node {
        case .scalar(let s):
            switch node.tag.description {
            case Tag.Name.null.rawValue: return .null
            case Tag.Name.bool.rawValue: if let b = node.bool { return .bool(b) }
            case Tag.Name.int.rawValue: if let i = node.int { return .int(i) }
            case Tag.Name.float.rawValue: if let d = node.float { return .double(d) }
            default: break
            }
            return .string(s.string)
        case .sequence(let seq):
            return .list(try seq.enumerated().map { try convert($1, origin: origin, path: "\(path)[\($0)]") })
        case .mapping(let m):
            var out = ConfigMap()
            for (k, v) in m {
                guard let key = k.string else { throw ConfigError("\(origin): non-string key under '\(path)'") }
                let p = path.isEmpty ? key : "\(path).\(key)"
                if out[key] != nil { throw ConfigError("\(origin): duplicate key '\(p)'") }
                out[key] = try convert(v, origin: origin, path: p)
            }
            return .map(out)
        case .alias:
            throw ConfigError("\(origin): YAML aliases are not supported (at '\(path)')")
        }
    }
}

/// Configuration errors name the file (or `--set`) and the key path.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ m: String) { message = m }
    public var description: String { message }
}

// MARK: - Emitting

extension ConfigValue {
    /// Block-style YAML, keys in order.
    public func yaml(indent: Int = 0) -> String {
        guard case .map(let m) = self else { return scalarYAML + "\n" }
        var out = ""
        let pad = String(repeating: " ", count: indent)
        for k in m.keys {
            let v = m[k]!
            if case .map = v {
                out += "\(pad)\(k):\n" + v.yaml(indent: indent + 2)
            } else {
                out += "\(pad)\(k): \(v.scalarYAML)\n"
            }
        }
        return out
    }

    var scalarYAML: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return formatDouble(d)
        case .string(let s): return quoteIfNeeded(s)
        case .list(let l): return "[" + l.map(\.scalarYAML).joined(separator: ", ") + "]"
        case .map: return "{" + json + "}"
        }
    }

    /// Compact JSON, keys in order.
    public var json: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d): return d.isFinite ? formatDouble(d) : "null"
        case .string(let s): return jsonString(s)
        case .list(let l): return "[" + l.map(\.json).joined(separator: ",") + "]"
        case .map(let m): return "{" + m.keys.map { jsonString($0) + ":" + m[$0]!.json }.joined(separator: ",") + "}"
        }
    }
}

func formatDouble(_ d: Double) -> String {
    if d == d.rounded() && abs(d) < 1e15 { return String(format: "%.1f", d) }
    return "\(d)"
}

func quoteIfNeeded(_ s: String) -> String {
    let plain = s.range(of: #"^[A-Za-z_/][A-Za-z0-9_./\-]*$"#, options: .regularExpression) != nil
    let reserved = ["null", "true", "false", "yes", "no", "on", "off", "~"].contains(s.lowercased())
    return plain && !reserved ? s : jsonString(s)
}

/// A JSON string literal (the same quoting as every other JSON metatrain writes).
public func jsonString(_ s: String) -> String { JSON.quote(s) }

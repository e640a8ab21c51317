import Foundation

/// An RFC 4180 CSV scanner over bytes in memory: fields separated by one
/// delimiter byte (a comma unless told otherwise; a tab for TSV and RecBole
/// files), records by LF or CRLF, fields optionally quoted with "" as an
/// escaped quote (quoted fields may hold delimiters and newlines). It yields
/// byte ranges, so the caller decides which fields become strings.
public struct CSVScanner {
    public let bytes: UnsafeBufferPointer<UInt8>
    public let delimiter: UInt8
    private var pos = 0
    /// Physical line number (1-based) where the next record starts.
    public private(set) var line = 1
    /// The offset where the next record starts: nothing before it is read again.
    public var position: Int { pos }

    public init(_ bytes: UnsafeBufferPointer<UInt8>, delimiter: UInt8 = 0x2C) {
        precondition(
            delimiter != 0x22 && delimiter != 0x0A && delimiter != 0x0D, "delimiter cannot be a quote or newline")
        self.bytes = bytes
        self.delimiter = delimiter
        // Skip a UTF-8 byte-order mark.
        if bytes.count >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF { pos = 3 }
    }

    /// A field's bytes; `quoted` fields must be unescaped ("" → ").
    public struct Field {
        public var start: Int, end: Int, quoted: Bool
    }

    public enum ScanError: Error { case unterminatedQuote(line: Int), junkAfterQuote(line: Int) }

    /// Reads the next record into `fields` (cleared first). Returns the record's
    /// starting line, or nil at end of input. Blank lines are skipped.
    public mutating func next(into fields: inout [Field]) throws -> Int? {
        fields.removeAll(keepingCapacity: true)
        let n = bytes.count
        // skip blank lines
        while pos < n && (bytes[pos] == 0x0A || bytes[pos] == 0x0D) {
            if bytes[pos] == 0x0A { line += 1 }
            pos += 1
        }
        if pos >= n { return nil }
        let startLine = line
        while true {
            if pos < n && bytes[pos] == 0x22 { // quoted field
                pos += 1
                let s = pos
                var q = false
                while true {
                    guard pos < n else { throw ScanError.unterminatedQuote(line: startLine) }
                    let c = bytes[pos]
                    if c == 0x22 {
                        if pos + 1 < n && bytes[pos + 1] == 0x22 { q = true; pos += 2; continue }
                        break
                    }
                    if c == 0x0A { line += 1 }
                    pos += 1
                }
                fields.append(Field(start: s, end: pos, quoted: q))
                pos += 1 // closing quote
                if pos < n && bytes[pos] != delimiter && bytes[pos] != 0x0A && bytes[pos] != 0x0D {
                    throw ScanError.junkAfterQuote(line: startLine)
                }
            } else {
                let s = pos
                while pos < n && bytes[pos] != delimiter && bytes[pos] != 0x0A && bytes[pos] != 0x0D { pos += 1 }
                fields.append(Field(start: s, end: pos, quoted: false))
            }
            if pos >= n { return startLine }
            let c = bytes[pos]
            if c == delimiter {
                pos += 1; if pos >= n { fields.append(Field(start: pos, end: pos, quoted: false)); return startLine };
                continue
            }
            if c == 0x0D { pos += 1; if pos < n && bytes[pos] == 0x0A { pos += 1 }; line += 1; return startLine }
            if c == 0x0A { pos += 1; line += 1; return startLine }
        }
    }

    public func string(_ f: Field) -> String {
        let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[f.start..<f.end]), as: UTF8.self)
        return f.quoted ? s.replacingOccurrences(of: "\"\"", with: "\"") : s
    }

    public func isEmpty(_ f: Field) -> Bool { f.start == f.end }
}

/// Quotes a field for CSV output when it holds a comma, quote or line break (RFC 4180).
public func csvField(_ s: String) -> String {
    s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" })
        ? "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : s
}

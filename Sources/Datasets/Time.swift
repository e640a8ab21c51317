/// Parses event times: unix seconds (integer, optionally with a fraction, which
/// is dropped) or ISO-8601 `YYYY-MM-DD HH:MM:SS` / `YYYY-MM-DDTHH:MM:SS`, with
/// optional fractional seconds and an optional `Z` or `±HH:MM`/`±HHMM` offset
/// (UTC when absent). Returns unix seconds, or nil if the text is not a time.
public func parseTime(_ b: UnsafeBufferPointer<UInt8>) -> Int64? {
    var s = 0, e = b.count
    while s < e && b[s] == 0x20 { s += 1 }
    while e > s && b[e - 1] == 0x20 { e -= 1 }
    guard s < e else { return nil }
    @inline(__always) func digit(_ i: Int) -> Int? {
        guard i < e else { return nil }
        let c = b[i]
        return c >= 0x30 && c <= 0x39 ? Int(c - 0x30) : nil
    }
    @inline(__always) func num(_ i: Int, _ n: Int) -> Int? {
        var v = 0
        for k in 0..<n { guard let d = digit(i + k) else { return nil }; v = v * 10 + d }
        return v
    }
    // ISO form: 4 digits then '-'
    if e - s >= 19, s + 4 < e, b[s + 4] == 0x2D {
        guard let y = num(s, 4), b[s + 7] == 0x2D, let mo = num(s + 5, 2), let d = num(s + 8, 2),
            b[s + 10] == 0x20 || b[s + 10] == 0x54, let h = num(s + 11, 2), b[s + 13] == 0x3A,
            let mi = num(s + 14, 2), b[s + 16] == 0x3A, let sec = num(s + 17, 2),
            (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, sec < 61
        else { return nil }
        var i = s + 19
        if i < e && b[i] == 0x2E { i += 1; guard digit(i) != nil else { return nil }; while digit(i) != nil { i += 1 } }
        var offset = 0
        if i < e {
            if b[i] == 0x5A && i + 1 == e {
                i += 1
            } else if b[i] == 0x2B || b[i] == 0x2D {
                let sign = b[i] == 0x2D ? -1 : 1
                guard let oh = num(i + 1, 2) else { return nil }
                var j = i + 3
                if j < e && b[j] == 0x3A { j += 1 }
                guard let om = num(j, 2), j + 2 == e else { return nil }
                offset = sign * (oh * 3600 + om * 60)
                i = e
            } else {
                return nil
            }
        }
        guard i == e else { return nil }
        return Int64(daysFromCivil(y, mo, d)) * 86400 + Int64(h * 3600 + mi * 60 + sec - offset)
    }
    // Unix seconds.
    var i = s, neg = false
    if b[i] == 0x2D { neg = true; i += 1 }
    guard digit(i) != nil else { return nil }
    var v: Int64 = 0
    while let d = digit(i) {
        let (m, o1) = v.multipliedReportingOverflow(by: 10)
        let (a, o2) = m.addingReportingOverflow(Int64(d))
        if o1 || o2 { return nil }
        v = a; i += 1
    }
    if i < e && b[i] == 0x2E { i += 1; while digit(i) != nil { i += 1 } }
    guard i == e else { return nil }
    return neg ? -v : v
}

public func parseTime(_ s: String) -> Int64? {
    var s = s
    return s.withUTF8 { parseTime($0) }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
public func daysFromCivil(_ y0: Int, _ m: Int, _ d: Int) -> Int {
    let y = m <= 2 ? y0 - 1 : y0
    let era = (y >= 0 ? y : y - 399) / 400
    let yoe = y - era * 400
    let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146097 + doe - 719468
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of unix seconds.
public func formatTime(_ t: Int64) -> String {
    let days = Int(t >= 0 ? t / 86400 : (t - 86399) / 86400)
    let secs = Int(t - Int64(days) * 86400)
    let z = days + 719468
    let era = (z >= 0 ? z : z - 146096) / 146097
    let doe = z - era * 146097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
    func p2(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(y)-\(p2(m))-\(p2(d)) \(p2(secs / 3600)):\(p2(secs / 60 % 60)):\(p2(secs % 60))"
}

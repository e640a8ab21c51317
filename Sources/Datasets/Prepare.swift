import Configuration
import Core
import Foundation

/// Which CSV columns hold what. Session and action are optional: each is used
/// when its column is in the header; if the caller names one explicitly, it
/// must be there.
public struct ColumnMap: Sendable, Equatable {
    public var user = "username", item = "course_id", time = "time"
    public var session: String = "session_id", action: String = "action"
    public var sessionRequired = false, actionRequired = false
    public init() {}

    /// RecBole's standard atomic-file columns (`user_id`, `item_id`, `timestamp`).
    public static var recBole: ColumnMap {
        var m = ColumnMap()
        m.user = "user_id"; m.item = "item_id"; m.time = "timestamp"
        return m
    }
}

/// How an event log's fields are separated.
public enum Delimiter {
    /// Parses `--delimiter`: `comma`, `tab`, `semicolon`, `pipe`, `space`, `\t`,
    /// or any single ASCII character other than a quote or a newline.
    public static func parse(_ text: String) throws -> UInt8 {
        let named: [String: UInt8] = ["comma": 0x2C, "tab": 0x09, "\\t": 0x09, "\t": 0x09, "semicolon": 0x3B,
                                      "pipe": 0x7C, "space": 0x20]
        if let b = named[text.lowercased()] { return b }
        let bytes = Array(text.utf8)
        guard bytes.count == 1, bytes[0] < 0x80 else {
            throw MetatrainError("--delimiter: '\(text)' is not one character (allowed: comma, tab, semicolon, pipe, space, or any single ASCII character)")
        }
        guard bytes[0] != 0x22, bytes[0] != 0x0A, bytes[0] != 0x0D else {
            throw MetatrainError("--delimiter: a quote or a newline cannot separate fields")
        }
        return bytes[0]
    }

    /// The delimiter a file's name implies: a tab for `.tsv` and RecBole `.inter`
    /// files, a comma otherwise.
    public static func implied(byFileName name: String) -> UInt8 {
        let lower = name.lowercased()
        return lower.hasSuffix(".inter") || lower.hasSuffix(".tsv") ? 0x09 : 0x2C
    }
}

/// RecBole atomic files name each column `name:type`; the type is dropped so
/// the columns are found by name. Only a header whose every field carries one of
/// RecBole's types counts as such.
func strippingRecBoleTypes(_ header: [String]) -> [String] {
    let types: Set<String> = ["token", "token_seq", "float", "float_seq"]
    let split = header.map { h -> (String, String)? in
        guard let c = h.lastIndex(of: ":") else { return nil }
        return (String(h[..<c]), String(h[h.index(after: c)...]))
    }
    guard !header.isEmpty, split.allSatisfy({ $0 != nil && types.contains($0!.1) && !$0!.0.isEmpty }) else { return header }
    return split.map { $0!.0 }
}

/// What `prepare` reports after building a dataset.
public struct PrepareSummary: Sendable {
    public var rows = 0, events = 0, skippedRows = 0
    public var skippedExamples: [String] = []
    public var sessions = 0, droppedItems = 0
    public var usedSessionColumn = false, usedActionColumn = false
    public var usersPerSplit: [SplitKind: Int] = [:]
    public var eligibleUsers = 0
    public var pairs = 0
    public var episodesPerSplit: [SplitKind: Int] = [:]
    public var vocabulary = 0
    public var warnings: [String] = []

    public var text: String {
        var s = "events: \(events) from \(rows) rows (\(skippedRows) skipped)\n"
        s += "sessions: \(sessions) (\(usedSessionColumn ? "from the session column" : "by time gap"))\n"
        s += "vocabulary: \(vocabulary) items including padding (\(droppedItems) rare items dropped)\n"
        s += "users: " + SplitKind.allCases.map { "\($0.name) \(usersPerSplit[$0] ?? 0)" }.joined(separator: ", ")
        s += " (\(eligibleUsers) eligible for val/test)\n"
        s += "pairs: \(pairs)\n"
        s += "episodes: " + SplitKind.allCases.map { "\($0.name) \(episodesPerSplit[$0] ?? 0)" }.joined(separator: ", ") + "\n"
        for w in warnings { s += "warning: \(w)\n" }
        return s
    }
}

/// Builds a dataset from an event log exactly as docs/FORMATS.md ("How prepare builds it") describes.
public enum Prepare {
    /// `delimiter` nil means the one the file name implies (`Delimiter.implied`).
    public static func run(csvPath: String, columns: ColumnMap = ColumnMap(), delimiter: UInt8? = nil,
                           skipBadRows: Bool = false, config: Config) throws -> (Dataset, PrepareSummary) {
        let url = URL(fileURLWithPath: csvPath)
        let data: Data
        do { data = try Data(contentsOf: url, options: .alwaysMapped) } catch {
            throw MetatrainError("\(csvPath): cannot read event log (\(error.localizedDescription))")
        }
        let fileName = url.lastPathComponent
        return try data.withUnsafeBytes { raw in
            try build(bytes: raw.bindMemory(to: UInt8.self), fileName: fileName, columns: columns,
                      delimiter: delimiter ?? Delimiter.implied(byFileName: fileName), skipBadRows: skipBadRows,
                      config: config)
        }
    }

    // MARK: - Step 1–2: parse

    struct Events {
        var user: [Int32] = [], item: [Int32] = [], time: [Int64] = [], session: [Int32] = [], action: [Int32] = []
        var userNames: [String] = [], itemNames: [String] = []
        var nActions = 0
    }

    static func build(bytes: UnsafeBufferPointer<UInt8>, fileName: String, columns: ColumnMap, delimiter: UInt8 = 0x2C,
                      skipBadRows: Bool, config: Config) throws -> (Dataset, PrepareSummary) {
        var summary = PrepareSummary()
        var scanner = CSVScanner(bytes, delimiter: delimiter)
        var fields: [CSVScanner.Field] = []
        func scanError(_ e: Error) -> MetatrainError {
            switch e {
            case CSVScanner.ScanError.unterminatedQuote(let l): return MetatrainError("\(fileName):\(l): unterminated quoted field")
            case CSVScanner.ScanError.junkAfterQuote(let l): return MetatrainError("\(fileName):\(l): text after a closing quote")
            default: return MetatrainError("\(fileName): \(e)")
            }
        }
        let headerLine: Int?
        do { headerLine = try scanner.next(into: &fields) } catch { throw scanError(error) }
        guard headerLine != nil else { throw MetatrainError("\(fileName): empty file (no header)") }
        let header = strippingRecBoleTypes(fields.map { scanner.string($0).trimmingCharacters(in: .whitespaces) })
        func column(_ name: String, required: Bool) throws -> Int? {
            if let i = header.firstIndex(of: name) { return i }
            if required {
                var hint = ""
                if header.count == 1 && delimiter != 0x09 && header[0].contains("\t") { hint = "; the file looks tab-separated: use --delimiter tab" }
                else if header.count == 1 && delimiter != 0x3B && header[0].contains(";") { hint = "; use --delimiter ';'?" }
                throw MetatrainError("\(fileName):1: no column '\(name)' in header (columns: \(header.joined(separator: ", ")))\(hint)")
            }
            return nil
        }
        let cu = try column(columns.user, required: true)!, ci = try column(columns.item, required: true)!
        let ct = try column(columns.time, required: true)!
        let cs = try column(columns.session, required: columns.sessionRequired)
        let ca = try column(columns.action, required: columns.actionRequired)
        summary.usedSessionColumn = cs != nil
        summary.usedActionColumn = ca != nil

        var ev = Events()
        var userIndex: [String: Int32] = [:], itemIndex: [String: Int32] = [:]
        var sessionIndex: [String: Int32] = [:], actionIndex: [String: Int32] = [:]
        func intern(_ s: String, _ d: inout [String: Int32], _ names: inout [String]?) -> Int32 {
            if let i = d[s] { return i }
            let i = Int32(d.count); d[s] = i; names?.append(s); return i
        }
        var userNames: [String]? = [], itemNames: [String]? = [], none: [String]? = nil
        while true {
            let line: Int?
            do { line = try scanner.next(into: &fields) } catch { throw scanError(error) }
            guard let line else { break }
            summary.rows += 1
            var problem: String?
            var t: Int64 = 0
            if fields.count != header.count {
                problem = "expected \(header.count) fields, found \(fields.count)"
            } else if scanner.isEmpty(fields[cu]) {
                problem = "empty user (column '\(columns.user)')"
            } else if scanner.isEmpty(fields[ci]) {
                problem = "empty item (column '\(columns.item)')"
            } else {
                let f = fields[ct]
                if let v = parseTime(UnsafeBufferPointer(rebasing: bytes[f.start..<f.end])) { t = v } else {
                    problem = "unparseable time '\(scanner.string(f))' (column '\(columns.time)')"
                }
            }
            if let problem {
                if !skipBadRows { throw MetatrainError("\(fileName):\(line): \(problem) (use --skip-bad-rows to skip such rows)") }
                summary.skippedRows += 1
                if summary.skippedExamples.count < 5 { summary.skippedExamples.append("line \(line): \(problem)") }
                continue
            }
            ev.user.append(intern(scanner.string(fields[cu]), &userIndex, &userNames))
            ev.item.append(intern(scanner.string(fields[ci]), &itemIndex, &itemNames))
            ev.time.append(t)
            if let cs { ev.session.append(intern(scanner.string(fields[cs]), &sessionIndex, &none)) }
            if let ca { ev.action.append(intern(scanner.string(fields[ca]), &actionIndex, &none)) }
        }
        ev.userNames = userNames!; ev.itemNames = itemNames!
        ev.nActions = actionIndex.count
        summary.events = ev.user.count
        if !summary.skippedExamples.isEmpty { summary.warnings.append("skipped rows, first ones: " + summary.skippedExamples.joined(separator: "; ")) }
        guard summary.events > 0 else { throw MetatrainError("\(fileName): no valid events") }
        let source = "\(fileName); user=\(columns.user) item=\(columns.item) time=\(columns.time) "
            + "session=\(cs != nil ? columns.session : "-") action=\(ca != nil ? columns.action : "-")"
            + (delimiter == 0x2C ? "" : delimiter == 0x09 ? " delimiter=tab" : " delimiter=\(Character(Unicode.Scalar(delimiter)))")
        return build(events: ev, source: source, config: config, summary: &summary)
    }

    // MARK: - Steps 3–10

    static func byteLess(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

    static func build(events ev: Events, source: String, config: Config, summary: inout PrepareSummary) -> (Dataset, PrepareSummary) {
        let d = config.data
        let E = ev.user.count
        // Users in byte order of their ids.
        let userOrder = (0..<ev.userNames.count).sorted { byteLess(ev.userNames[$0], ev.userNames[$1]) }
        var userRank = [Int](repeating: 0, count: userOrder.count)
        for (r, u) in userOrder.enumerated() { userRank[u] = r }
        let U = userOrder.count

        // Step 3: events grouped by user (rank), each user's by (time, row).
        var userStart = [Int](repeating: 0, count: U + 1)
        for e in 0..<E { userStart[userRank[Int(ev.user[e])] + 1] += 1 }
        for u in 0..<U { userStart[u + 1] += userStart[u] }
        var ordered = [Int32](repeating: 0, count: E)
        var fill = userStart
        for e in 0..<E { let r = userRank[Int(ev.user[e])]; ordered[fill[r]] = Int32(e); fill[r] += 1 }
        for u in 0..<U {
            ordered[userStart[u]..<userStart[u + 1]].sort { ev.time[Int($0)] != ev.time[Int($1)] ? ev.time[Int($0)] < ev.time[Int($1)] : $0 < $1 }
        }

        // Step 4: sessions (global ids), step 5: their reliability.
        var sessionOf = [Int32](repeating: 0, count: E)   // by event id
        var sEvents: [Int] = [], sMin: [Int64] = [], sMax: [Int64] = [], sActions: [Int] = []
        var seenAction = Set<Int64>()
        for u in 0..<U {
            var local: [Int32: Int32] = [:]
            var prevTime: Int64 = .min, current: Int32 = -1
            for k in userStart[u]..<userStart[u + 1] {
                let e = Int(ordered[k]), t = ev.time[e]
                let s: Int32
                if !ev.session.isEmpty {
                    if let x = local[ev.session[e]] { s = x } else {
                        s = Int32(sEvents.count); local[ev.session[e]] = s
                        sEvents.append(0); sMin.append(t); sMax.append(t); sActions.append(0)
                    }
                } else {
                    if current < 0 || t - prevTime > Int64(d.sessionGapS) {
                        current = Int32(sEvents.count)
                        sEvents.append(0); sMin.append(t); sMax.append(t); sActions.append(0)
                    }
                    s = current
                }
                prevTime = t
                sessionOf[e] = s
                let si = Int(s)
                sEvents[si] += 1
                sMin[si] = min(sMin[si], t); sMax[si] = max(sMax[si], t)
                if !ev.action.isEmpty, seenAction.insert(Int64(si) << 32 | Int64(ev.action[e])).inserted { sActions[si] += 1 }
            }
        }
        summary.sessions = sEvents.count
        let hasActions = !ev.action.isEmpty
        let sessionReliability: [Float] = (0..<sEvents.count).map { s in
            let intensity = min(Double(sEvents[s]) / d.eventsCap, 1)
            let extent = min(Double(sMax[s] - sMin[s]) / d.durationCapS, 1)
            if hasActions {
                let composition = Double(sActions[s]) / Double(max(ev.nActions, 1))
                return Float((intensity + extent + composition) / 3)
            }
            return Float((intensity + extent) / 2)
        }

        // Step 6: vocabulary.
        var counts = [Int64](repeating: 0, count: ev.itemNames.count)
        for e in 0..<E { counts[Int(ev.item[e])] += 1 }
        let kept = (0..<counts.count).filter { counts[$0] >= Int64(d.minItemCount) }
            .sorted { counts[$0] != counts[$1] ? counts[$0] > counts[$1] : byteLess(ev.itemNames[$0], ev.itemNames[$1]) }
        var itemMap = [Int32](repeating: 0, count: counts.count)
        for (i, raw) in kept.enumerated() { itemMap[raw] = Int32(i + 1) }
        summary.droppedItems = counts.count - kept.count
        let itemIds = ["<pad>"] + kept.map { ev.itemNames[$0] }
        let itemCounts = [0] + kept.map { counts[$0] }

        // Steps 7–8: visits and pairs, user by user.
        let L = d.maxSeqLen
        var pairUser: [Int32] = [], prefixOffsets: [Int64] = [0], prefixItems: [Int32] = []
        var label: [Int32] = [], timestamp: [Int64] = [], reliability: [Float] = []
        var userPairStart = [Int](repeating: 0, count: U + 1)
        var firstTime = [Int64](repeating: 0, count: U)
        var visits: [Int32] = [], vTime: [Int64] = [], vSession: [Int32] = []
        for u in 0..<U {
            userPairStart[u] = label.count
            firstTime[u] = ev.time[Int(ordered[userStart[u]])]
            visits.removeAll(keepingCapacity: true); vTime.removeAll(keepingCapacity: true); vSession.removeAll(keepingCapacity: true)
            for k in userStart[u]..<userStart[u + 1] {
                let e = Int(ordered[k])
                let item = itemMap[Int(ev.item[e])]
                if item == 0 || item == visits.last { continue }
                visits.append(item); vTime.append(ev.time[e]); vSession.append(sessionOf[e])
            }
            if visits.count < 2 { continue }
            for t in 1..<visits.count {
                pairUser.append(Int32(u))
                prefixItems.append(contentsOf: visits[max(0, t - L)..<t])
                prefixOffsets.append(Int64(prefixItems.count))
                label.append(visits[t]); timestamp.append(vTime[t]); reliability.append(sessionReliability[Int(vSession[t])])
            }
        }
        userPairStart[U] = label.count

        // Step 9: split.
        let need = d.kSupport + d.qQuery
        func nPairs(_ u: Int) -> Int { userPairStart[u + 1] - userPairStart[u] }
        var eligible = (0..<U).filter { nPairs($0) >= need }
        summary.eligibleUsers = eligible.count
        let wantVal = Int((d.valFraction * Double(U) + 1e-9).rounded(.down))
        let wantTest = Int((d.testFraction * Double(U) + 1e-9).rounded(.down))
        let nTest = min(wantTest, eligible.count), nVal = min(wantVal, eligible.count - nTest)
        if nTest < wantTest || nVal < wantVal {
            summary.warnings.append("only \(eligible.count) users have \(need) pairs: val gets \(nVal) of \(wantVal), test \(nTest) of \(wantTest)")
        }
        var split = [Int8](repeating: SplitKind.train.rawValue, count: U)
        switch d.split {
        case .byFirstActivity:
            eligible.sort { firstTime[$0] != firstTime[$1] ? firstTime[$0] < firstTime[$1] : byteLess(ev.userNames[userOrder[$0]], ev.userNames[userOrder[$1]]) }
            for u in eligible.suffix(nTest) { split[u] = SplitKind.test.rawValue }
            for u in eligible.dropLast(nTest).suffix(nVal) { split[u] = SplitKind.val.rawValue }
        case .random:
            var g = SeededGenerator(seed: config.seed, [Stream.split])
            g.shuffle(&eligible)
            for u in eligible.prefix(nTest) { split[u] = SplitKind.test.rawValue }
            for u in eligible.dropFirst(nTest).prefix(nVal) { split[u] = SplitKind.val.rawValue }
        }

        // Step 10: episodes.
        var episodes: [SplitKind: Episodes] = [:]
        for s in SplitKind.allCases { episodes[s] = Episodes(k: d.kSupport, q: d.qQuery) }
        for u in 0..<U {
            let kind = SplitKind(rawValue: split[u])!
            let n = nPairs(u), base = userPairStart[u]
            var starts: [Int] = []
            if kind == .train {
                var i = 0
                while i + need <= n { starts.append(i); i += d.trainStride }
            } else if n >= need { starts = [0] }
            for i in starts {
                episodes[kind]!.support.append(contentsOf: (0..<d.kSupport).map { Int64(base + i + $0) })
                episodes[kind]!.query.append(contentsOf: (0..<d.qQuery).map { Int64(base + i + d.kSupport + $0) })
                episodes[kind]!.user.append(Int32(u))
            }
        }

        for s in SplitKind.allCases {
            summary.usersPerSplit[s] = split.filter { $0 == s.rawValue }.count
            summary.episodesPerSplit[s] = episodes[s]!.count
        }
        summary.pairs = label.count
        summary.vocabulary = itemIds.count
        let ds = Dataset(itemIds: itemIds, itemCounts: itemCounts, userIds: userOrder.map { ev.userNames[$0] },
                         userSplit: split, pairUser: pairUser, prefixOffsets: prefixOffsets, prefixItems: prefixItems,
                         label: label, timestamp: timestamp, reliability: reliability, episodes: episodes,
                         maxSeqLen: L, kSupport: d.kSupport, qQuery: d.qQuery, source: source)
        return (ds, summary)
    }
}

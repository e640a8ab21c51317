import Core
import ExperimentConfig
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

    /// The columns a file's name implies: RecBole's for a `.inter` file, metatrain's otherwise.
    public static func implied(byFileName name: String) -> ColumnMap {
        isRecBole(name) ? .recBole : ColumnMap()
    }
}

/// Whether a file name is a RecBole atomic interaction file.
func isRecBole(_ name: String) -> Bool { name.lowercased().hasSuffix(".inter") }

/// How an event log's fields are separated.
public enum Delimiter {
    /// Parses `--delimiter`: `comma`, `tab`, `semicolon`, `pipe`, `space`, `\t`,
    /// or any single ASCII character other than a quote or a newline.
    public static func parse(_ text: String) throws -> UInt8 {
        let named: [String: UInt8] = [
            "comma": 0x2C, "tab": 0x09, "\\t": 0x09, "\t": 0x09, "semicolon": 0x3B,
            "pipe": 0x7C, "space": 0x20
        ]
        if let b = named[text.lowercased()] { return b }
        let bytes = Array(text.utf8)
        guard bytes.count == 1, bytes[0] < 0x80 else {
            throw MetatrainError(
                "--delimiter: '\(text)' is not one character (allowed: comma, tab, semicolon, pipe, space, or any single ASCII character)"
            )
        }
        guard bytes[0] != 0x22, bytes[0] != 0x0A, bytes[0] != 0x0D else {
            throw MetatrainError("--delimiter: a quote or a newline cannot separate fields")
        }
        return bytes[0]
    }

    /// The delimiter a file's name implies: a tab for `.tsv` and RecBole `.inter`
    /// files, a comma otherwise.
    public static func implied(byFileName name: String) -> UInt8 {
        isRecBole(name) || name.lowercased().hasSuffix(".tsv") ? 0x09 : 0x2C
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
    guard !header.isEmpty, split.allSatisfy({ $0 != nil && types.contains($0!.1) && !$0!.0.isEmpty }) else {
        return header
    }
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
        s +=
            "episodes: " + SplitKind.allCases.map { "\($0.name) \(episodesPerSplit[$0] ?? 0)" }.joined(separator: ", ")
            + "\n"
        for w in warnings { s += "warning: \(w)\n" }
        return s
    }
}

/// Builds a dataset from an event log exactly as docs/FORMATS.md ("How prepare builds it") describes.
public enum Prepare {
    /// Steps 1–2 alone: an event log's rows as events (what `recommend` reads a learner's
    /// events with), the source line and the parse counts.
    public static func read(
        csvPath: String, columns: ColumnMap = ColumnMap(), delimiter: UInt8? = nil, skipBadRows: Bool = false
    ) throws -> (Events, String, PrepareSummary) {
        let fileName = URL(fileURLWithPath: csvPath).lastPathComponent
        // Read once, front to back: the pages behind the parser are let go as it moves on,
        // so the log's size never adds to prepare's memory.
        let log: FileMapping
        do { log = try FileMapping(csvPath, sequential: true) } catch let e as FileMapping.Failure {
            throw MetatrainError("\(csvPath): cannot read event log (\(e.reason))")
        }
        return try parse(
            bytes: log.bytes.bindMemory(to: UInt8.self), fileName: fileName, columns: columns,
            delimiter: delimiter ?? Delimiter.implied(byFileName: fileName), skipBadRows: skipBadRows,
            consumed: log.release(before:))
    }

    // MARK: - Step 1–2: parse

    /// Events as read: each field interned to an index (users and items by their names in
    /// `userNames`/`itemNames`); `session` and `action` are empty when the log has no such column.
    public struct Events: Sendable {
        public var user: [Int32] = [], item: [Int32] = [], time: [Int64] = [], session: [Int32] = [],
            action: [Int32] = []
        public var userNames: [String] = [], itemNames: [String] = []
        /// Distinct actions in the log (the denominator of a session's composition).
        public var nActions = 0
        public init() {}
        public var count: Int { user.count }

        /// Appends one event, interning its fields (a session or action of nil when the log has none).
        public mutating func append(
            user u: String, item i: String, time t: Int64, session s: String? = nil, action a: String? = nil,
            interning d: inout Interning
        ) {
            let (ui, newUser) = Interning.intern(u, &d.users)
            if newUser { userNames.append(u) }
            let (ii, newItem) = Interning.intern(i, &d.items)
            if newItem { itemNames.append(i) }
            user.append(ui); item.append(ii); time.append(t)
            if let s { session.append(Interning.intern(s, &d.sessions).0) }
            if let a { action.append(Interning.intern(a, &d.actions).0); nActions = d.actions.count }
        }
    }

    /// The name → index tables `Events.append` interns with.
    public struct Interning {
        var users: [String: Int32] = [:], items: [String: Int32] = [:]
        var sessions: [String: Int32] = [:], actions: [String: Int32] = [:]
        public init() {}
        /// The index of `s` in first-seen order, and whether it is new.
        static func intern<Key: Hashable>(_ s: Key, _ d: inout [Key: Int32]) -> (Int32, Bool) {
            if let i = d[s] { return (i, false) }
            let i = Int32(d.count); d[s] = i; return (i, true)
        }
    }

    /// `consumed` hears, now and then, the offset before which the bytes are not read again.
    static func parse(
        bytes: UnsafeBufferPointer<UInt8>, fileName: String, columns: ColumnMap, delimiter: UInt8, skipBadRows: Bool,
        consumed: (Int) -> Void = { _ in }
    ) throws -> (Events, String, PrepareSummary) {
        var ev = Events()
        var sessionIndex: [String: Int32] = [:]
        let log = try scan(
            bytes: bytes, fileName: fileName, columns: columns, delimiter: delimiter, skipBadRows: skipBadRows,
            consumed: consumed
        ) { user, item, time, session, action in
            ev.user.append(user); ev.item.append(item); ev.time.append(time)
            if let session { ev.session.append(Interning.intern(session.string, &sessionIndex).0) }
            if let action { ev.action.append(action) }
        }
        ev.userNames = log.userNames; ev.itemNames = log.itemNames; ev.nActions = log.nActions
        return (ev, log.source, log.summary)
    }

    /// A session field's bytes as the log holds them (`quoted`: "" stands for ").
    struct SessionField {
        var bytes: UnsafeBufferPointer<UInt8>, quoted: Bool
        var string: String {
            let s = String(decoding: bytes, as: UTF8.self)
            return quoted ? s.replacingOccurrences(of: "\"\"", with: "\"") : s
        }
    }

    /// What a scan of a log found besides its rows: users, items and actions by first
    /// appearance, the source line and the parse counts.
    struct ScannedLog {
        var userNames: [String], itemNames: [String], nActions: Int, source: String, summary: PrepareSummary
    }

    /// Steps 1–2: reads the log's rows in order and hands each valid one to `row` as (user, item,
    /// time, session, action), users, items and actions interned in first-seen order (a session
    /// or action of nil when the log has no such column).
    static func scan(
        bytes: UnsafeBufferPointer<UInt8>, fileName: String, columns: ColumnMap, delimiter: UInt8, skipBadRows: Bool,
        consumed: (Int) -> Void = { _ in },
        row: (Int32, Int32, Int64, SessionField?, Int32?) throws -> Void
    ) throws -> ScannedLog {
        var summary = PrepareSummary()
        var scanner = CSVScanner(bytes, delimiter: delimiter)
        var fields: [CSVScanner.Field] = []
        func scanError(_ e: Error) -> MetatrainError {
            switch e {
            case CSVScanner.ScanError.unterminatedQuote(let l):
                return MetatrainError("\(fileName):\(l): unterminated quoted field")
            case CSVScanner.ScanError.junkAfterQuote(let l):
                return MetatrainError("\(fileName):\(l): text after a closing quote")
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
                if header.count == 1 && delimiter != 0x09 && header[0].contains("\t") {
                    hint = "; the file looks tab-separated: use --delimiter tab"
                } else if header.count == 1 && delimiter != 0x3B && header[0].contains(";") {
                    hint = "; use --delimiter ';'?"
                }
                throw MetatrainError(
                    "\(fileName):1: no column '\(name)' in header (columns: \(header.joined(separator: ", ")))\(hint)")
            }
            return nil
        }
        let cu = try column(columns.user, required: true)!, ci = try column(columns.item, required: true)!
        let ct = try column(columns.time, required: true)!
        let cs = try column(columns.session, required: columns.sessionRequired)
        let ca = try column(columns.action, required: columns.actionRequired)
        summary.usedSessionColumn = cs != nil
        summary.usedActionColumn = ca != nil

        var userIndex: [String: Int32] = [:], itemIndex: [String: Int32] = [:], actionIndex: [String: Int32] = [:]
        func intern(_ s: String, _ d: inout [String: Int32], _ names: inout [String]?) -> Int32 {
            if let i = d[s] { return i }
            let i = Int32(d.count); d[s] = i; names?.append(s); return i
        }
        var userNames: [String]? = [], itemNames: [String]? = [], none: [String]? = nil
        // A log repeats itself row to row (a user's events together, a course's events of a visit
        // together): a field with the bytes of the same column in the row before has its index.
        typealias Last = (start: Int, end: Int, index: Int32)?
        var lastUser: Last = nil, lastItem: Last = nil, lastAction: Last = nil
        func repeated(_ f: CSVScanner.Field, _ last: inout Last) -> Int32? {
            guard let l = last, !f.quoted, l.end - l.start == f.end - f.start,
                memcmp(bytes.baseAddress! + l.start, bytes.baseAddress! + f.start, f.end - f.start) == 0
            else { return nil }
            last = (f.start, f.end, l.index)
            return l.index
        }
        func intern(_ f: CSVScanner.Field, _ d: inout [String: Int32], _ names: inout [String]?, _ last: inout Last)
            -> Int32
        {
            let i = intern(scanner.string(f), &d, &names)
            last = f.quoted ? nil : (f.start, f.end, i)
            return i
        }
        while true {
            let line: Int?
            do { line = try scanner.next(into: &fields) } catch { throw scanError(error) }
            guard let line else { break }
            summary.rows += 1
            if summary.rows & 0xFFFF == 0 { consumed(scanner.position) }
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
                if let v = parseTime(UnsafeBufferPointer(rebasing: bytes[f.start..<f.end])) {
                    t = v
                } else {
                    problem = "unparseable time '\(scanner.string(f))' (column '\(columns.time)')"
                }
            }
            if let problem {
                if !skipBadRows {
                    throw MetatrainError("\(fileName):\(line): \(problem) (use --skip-bad-rows to skip such rows)")
                }
                summary.skippedRows += 1
                if summary.skippedExamples.count < 5 { summary.skippedExamples.append("line \(line): \(problem)") }
                continue
            }
            let u = repeated(fields[cu], &lastUser) ?? intern(fields[cu], &userIndex, &userNames, &lastUser)
            let i = repeated(fields[ci], &lastItem) ?? intern(fields[ci], &itemIndex, &itemNames, &lastItem)
            let session = cs.map { c in
                SessionField(
                    bytes: UnsafeBufferPointer(rebasing: bytes[fields[c].start..<fields[c].end]),
                    quoted: fields[c].quoted)
            }
            let action = ca.map {
                repeated(fields[$0], &lastAction) ?? intern(fields[$0], &actionIndex, &none, &lastAction)
            }
            try row(u, i, t, session, action)
            summary.events += 1
        }
        if !summary.skippedExamples.isEmpty {
            summary.warnings.append("skipped rows, first ones: " + summary.skippedExamples.joined(separator: "; "))
        }
        guard summary.events > 0 else { throw MetatrainError("\(fileName): no valid events") }
        let source =
            "\(fileName); user=\(columns.user) item=\(columns.item) time=\(columns.time) "
            + "session=\(cs != nil ? columns.session : "-") action=\(ca != nil ? columns.action : "-")"
            + (delimiter == 0x2C
                ? "" : delimiter == 0x09 ? " delimiter=tab" : " delimiter=\(Character(Unicode.Scalar(delimiter)))")
        return ScannedLog(
            userNames: userNames!, itemNames: itemNames!, nActions: actionIndex.count, source: source, summary: summary)
    }

    // MARK: - Steps 3–10, one function each

    static func byteLess(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

    static func build(events ev: Events, source: String, config: Config, summary: inout PrepareSummary) -> (
        Dataset, PrepareSummary
    ) {
        let d = config.data
        let users = groupByUser(ev)
        let sessions = splitSessions(ev, users, gapS: d.sessionGapS)
        summary.sessions = sessions.count
        let reliability = sessionReliability(sessions, nActions: ev.nActions, hasActions: !ev.action.isEmpty, data: d)
        var counts = [Int64](repeating: 0, count: ev.itemNames.count)
        for e in 0..<ev.item.count { counts[Int(ev.item[e])] += 1 }
        let vocab = vocabulary(counts: counts, names: ev.itemNames, minCount: d.minItemCount)
        summary.droppedItems = vocab.dropped
        let pairs = makePairs(
            ev, users, sessionOf: sessions.of, reliability: reliability, itemMap: vocab.map, maxSeqLen: d.maxSeqLen)
        return finish(
            userIds: users.order.map { ev.userNames[$0] }, pairs: pairs, vocab: vocab, source: source,
            actions: ev.action.isEmpty ? nil : ev.nActions, config: config, summary: &summary)
    }

    /// Steps 9–10 and the dataset: the split of users (`userIds` in byte order) and their episodes.
    static func finish(
        userIds: [String], pairs: Pairs, vocab: Vocabulary, source: String, actions: Int?, config: Config,
        summary: inout PrepareSummary
    ) -> (Dataset, PrepareSummary) {
        let d = config.data
        let split = splitUsers(userIds, pairs, config: config, summary: &summary)
        let episodes = makeEpisodes(split, pairs, data: d)
        for s in SplitKind.allCases {
            summary.usersPerSplit[s] = split.filter { $0 == s.rawValue }.count
            summary.episodesPerSplit[s] = episodes[s]!.count
        }
        summary.pairs = pairs.label.count
        summary.vocabulary = vocab.ids.count
        var out = Dataset(
            itemIds: vocab.ids, itemCounts: vocab.counts, userIds: userIds,
            userSplit: split, pairUser: pairs.user, prefixOffsets: pairs.prefixOffsets, prefixItems: pairs.prefixItems,
            label: pairs.label, timestamp: pairs.timestamp, reliability: pairs.reliability, episodes: episodes,
            maxSeqLen: d.maxSeqLen, kSupport: d.kSupport, qQuery: d.qQuery, source: source)
        out.prepareJSON = config.prepareSettingsJSON(actions: actions)
        return (out, summary)
    }

    /// Users in byte order of their ids, and their events.
    struct Users {
        /// Raw user id of each rank, and rank of each raw id.
        var order: [Int], rank: [Int]
        /// Events of the user of rank u: `events[start[u]..<start[u + 1]]`, by (time, row).
        var start: [Int], events: [Int32]
        var count: Int { order.count }
    }

    /// Step 3: events grouped by user (in byte order of user ids), each user's by (time, row).
    static func groupByUser(_ ev: Events) -> Users {
        let E = ev.user.count
        let order = (0..<ev.userNames.count).sorted { byteLess(ev.userNames[$0], ev.userNames[$1]) }
        var rank = [Int](repeating: 0, count: order.count)
        for (r, u) in order.enumerated() { rank[u] = r }
        let U = order.count
        var start = [Int](repeating: 0, count: U + 1)
        for e in 0..<E { start[rank[Int(ev.user[e])] + 1] += 1 }
        for u in 0..<U { start[u + 1] += start[u] }
        var ordered = [Int32](repeating: 0, count: E)
        var fill = start
        for e in 0..<E { let r = rank[Int(ev.user[e])]; ordered[fill[r]] = Int32(e); fill[r] += 1 }
        for u in 0..<U {
            ordered[start[u]..<start[u + 1]].sort {
                ev.time[Int($0)] != ev.time[Int($1)] ? ev.time[Int($0)] < ev.time[Int($1)] : $0 < $1
            }
        }
        return Users(order: order, rank: rank, start: start, events: ordered)
    }

    /// Sessions with global ids: each event's session, and each session's size,
    /// time extent and distinct actions.
    struct Sessions {
        var of: [Int32]
        var events: [Int] = [], minTime: [Int64] = [], maxTime: [Int64] = [], actions: [Int] = []
        var count: Int { events.count }
        mutating func open(at t: Int64) -> Int32 {
            events.append(0); minTime.append(t); maxTime.append(t); actions.append(0)
            return Int32(events.count - 1)
        }
    }

    /// Step 4: sessions from the session column, or by time gaps longer than `gapS`.
    static func splitSessions(_ ev: Events, _ users: Users, gapS: Int) -> Sessions {
        var s = Sessions(of: [Int32](repeating: 0, count: ev.user.count))
        var seenAction = Set<Int64>()
        for u in 0..<users.count {
            var local: [Int32: Int32] = [:]
            var prevTime: Int64 = .min, current: Int32 = -1
            for k in users.start[u]..<users.start[u + 1] {
                let e = Int(users.events[k]), t = ev.time[e]
                let id: Int32
                if !ev.session.isEmpty {
                    if let x = local[ev.session[e]] { id = x } else { id = s.open(at: t); local[ev.session[e]] = id }
                } else {
                    if current < 0 || t - prevTime > Int64(gapS) { current = s.open(at: t) }
                    id = current
                }
                prevTime = t
                s.of[e] = id
                let i = Int(id)
                s.events[i] += 1
                s.minTime[i] = min(s.minTime[i], t); s.maxTime[i] = max(s.maxTime[i], t)
                if !ev.action.isEmpty, seenAction.insert(Int64(i) << 32 | Int64(ev.action[e])).inserted {
                    s.actions[i] += 1
                }
            }
        }
        return s
    }

    /// Step 5: each session's reliability, the mean of its capped intensity,
    /// extent and (with actions) composition.
    static func sessionReliability(_ s: Sessions, nActions: Int, hasActions: Bool, data d: Config.Data) -> [Float] {
        (0..<s.count).map { i in
            let intensity = min(Double(s.events[i]) / d.eventsCap, 1)
            let extent = min(Double(s.maxTime[i] - s.minTime[i]) / d.durationCapS, 1)
            if hasActions {
                let composition = Double(s.actions[i]) / Double(max(nActions, 1))
                return Float((intensity + extent + composition) / 3)
            }
            return Float((intensity + extent) / 2)
        }
    }

    /// Step 6: items with at least `minCount` events, most frequent first (ties
    /// in byte order); index 0 is padding. `map` takes a raw item to its index (0: dropped).
    typealias Vocabulary = (map: [Int32], ids: [String], counts: [Int64], dropped: Int)
    static func vocabulary(counts: [Int64], names: [String], minCount: Int) -> Vocabulary {
        let kept = (0..<counts.count).filter { counts[$0] >= Int64(minCount) }
            .sorted { counts[$0] != counts[$1] ? counts[$0] > counts[$1] : byteLess(names[$0], names[$1]) }
        var map = [Int32](repeating: 0, count: counts.count)
        for (i, raw) in kept.enumerated() { map[raw] = Int32(i + 1) }
        return (map, ["<pad>"] + kept.map { names[$0] }, [0] + kept.map { counts[$0] }, counts.count - kept.count)
    }

    /// The pairs of every user, stored user by user and chronologically.
    struct Pairs {
        var user: [Int32] = [], prefixOffsets: [Int64] = [0], prefixItems: [Int32] = []
        var label: [Int32] = [], timestamp: [Int64] = [], reliability: [Float] = []
        /// Pairs of the user of rank u: `userStart[u]..<userStart[u + 1]`.
        var userStart: [Int] = []
        /// Time of each user's first event (for the split by first activity).
        var firstTime: [Int64] = []
        func count(ofUser u: Int) -> Int { userStart[u + 1] - userStart[u] }
    }

    /// Steps 7–8: each user's visits (kept items, repeats of the previous one
    /// merged), then a pair per visit after the first: the last `maxSeqLen`
    /// visits before it → it.
    static func makePairs(
        _ ev: Events, _ users: Users, sessionOf: [Int32], reliability: [Float], itemMap: [Int32],
        maxSeqLen L: Int
    ) -> Pairs {
        var p = Pairs()
        p.userStart = [Int](repeating: 0, count: users.count + 1)
        p.firstTime = [Int64](repeating: 0, count: users.count)
        var visits: [Int32] = [], vTime: [Int64] = [], vSession: [Int32] = []
        for u in 0..<users.count {
            p.userStart[u] = p.label.count
            p.firstTime[u] = ev.time[Int(users.events[users.start[u]])]
            userVisits(ev, users, u, sessionOf: sessionOf, itemMap: itemMap, &visits, &vTime, &vSession)
            if visits.count < 2 { continue }
            for t in 1..<visits.count {
                p.user.append(Int32(u))
                p.prefixItems.append(contentsOf: visits[max(0, t - L)..<t])
                p.prefixOffsets.append(Int64(p.prefixItems.count))
                p.label.append(visits[t]); p.timestamp.append(vTime[t]);
                p.reliability.append(reliability[Int(vSession[t])])
            }
        }
        p.userStart[users.count] = p.label.count
        return p
    }

    /// Step 7: the visits of the user of rank u: their kept items in order, a repeat of the
    /// previous one merged, with each visit's time and session.
    static func userVisits(
        _ ev: Events, _ users: Users, _ u: Int, sessionOf: [Int32], itemMap: [Int32], _ visits: inout [Int32],
        _ vTime: inout [Int64], _ vSession: inout [Int32]
    ) {
        visits.removeAll(keepingCapacity: true); vTime.removeAll(keepingCapacity: true)
        vSession.removeAll(keepingCapacity: true)
        for k in users.start[u]..<users.start[u + 1] {
            let e = Int(users.events[k])
            let item = itemMap[Int(ev.item[e])]
            if item == 0 || item == visits.last { continue }
            visits.append(item); vTime.append(ev.time[e]); vSession.append(sessionOf[e])
        }
    }

    /// Step 9: val and test users, drawn from those with K + Q pairs, by first
    /// activity (the latest are test, then val) or at random (seeded).
    static func splitUsers(_ userIds: [String], _ pairs: Pairs, config: Config, summary: inout PrepareSummary)
        -> [Int8]
    {
        let d = config.data, U = userIds.count
        let need = d.kSupport + d.qQuery
        var eligible = (0..<U).filter { pairs.count(ofUser: $0) >= need }
        summary.eligibleUsers = eligible.count
        let wantVal = Int((d.valFraction * Double(U) + 1e-9).rounded(.down))
        let wantTest = Int((d.testFraction * Double(U) + 1e-9).rounded(.down))
        let nTest = min(wantTest, eligible.count), nVal = min(wantVal, eligible.count - nTest)
        if nTest < wantTest || nVal < wantVal {
            summary.warnings.append(
                "only \(eligible.count) users have \(need) pairs: val gets \(nVal) of \(wantVal), test \(nTest) of \(wantTest)"
            )
        }
        var split = [Int8](repeating: SplitKind.train.rawValue, count: U)
        switch d.split {
        case .byFirstActivity:
            let first = pairs.firstTime
            eligible.sort {
                first[$0] != first[$1]
                    ? first[$0] < first[$1] : byteLess(userIds[$0], userIds[$1])
            }
            for u in eligible.suffix(nTest) { split[u] = SplitKind.test.rawValue }
            for u in eligible.dropLast(nTest).suffix(nVal) { split[u] = SplitKind.val.rawValue }
        case .random:
            var g = SeededGenerator(seed: config.seed, [Stream.split])
            g.shuffle(&eligible)
            for u in eligible.prefix(nTest) { split[u] = SplitKind.test.rawValue }
            for u in eligible.dropFirst(nTest).prefix(nVal) { split[u] = SplitKind.val.rawValue }
        }
        return split
    }

    /// Step 10: a train user's windows of K + Q pairs every `train_stride`
    /// pairs; a val or test user's first K + Q pairs.
    static func makeEpisodes(_ split: [Int8], _ pairs: Pairs, data d: Config.Data) -> [SplitKind: Episodes] {
        let need = d.kSupport + d.qQuery
        var episodes: [SplitKind: Episodes] = [:]
        for s in SplitKind.allCases { episodes[s] = Episodes(k: d.kSupport, q: d.qQuery) }
        for u in 0..<split.count {
            let kind = SplitKind(rawValue: split[u])!
            let n = pairs.count(ofUser: u), base = pairs.userStart[u]
            var starts: [Int] = []
            if kind == .train {
                var i = 0
                while i + need <= n { starts.append(i); i += d.trainStride }
            } else if n >= need {
                starts = [0]
            }
            for i in starts {
                episodes[kind]!.support.append(contentsOf: (0..<d.kSupport).map { Int64(base + i + $0) })
                episodes[kind]!.query.append(contentsOf: (0..<d.qQuery).map { Int64(base + i + d.kSupport + $0) })
                episodes[kind]!.user.append(Int32(u))
            }
        }
        return episodes
    }

    // MARK: - One learner (recommend and serve)

    /// One learner's history as prepare would see it inside a log: their pairs (steps 3–8
    /// with a given vocabulary), the prefix that asks for their next course, the courses
    /// they took and what could not be used.
    public struct Learner: Sendable {
        /// Pairs, chronological, as `Dataset` stores them (`prefixOffsets` has count + 1 entries).
        public var prefixOffsets: [Int64] = [0], prefixItems: [Int32] = [], label: [Int32] = [],
            timestamp: [Int64] = [], reliability: [Float] = []
        /// The last `max_seq_len` visits: the prefix whose next course is asked for (empty: no known course).
        public var latestPrefix: [Int32] = []
        /// Time of the latest visit.
        public var latestTime: Int64 = 0
        /// Catalogue indices of the courses the learner took.
        public var seen: Set<Int32> = []
        /// Events read, and distinct course ids not in the vocabulary (ignored).
        public var events = 0, unknownItems = 0
        public var pairs: Int { label.count }
    }

    /// The history of user `user` (an index into `ev.userNames`) of `ev`, with the model's
    /// vocabulary (`itemIndex`: course id → index, 1-based) in place of a vocabulary of its
    /// own, and the training log's action count for session composition (nil: the learner's own).
    /// Sessions, reliability, visits and pairs are prepare's own steps 3–8.
    public static func learner(
        _ all: Events, user: Int32, itemIndex: [String: Int32], data d: Config.Data, actions: Int?
    ) -> Learner {
        // The learner's events alone, as a one-user log (sessions and items renumbered).
        var ev = Events()
        guard all.userNames.indices.contains(Int(user)) else { return Learner() } // no events at all
        ev.userNames = [all.userNames[Int(user)]]
        var itemOf: [Int32: Int32] = [:], sessionOf: [Int32: Int32] = [:], actionOf: [Int32: Int32] = [:]
        for e in 0..<all.count where all.user[e] == user {
            ev.user.append(0)
            let (i, newItem) = Interning.intern(all.item[e], &itemOf)
            if newItem { ev.itemNames.append(all.itemNames[Int(all.item[e])]) }
            ev.item.append(i)
            ev.time.append(all.time[e])
            if !all.session.isEmpty { ev.session.append(Interning.intern(all.session[e], &sessionOf).0) }
            if !all.action.isEmpty { ev.action.append(Interning.intern(all.action[e], &actionOf).0) }
        }
        ev.nActions = actions ?? actionOf.count
        var out = Learner()
        out.events = ev.count
        let itemMap = ev.itemNames.map { itemIndex[$0] ?? 0 }
        out.unknownItems = itemMap.filter { $0 == 0 }.count
        guard ev.count > 0 else { return out }
        let users = groupByUser(ev)
        let sessions = splitSessions(ev, users, gapS: d.sessionGapS)
        let reliability = sessionReliability(sessions, nActions: ev.nActions, hasActions: !ev.action.isEmpty, data: d)
        let pairs = makePairs(
            ev, users, sessionOf: sessions.of, reliability: reliability, itemMap: itemMap, maxSeqLen: d.maxSeqLen)
        out.prefixOffsets = pairs.prefixOffsets; out.prefixItems = pairs.prefixItems; out.label = pairs.label
        out.timestamp = pairs.timestamp; out.reliability = pairs.reliability
        var visits: [Int32] = [], vTime: [Int64] = [], vSession: [Int32] = []
        userVisits(ev, users, 0, sessionOf: sessions.of, itemMap: itemMap, &visits, &vTime, &vSession)
        out.latestPrefix = Array(visits.suffix(d.maxSeqLen))
        out.latestTime = vTime.last ?? 0
        out.seen = Set(visits)
        return out
    }
}

import Core
import ExperimentConfig
import Foundation

/// `prepare` in bounded memory: the log is read once (steps 1–2), its events go to a
/// sort buffer of a fixed size that spills to a file beside the output when full, and
/// users are then taken in byte order of their ids, a bucket of them at a time (each
/// bucket at most the buffer's size), through steps 3–8 one user at a time. What grows
/// with the log is what the dataset holds (pairs, episodes) and one entry per user, item
/// and action; the events themselves never are all in memory.
///
/// Each user's steps are the very functions the in-memory path runs (`groupByUser`,
/// `splitSessions`, `sessionReliability`, `makePairs`, on a log of that user alone), so
/// the dataset is the same, bit for bit (PrepareTests checks it with spills forced).
extension Prepare {
    /// `--memory`'s default: 4 GiB.
    public static let defaultMemory = 4 << 30

    /// One event between the parse and the per-user steps: a session is kept as a 128-bit
    /// hash of its id (sessions are compared within a user only).
    struct Record {
        var time: Int64
        var session: SessionKey
        var user: Int32, item: Int32, action: Int32
    }

    struct SessionKey: Hashable {
        var a: UInt64 = 0, b: UInt64 = 0
    }

    /// Two 64-bit hashes of a session id's bytes (FNV-1a and a multiply-xorshift, each
    /// finished by splitmix64's mix): two ids of one user are taken as one session only if
    /// both agree.
    static func sessionKey(_ f: SessionField) -> SessionKey {
        func mix(_ x: UInt64) -> UInt64 {
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        func hash(_ b: UnsafeBufferPointer<UInt8>) -> SessionKey {
            var h1: UInt64 = 0xCBF2_9CE4_8422_2325, h2: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(b.count)
            for x in b {
                h1 = (h1 ^ UInt64(x)) &* 0x0000_0100_0000_01B3
                h2 = (h2 ^ UInt64(x)) &* 0xFF51_AFD7_ED55_8CCD
                h2 ^= h2 >> 29
            }
            return SessionKey(a: mix(h1), b: mix(h2 ^ (h1 &* 0xC4CE_B9FE_1A85_EC53)))
        }
        if f.quoted {
            var s = f.string
            return s.withUTF8 { hash($0) }
        }
        return hash(f.bytes)
    }

    /// Builds a dataset from an event log in at most about `memory` bytes beyond what the
    /// dataset itself holds: a quarter of `memory` is the sort buffer; beyond it events spill
    /// to a file in `spillDirectory` (default: the system's temporary directory), removed
    /// when done. `delimiter` nil means the one the file name implies.
    public static func run(
        csvPath: String, columns: ColumnMap = ColumnMap(), delimiter: UInt8? = nil,
        skipBadRows: Bool = false, config: Config, memory: Int = defaultMemory, spillDirectory: String? = nil
    ) throws -> (Dataset, PrepareSummary) {
        let fileName = URL(fileURLWithPath: csvPath).lastPathComponent
        let log: FileMapping
        do { log = try FileMapping(csvPath, sequential: true) } catch let e as FileMapping.Failure {
            throw MetatrainError("\(csvPath): cannot read event log (\(e.reason))")
        }
        let chunk = min(Int(Int32.max), max(1 << 12, memory / 4 / MemoryLayout<Record>.stride))
        let sorter = try Sorter(
            chunk: chunk, directory: spillDirectory ?? FileManager.default.temporaryDirectory.path)
        var userEvents: [Int] = [], itemCounts: [Int64] = []
        var scanned = try scan(
            bytes: log.bytes.bindMemory(to: UInt8.self), fileName: fileName, columns: columns,
            delimiter: delimiter ?? Delimiter.implied(byFileName: fileName), skipBadRows: skipBadRows,
            consumed: log.release(before:)
        ) { user, item, time, session, action in
            if Int(user) == userEvents.count { userEvents.append(0) }
            userEvents[Int(user)] += 1
            if Int(item) == itemCounts.count { itemCounts.append(0) }
            itemCounts[Int(item)] += 1
            try sorter.append(
                Record(
                    time: time, session: session.map(sessionKey) ?? SessionKey(), user: user, item: item,
                    action: action ?? 0))
        }
        try sorter.finishInput()

        let d = config.data
        let hasSessions = scanned.summary.usedSessionColumn, hasActions = scanned.summary.usedActionColumn
        let names = scanned.userNames
        let U = names.count
        let order = (0..<U).sorted { byteLess(names[$0], names[$1]) }
        var rank = [Int32](repeating: 0, count: U)
        for (r, u) in order.enumerated() { rank[u] = Int32(r) }
        let vocab = vocabulary(counts: itemCounts, names: scanned.itemNames, minCount: d.minItemCount)
        scanned.summary.droppedItems = vocab.dropped

        var pairs = Pairs()
        let events = scanned.summary.events
        pairs.user.reserveCapacity(events); pairs.label.reserveCapacity(events)
        pairs.timestamp.reserveCapacity(events); pairs.reliability.reserveCapacity(events)
        pairs.prefixOffsets.reserveCapacity(events + 1)
        pairs.userStart = [Int](repeating: 0, count: U + 1)
        pairs.firstTime = [Int64](repeating: 0, count: U)
        var sessions = 0
        var one = Events()
        one.userNames = [""]
        var local: [SessionKey: Int32] = [:]
        // Users in byte order, a bucket at a time: at most `chunk` events (or one user's).
        var lo = 0
        while lo < U {
            var hi = lo, n = 0
            while hi < U && (hi == lo || n + userEvents[order[hi]] <= chunk) {
                n += userEvents[order[hi]]; hi += 1
            }
            // The bucket's events, user by user, each user's in the log's order: copies of the
            // spilled ones, or (nothing spilled) their places in the buffer.
            var start = [Int](repeating: 0, count: hi - lo + 1)
            for r in lo..<hi { start[r - lo + 1] = start[r - lo] + userEvents[order[r]] }
            var fill = start
            var bucket: [Record] = [], place: [Int32] = []
            if sorter.spilled {
                bucket = [Record](unsafeUninitializedCapacity: n) { buf, count in
                    sorter.forEachSpilled { rec in
                        let r = Int(rank[Int(rec.user)])
                        guard r >= lo && r < hi else { return }
                        (buf.baseAddress! + fill[r - lo]).initialize(to: rec)
                        fill[r - lo] += 1
                    }
                    count = n
                }
            } else {
                place = [Int32](repeating: 0, count: n)
                for (k, rec) in sorter.buffer.enumerated() {
                    let r = Int(rank[Int(rec.user)]) - lo
                    guard r >= 0 && r < hi - lo else { continue }
                    place[fill[r]] = Int32(k); fill[r] += 1
                }
            }
            for r in lo..<hi {
                // Steps 3–8 on a log of this user alone.
                one.user.removeAll(keepingCapacity: true); one.item.removeAll(keepingCapacity: true)
                one.time.removeAll(keepingCapacity: true); one.session.removeAll(keepingCapacity: true)
                one.action.removeAll(keepingCapacity: true); local.removeAll(keepingCapacity: true)
                for k in start[r - lo]..<start[r - lo + 1] {
                    let rec = sorter.spilled ? bucket[k] : sorter.buffer[Int(place[k])]
                    one.user.append(0); one.item.append(rec.item); one.time.append(rec.time)
                    if hasSessions { one.session.append(Interning.intern(rec.session, &local).0) }
                    if hasActions { one.action.append(rec.action) }
                }
                let users = groupByUser(one)
                let s = splitSessions(one, users, gapS: d.sessionGapS)
                sessions += s.count
                let reliability = sessionReliability(
                    s, nActions: scanned.nActions, hasActions: hasActions, data: d)
                let p = makePairs(
                    one, users, sessionOf: s.of, reliability: reliability, itemMap: vocab.map, maxSeqLen: d.maxSeqLen)
                pairs.userStart[r] = pairs.label.count
                pairs.firstTime[r] = p.firstTime[0]
                let base = Int64(pairs.prefixItems.count)
                pairs.user.append(contentsOf: repeatElement(Int32(r), count: p.label.count))
                pairs.prefixItems.append(contentsOf: p.prefixItems)
                for o in p.prefixOffsets.dropFirst() { pairs.prefixOffsets.append(base + o) }
                pairs.label.append(contentsOf: p.label); pairs.timestamp.append(contentsOf: p.timestamp)
                pairs.reliability.append(contentsOf: p.reliability)
            }
            lo = hi
        }
        pairs.userStart[U] = pairs.label.count
        sorter.close()
        scanned.summary.sessions = sessions
        return finish(
            userIds: order.map { names[$0] }, pairs: pairs, vocab: vocab, source: scanned.source,
            actions: hasActions ? scanned.nActions : nil, config: config, summary: &scanned.summary)
    }

    /// The in-memory path (every event in memory at once): what `run` must equal, and what
    /// `learner` runs on one user's events.
    static func runInMemory(
        csvPath: String, columns: ColumnMap = ColumnMap(), delimiter: UInt8? = nil,
        skipBadRows: Bool = false, config: Config
    ) throws -> (Dataset, PrepareSummary) {
        var (ev, source, summary) = try read(
            csvPath: csvPath, columns: columns, delimiter: delimiter, skipBadRows: skipBadRows)
        return build(events: ev, source: source, config: config, summary: &summary)
    }

    /// The sort buffer: events in the log's order, in memory up to `chunk` of them; the
    /// first time it fills, it and everything after it goes to a spill file (created
    /// unlinked-on-close in `directory`), read back through a mapping.
    final class Sorter {
        let chunk: Int, directory: String
        private(set) var buffer: [Record] = []
        private var fd: Int32 = -1, path = ""
        private var mapping: FileMapping?

        init(chunk: Int, directory: String) throws {
            self.chunk = chunk; self.directory = directory
            buffer.reserveCapacity(min(chunk, 1 << 16))
        }

        func append(_ r: Record) throws {
            buffer.append(r)
            if buffer.count >= chunk { try flush() }
        }

        /// Writes the buffer to the spill file (made on first use) and empties it.
        private func flush() throws {
            if fd < 0 {
                path = directory + "/.metatrain-prepare-\(getpid())-\(UInt64.random(in: 0..<UInt64.max)).spill"
                fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
                guard fd >= 0 else {
                    throw MetatrainError(
                        "\(path): cannot create the sort's spill file (\(String(cString: strerror(errno)))); raise --memory or give --spill-dir"
                    )
                }
            }
            if let e = buffer.withUnsafeBytes({ writeAll(fd, $0) }) {
                throw MetatrainError(
                    "\(path): cannot write the sort's spill file (\(String(cString: strerror(e)))); free space there, raise --memory or give --spill-dir"
                )
            }
            buffer.removeAll(keepingCapacity: true)
        }

        /// No more events: if any spilled, the rest follows them and the file is mapped.
        func finishInput() throws {
            guard fd >= 0 else { return }
            if !buffer.isEmpty { try flush() }
            buffer = []
            do { mapping = try FileMapping(path, sequential: true) } catch let e as FileMapping.Failure {
                throw MetatrainError("\(path): cannot read back the sort's spill file (\(e.reason))")
            }
            unlink(path)
        }

        /// Whether events went to the spill file (then they are all there; otherwise all in `buffer`).
        var spilled: Bool { mapping != nil }

        /// Every spilled event, in the log's order.
        func forEachSpilled(_ body: (Record) -> Void) {
            guard let m = mapping else { return }
            m.rewind()
            let records = m.bytes.bindMemory(to: Record.self)
            for (k, r) in records.enumerated() {
                body(r)
                if k & 0xFFFF == 0 { m.release(before: k * MemoryLayout<Record>.stride) }
            }
        }

        /// Lets go of the buffer and the spill file (also when prepare fails half-way).
        func close() {
            buffer = []; mapping = nil
            if fd >= 0 {
                Glibc.close(fd)
                unlink(path)
                fd = -1
            }
        }

        deinit { close() }
    }
}

/// A size in bytes as a user writes it: `4G`, `512M`, `1.5G`, `64K` (powers of 1024) or
/// plain bytes.
public enum ByteSize {
    public static func parse(_ text: String) throws -> Int {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Double)] = [("G", 1_073_741_824), ("M", 1_048_576), ("K", 1024)]
        var number = t.hasSuffix("B") && t.count > 1 ? String(t.dropLast()) : t
        var scale = 1.0
        for (u, m) in units where number.hasSuffix(u) {
            number.removeLast(); scale = m
            break
        }
        guard let v = Double(number), v.isFinite, v > 0, v * scale < 1e15 else {
            throw MetatrainError("'\(text)' is not a size (e.g. 4G, 512M, 64K or bytes)")
        }
        return Int(v * scale)
    }
}

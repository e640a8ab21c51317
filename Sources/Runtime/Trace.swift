import Core
import Foundation
import Wire

/// A timeline of one process's protocol and compute events, kept in memory and
/// written as JSON lines when the process ends (`--trace`). Timestamps are
/// CLOCK_MONOTONIC seconds, which all processes on one machine share, so the
/// coordinator's and the workers' files merge into one timeline (`bench` does).
///
/// One line per event: {"t": seconds, "process": "coordinator", "event": "result", "n": 17}.
public final class Trace {
    /// What happened; `n` says to which unit, iteration or version.
    public enum Event: String, Sendable, CaseIterable {
        /// Coordinator: a phase's units are ready to go out (n = version it computes on).
        case phase
        /// Coordinator: a work unit sent (n = unit id).
        case send
        /// Coordinator: a unit's result received and accepted by the machine (n = unit id).
        case result
        /// Coordinator: new weights published (n = version).
        case published
        /// Worker: weights received, broadcast or fetched (n = version).
        case weights
        /// Worker: a work unit received (n = unit id).
        case work
        /// Worker: a unit's computation starts (n = unit id); it includes installing new weights.
        case compute
        /// Worker: a unit's computation ends, before its result is encoded (n = unit id).
        case computed
        /// Worker: a unit's result handed to ZeroMQ (n = unit id).
        case sent
        /// Worker: weights asked for (missed or unreadable broadcast, late join; n = 0).
        case fetch
    }

    public struct Record: Equatable, Sendable {
        public var t: Double
        public var process: String
        public var event: Event
        public var n: Int
        public init(t: Double, process: String, event: Event, n: Int) {
            self.t = t; self.process = process; self.event = event; self.n = n
        }
    }

    public let process: String
    private var times: [Double] = []
    private var events: [Event] = []
    private var ns: [Int] = []

    public init(process: String) {
        self.process = process
        times.reserveCapacity(1 << 14); events.reserveCapacity(1 << 14); ns.reserveCapacity(1 << 14)
    }

    public func mark(_ e: Event, _ n: Int = 0) {
        times.append(monotonicNow()); events.append(e); ns.append(n)
    }

    /// Marks a received message: a result (coordinator), weights or work (worker); others are not traced.
    func received(_ m: Message) {
        switch m {
        case .trainResult(let r): mark(.result, r.unitId)
        case .evalResult(let r): mark(.result, r.unitId)
        case .weights(let w): mark(.weights, w.version)
        case .work(let u): mark(.work, u.id)
        default: break
        }
    }

    /// Marks a result handed to ZeroMQ or a weights fetch (worker); other messages are not traced.
    func sent(_ m: Message) {
        switch m {
        case .trainResult(let r): mark(.sent, r.unitId)
        case .evalResult(let r): mark(.sent, r.unitId)
        case .fetchWeights: mark(.fetch)
        default: break
        }
    }

    public var records: [Record] {
        (0..<times.count).map { Record(t: times[$0], process: process, event: events[$0], n: ns[$0]) }
    }

    /// Writes the timeline atomically as JSON lines.
    public func write(to path: String) throws {
        var s = ""
        s.reserveCapacity(64 * times.count)
        for i in 0..<times.count {
            // Microseconds: JSON.number keeps only 6 significant digits.
            s += String(
                format: "{\"t\":%.6f,\"process\":%@,\"event\":\"%@\",\"n\":%d}\n", times[i],
                JSON.quote(process), events[i].rawValue, ns[i])
        }
        try writeFileAtomically(path, contents: s)
    }

    /// Reads a file written by `write(to:)`.
    public static func read(_ path: String) throws -> [Record] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw MetatrainError("\(path): cannot read trace")
        }
        var out: [Record] = []
        for (i, line) in text.split(separator: "\n").enumerated() {
            guard let j = try? JSON.parse(String(line)), let t = j["t"]?.double, let p = j["process"]?.string,
                let e = j["event"]?.string.flatMap(Event.init(rawValue:)), let n = j["n"]?.double
            else {
                throw MetatrainError("\(path):\(i + 1): not a trace record")
            }
            out.append(Record(t: t, process: p, event: e, n: Int(n)))
        }
        return out
    }
}

/// Where the time of meta-iterations went, from a merged timeline: each
/// iteration runs from one `published` to the next, and each worker's share of
/// it is either computing or idle at one of four places. Per worker, the
/// parts add up to the iteration's length.
public struct IterationBreakdown: Equatable, Sendable {
    /// Iterations measured.
    public var iterations = 0
    /// Mean seconds per iteration.
    public var length = 0.0
    /// Mean seconds a worker spends computing units (installing the weights included).
    public var compute = 0.0
    /// Mean idle seconds from the publish to a worker's first computation.
    public var start = 0.0
    /// Mean idle seconds between a worker's units.
    public var between = 0.0
    /// Mean idle seconds from a worker's last computation to the last worker's.
    public var tail = 0.0
    /// Mean seconds from the last computation's end to the next publish (encode, transfer,
    /// reduce, Adam, broadcast): every worker is idle.
    public var end = 0.0

    /// Breaks down the iterations that end with the given versions' publishes.
    public init(_ records: [Trace.Record], versions: ClosedRange<Int>) {
        var published: [Int: Double] = [:]
        for r in records where r.process == "coordinator" && r.event == .published { published[r.n] = r.t }
        // Each worker's computations as (start, end) intervals, in time order.
        var intervals: [String: [(Double, Double)]] = [:]
        var open: [String: Double] = [:]
        for r in records.sorted(by: { $0.t < $1.t }) where r.process != "coordinator" {
            if r.event == .compute { open[r.process] = r.t }
            if r.event == .computed, let s = open.removeValue(forKey: r.process) {
                intervals[r.process, default: []].append((s, r.t))
            }
        }
        let workers = intervals.keys.sorted()
        guard !workers.isEmpty else { return }
        for v in versions {
            guard let a = published[v - 1], let b = published[v] else { continue }
            var lastEnds: [Double] = [], busy = 0.0, start = 0.0, between = 0.0
            for w in workers {
                let inside = intervals[w]!.filter { $0.0 >= a && $0.1 <= b }
                guard let first = inside.first, let last = inside.last else { continue }
                let c = inside.reduce(0) { $0 + $1.1 - $1.0 }
                busy += c
                start += first.0 - a
                between += (last.1 - first.0) - c
                lastEnds.append(last.1)
            }
            guard let latest = lastEnds.max() else { continue }
            let n = Double(lastEnds.count)
            iterations += 1
            length += b - a
            compute += busy / n
            self.start += start / n
            self.between += between / n
            tail += lastEnds.reduce(0) { $0 + latest - $1 } / n
            end += b - latest
        }
        guard iterations > 0 else { return }
        let k = Double(iterations)
        length /= k; compute /= k; start /= k; between /= k; tail /= k; end /= k
    }
}

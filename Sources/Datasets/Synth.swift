import Core
import Foundation

/// A synthetic XuetangX-style event log with planted structure (docs/FORMATS.md, "Event log"):
///
/// - **Groups.** Users belong to one of `groups` groups. Each group has its own
///   course-transition table: from course c, the next course is one of three
///   group-specific successors (probabilities 0.6 / 0.25 / 0.15), drawn from a
///   group-specific pool of courses. A cold-start user's first transitions
///   reveal the group, which is what meta-learning exploits.
/// - **Drift.** A `driftFraction` of users switch to their partner group's
///   table (same courses, different order) part-way through their history, so
///   their most recent transitions predict the future better than their oldest
///   ones: recency weighting helps. (`driftAfter` sets the window.)
/// - **Noisy sessions.** With probability `noiseRate` a visit is a short,
///   low-reliability session (1–2 events within a minute, one action kind) on a
///   uniformly random course that does not follow the transition table (and
///   does not move the user's position in it): reliability weighting helps.
///
/// Reliable sessions have 3–12 events over 5–40 minutes with varied actions.
/// Sessions are separated by 2 hours to 3 days. Deterministic for a seed.
public struct SynthOptions: Sendable {
    public var users = 3000, courses = 400, groups = 8
    public var minVisits = 16, maxVisits = 45
    public var driftFraction = 0.5, noiseRate = 0.2
    /// Fraction of the courses in each group's pool (at least 5 courses).
    public var poolFraction = 0.4
    /// Drift happens after this many reliable visits, drawn uniformly from the range.
    public var driftAfter = 3...9
    public var seed: UInt64 = 20_260_107
    public init() {}
}

public let xuetangxActions = [
    "load_video", "play_video", "pause_video", "seek_video", "stop_video", "problem_get", "problem_check",
    "problem_check_correct", "problem_check_incorrect", "problem_save", "reset_problem", "create_thread",
    "create_comment", "delete_thread", "delete_comment", "click_forum", "close_forum", "click_info",
    "click_courseware", "click_about", "click_progress", "close_courseware", "close_info"
]

public struct SynthSummary: Sendable {
    public var users = 0, events = 0, visits = 0, noisyVisits = 0, driftUsers = 0
}

public enum Synth {
    /// Writes the log to `path` atomically and returns counts. The log is written as it is
    /// made, 8 MB at a time: its size does not add to memory.
    public static func write(to path: String, options o: SynthOptions) throws -> SynthSummary {
        var summary = SynthSummary()
        try writeAtomically(to: path) { tmp in
            let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw MetatrainError("\(path): cannot write event log (\(String(cString: strerror(errno))))")
            }
            var closed = false
            defer { if !closed { close(fd) } }
            summary = try generate(o) { chunk in
                if let e = writeAll(fd, chunk) {
                    throw MetatrainError("\(path): cannot write event log (\(String(cString: strerror(e))))")
                }
            }
            closed = true
            guard close(fd) == 0 else {
                throw MetatrainError("\(path): cannot write event log (\(String(cString: strerror(errno))))")
            }
        }
        return summary
    }

    /// The group tables (successors[group][course] = 3 courses), from the seed
    /// alone. Groups come in partner pairs (0,1), (2,3), …: partners draw their
    /// successors from the same pool of `poolFraction` of the courses but in a
    /// different order. A learner's next courses concentrate on its pool, and
    /// which order it follows is what a few support pairs reveal and a short
    /// prefix does not.
    public static func successors(_ o: SynthOptions) -> [[[Int]]] {
        var g = SeededGenerator(seed: o.seed, [Stream.synth, 1])
        let poolSize = min(o.courses, max(5, Int(Double(o.courses) * o.poolFraction)))
        var pools: [[Int]] = []
        for group in 0..<o.groups {
            if group % 2 == 1 { pools.append(pools[group - 1]); continue } // partners share a pool
            var all = Array(0..<o.courses)
            g.shuffle(&all)
            pools.append(Array(all.prefix(poolSize)))
        }
        return pools.map { pool in
            (0..<o.courses).map { c in
                var s: [Int] = []
                while s.count < 3 {
                    let x = pool[g.below(pool.count)]
                    if x != c && !s.contains(x) { s.append(x) }
                }
                return s
            }
        }
    }

    /// The group a drifting learner moves to: its partner (same courses, other order) when there is one.
    static func driftTarget(_ group: Int, _ o: SynthOptions, _ g: inout SeededGenerator) -> Int {
        let partner = group ^ 1
        if partner < o.groups { return partner }
        var other = group
        while other == group { other = g.below(o.groups) }
        return other
    }

    /// The whole log in memory, and its counts.
    public static func generate(_ o: SynthOptions) -> (Data, SynthSummary) {
        var all = Data()
        let summary = generate(o) { all.append(contentsOf: $0) }
        return (all, summary)
    }

    /// Makes the log, handing it to `emit` in pieces of about 8 MB, in order.
    static func generate(_ o: SynthOptions, emit: (UnsafeRawBufferPointer) throws -> Void) rethrows -> SynthSummary {
        precondition(o.courses >= 5 && o.groups >= 1 && o.users >= 1 && o.minVisits >= 2 && o.maxVisits >= o.minVisits)
        let succ = successors(o)
        var summary = SynthSummary()
        var out: [UInt8] = []
        out.reserveCapacity(9 << 20)
        out.append(contentsOf: Array("username,course_id,session_id,action,time\n".utf8))
        let reliableActions = Array(xuetangxActions.prefix(20))
        let noisyActions = ["click_about", "click_info", "click_progress"]
        let courseNames = (0..<o.courses).map { String(format: "course-v1:SynthX+C%04d+2015_T1", $0) }
        let t0 = Int64(daysFromCivil(2015, 6, 1)) * 86400
        for u in 0..<o.users {
            var g = SeededGenerator(seed: o.seed, [Stream.synth, 2, UInt64(u)])
            let user = String(format: "u%06d", u)
            let group1 = g.below(o.groups)
            var group2 = group1
            let drifts = o.groups > 1 && g.uniformDouble() < o.driftFraction
            if drifts { group2 = driftTarget(group1, o, &g); summary.driftUsers += 1 }
            let driftAt = o.driftAfter.lowerBound + g.below(o.driftAfter.count)
            let nVisits = o.minVisits + g.below(o.maxVisits - o.minVisits + 1)
            var t = t0 + Int64(g.below(365 * 86400))
            var course = g.below(o.courses) // position in the transition table
            var last = -1 // last course written (visits must change course)
            var reliableVisits = 0
            for v in 0..<nVisits {
                let noisy = v > 0 && g.uniformDouble() < o.noiseRate
                var c: Int
                if v == 0 {
                    c = course
                } else if noisy {
                    repeat { c = g.below(o.courses) } while c == last
                } else {
                    let table = drifts && reliableVisits >= driftAt ? succ[group2] : succ[group1]
                    let choices = table[course]
                    let r = g.uniformDouble()
                    c = choices[r < 0.6 ? 0 : (r < 0.85 ? 1 : 2)]
                    if c == last { c = choices.first { $0 != last } ?? c }
                }
                if !noisy { course = c; reliableVisits += 1 } else { summary.noisyVisits += 1 }
                last = c
                let session = String(format: "%@-%04x", user, v)
                let nEvents = noisy ? 1 + g.below(2) : 3 + g.below(10)
                var et = t
                for k in 0..<nEvents {
                    let action =
                        noisy
                        ? noisyActions[v % noisyActions.count]
                        : (k == 0 ? "load_video" : reliableActions[g.below(reliableActions.count)])
                    let line = "\(user),\(courseNames[c]),\(session),\(action),\(formatTime(et))\n"
                    out.append(contentsOf: line.utf8)
                    summary.events += 1
                    et += noisy ? Int64(5 + g.below(25)) : Int64(60 + g.below(240))
                }
                summary.visits += 1
                t = et + Int64(7200 + g.below(3 * 86400))
            }
            if out.count >= 8 << 20 {
                try out.withUnsafeBytes(emit)
                out.removeAll(keepingCapacity: true)
            }
        }
        try out.withUnsafeBytes(emit)
        summary.users = o.users
        return summary
    }
}

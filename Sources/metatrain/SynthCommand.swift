import ArgumentParser
import Datasets
import Foundation

struct SynthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "synth",
        abstract: "Writes a synthetic XuetangX-style event log with planted structure.",
        discussion: """
            Users fall into groups with their own course-transition patterns, half of
            them drift to a second pattern, and a fifth of sessions are short, noisy
            visits to random courses. Deterministic for a seed.
            Example:
              metatrain synth --out data/events.csv --users 3000 --courses 400 --seed 7
            """)

    @Option(help: "Output CSV path.") var out: String
    @Option(help: "Number of users.") var users = 3000
    @Option(help: "Number of courses.") var courses = 400
    @Option(help: "Number of user groups (transition patterns).") var groups = 8
    @Option(help: "Fraction of users whose preferences drift.") var drift = 0.5
    @Option(help: "Fraction of visits that are noisy, low-reliability sessions.") var noise = 0.2
    @Option(help: "Fraction of the courses in each group's pool of next courses.") var pool = 0.4
    @Option(help: "Earliest reliable visit after which a drifting user switches pattern.") var driftFrom = 3
    @Option(help: "Latest reliable visit after which a drifting user switches pattern.") var driftTo = 9
    @Option(help: "Random seed.") var seed: UInt64 = 20_260_107

    func validate() throws {
        guard users >= 1, courses >= 5, groups >= 1 else {
            throw ValidationError("need --users ≥ 1, --courses ≥ 5, --groups ≥ 1")
        }
        guard (0...1).contains(drift), (0..<1).contains(noise) else {
            throw ValidationError("--drift must be in [0,1] and --noise in [0,1)")
        }
        guard pool > 0 && pool <= 1 else { throw ValidationError("--pool must be in (0, 1]") }
        guard driftFrom >= 1, driftTo >= driftFrom else { throw ValidationError("need 1 ≤ --drift-from ≤ --drift-to") }
    }

    func run() throws {
        var o = SynthOptions()
        o.users = users; o.courses = courses; o.groups = groups; o.driftFraction = drift; o.noiseRate = noise;
        o.seed = seed
        o.driftAfter = driftFrom...driftTo
        o.poolFraction = pool
        let started = Date()
        let s = try Synth.write(to: out, options: o)
        print(
            "wrote \(out): \(s.events) events, \(s.users) users, \(s.visits) visits (\(s.noisyVisits) noisy), \(s.driftUsers) drifting users, \(String(format: "%.1f", Date().timeIntervalSince(started)))s"
        )
    }
}

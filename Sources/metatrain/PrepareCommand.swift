import ArgumentParser
import Configuration
import Data
import Foundation
import Storage

struct PrepareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare",
        abstract: "Turns an event log CSV into a dataset HDF5 of pairs and cold-start episodes.",
        discussion: """
        Sessions, reliability, vocabulary, pairs, user split and episodes follow
        docs/FORMATS.md; the knobs are the config's data.* keys.
        Examples:
          metatrain prepare --events data/events.csv --out data/dataset.h5
          metatrain prepare --events ratings.csv --out ratings.h5 --user-col userId \\
              --item-col movieId --time-col timestamp --action-col rating
        """)

    @Option(help: "Input event log (CSV with a header).") var events: String
    @Option(help: "Output dataset (HDF5).") var out: String
    @Option(help: "User column name.") var userCol = "username"
    @Option(help: "Item column name.") var itemCol = "course_id"
    @Option(help: "Time column name (unix seconds or ISO-8601).") var timeCol = "time"
    @Option(help: "Session column name (used if present; otherwise sessions split on time gaps).") var sessionCol: String?
    @Option(help: "Action column name (used if present, for session reliability).") var actionCol: String?
    @Flag(help: "Skip malformed rows (counted in the summary) instead of failing.") var skipBadRows = false
    @OptionGroup var options: ConfigOptions

    func run() throws {
        let config = try options.load()
        var cols = ColumnMap()
        cols.user = userCol; cols.item = itemCol; cols.time = timeCol
        if let s = sessionCol { cols.session = s; cols.sessionRequired = true }
        if let a = actionCol { cols.action = a; cols.actionRequired = true }
        let started = Date()
        let (dataset, summary) = try Prepare.run(csvPath: events, columns: cols, skipBadRows: skipBadRows, config: config)
        try DatasetFile.write(dataset, to: out)
        let secs = Date().timeIntervalSince(started)
        print("wrote \(out) in \(String(format: "%.1f", secs))s")
        print(summary.text, terminator: "")
        print("fingerprint: \(dataset.fingerprint)")
    }
}

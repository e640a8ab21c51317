import ArgumentParser
import Datasets
import ExperimentConfig
import Foundation
import Storage

struct PrepareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare",
        abstract:
            "Turns an event log (CSV, TSV or RecBole .inter) into a dataset HDF5 of pairs and cold-start episodes.",
        discussion: """
            Sessions, reliability, vocabulary, pairs, user split and episodes follow
            docs/FORMATS.md; the knobs are the config's data.* keys. Fields are
            separated by commas, or by tabs for .tsv and .inter files, unless
            --delimiter says otherwise. A RecBole atomic file's `name:type` headers
            are read by name, and its columns default to user_id, item_id and
            timestamp. The events go through a sort buffer of a quarter of
            --memory; a longer log spills to a file beside --out (or in
            --spill-dir), removed at the end. The dataset's own arrays come on top.
            Examples:
              metatrain prepare --events data/events.csv --out data/dataset.h5
              metatrain prepare --events ratings.csv --out ratings.h5 --user-col userId \\
                  --item-col movieId --time-col timestamp --action-col rating
              metatrain prepare --events ml-1m.inter --out ml-1m.h5 --action-col rating
              metatrain prepare --events log.txt --delimiter ';' --out log.h5
              metatrain prepare --events big.csv --out big.h5 --memory 2G
            """)

    @Option(help: "Input event log (CSV with a header).") var events: String
    @Option(help: "Output dataset (HDF5).") var out: String
    @OptionGroup var columns: EventColumnOptions
    @Flag(help: "Skip malformed rows (counted in the summary) instead of failing.") var skipBadRows = false
    @Option(help: "Memory budget for the sort of events (e.g. 4G, 512M); beyond it they spill to disk.")
    var memory = "4G"
    @Option(help: "Directory for the sort's spill file (default: the directory of --out).") var spillDir: String?
    @OptionGroup var options: ConfigOptions

    func run() throws {
        let config = try options.load()
        let (cols, sep) = try columns.resolve(forFile: events)
        let budget: Int
        do { budget = try ByteSize.parse(memory) } catch { throw ValidationError("--memory: \(error)") }
        let started = Date()
        let (dataset, summary) = try Prepare.run(
            csvPath: events, columns: cols, delimiter: sep, skipBadRows: skipBadRows, config: config,
            memory: budget,
            spillDirectory: spillDir ?? URL(fileURLWithPath: out).deletingLastPathComponent().path)
        let fingerprint = dataset.fingerprint
        try DatasetFile.write(dataset, to: out, fingerprint: fingerprint)
        let secs = Date().timeIntervalSince(started)
        print("wrote \(out) in \(String(format: "%.1f", secs))s")
        print(summary.text, terminator: "")
        print("fingerprint: \(fingerprint)")
    }
}

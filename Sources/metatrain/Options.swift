import ArgumentParser
import Datasets
import ExperimentConfig

/// --config, --set and --seed: how every subcommand that trains or evaluates gets its configuration.
struct ConfigOptions: ParsableArguments {
    @Option(help: "Experiment configuration (YAML); defaults apply to every key it leaves out.")
    var config: String?

    @Option(
        name: .customLong("set"),
        help: ArgumentHelp(
            "Override a config key, e.g. --set maml.inner_lr=0.05 (repeatable).", valueName: "key.path=value"))
    var overrides: [String] = []

    @Option(help: "Random seed (overrides the config's seed).")
    var seed: UInt64?

    func load() throws -> Config {
        try Config.load(path: config, overrides: overrides + (seed.map { ["seed=\($0)"] } ?? []))
    }
}

/// `s` as one word for a POSIX shell: unchanged when it needs no quoting, else in single quotes.
func shellQuoted(_ s: String) -> String {
    let plain = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@%+")
    if !s.isEmpty && s.allSatisfy({ plain.contains($0) }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// How an event log's fields are found: prepare's flags, which recommend takes too.
struct EventColumnOptions: ParsableArguments {
    @Option(
        help:
            "Field separator: comma, tab, semicolon, pipe, space or any single character (default: tab for .tsv/.inter, else comma)."
    )
    var delimiter: String?
    @Option(help: "User column name (default: username; user_id for .inter).") var userCol: String?
    @Option(help: "Item column name (default: course_id; item_id for .inter).") var itemCol: String?
    @Option(help: "Time column name, unix seconds or ISO-8601 (default: time; timestamp for .inter).") var timeCol:
        String?
    @Option(help: "Session column name (used if present; otherwise sessions split on time gaps).") var sessionCol:
        String?
    @Option(help: "Action column name (used if present, for session reliability).") var actionCol: String?

    /// The columns and delimiter for `file`: its name's defaults, then these flags.
    func resolve(forFile file: String) throws -> (ColumnMap, UInt8?) {
        let sep = try delimiter.map(Delimiter.parse)
        var cols = ColumnMap.implied(byFileName: file)
        if let userCol { cols.user = userCol }
        if let itemCol { cols.item = itemCol }
        if let timeCol { cols.time = timeCol }
        if let s = sessionCol { cols.session = s; cols.sessionRequired = true }
        if let a = actionCol { cols.action = a; cols.actionRequired = true }
        return (cols, sep)
    }
}

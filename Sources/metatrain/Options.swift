import ArgumentParser
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

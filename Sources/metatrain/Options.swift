import ArgumentParser
import Configuration

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

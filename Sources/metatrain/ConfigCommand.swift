import ArgumentParser
import ExperimentConfig
import Foundation

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Prints the resolved configuration as YAML, each key with its meaning and allowed values.",
        discussion: """
            The defaults, then --config, then --set, exactly as train, pretrain and
            coordinator resolve them: the output is a valid --config file. With
            --markdown it prints every key as a table instead (docs/CONFIG.md).
            Example:
              metatrain config --config configs/fomaml.yaml --set maml.inner_lr=0.05
            """)

    @OptionGroup var options: ConfigOptions
    @Flag(help: "Print a Markdown table (key, value, meaning) instead of YAML.") var markdown = false

    func run() throws {
        let config = try options.load()
        if markdown {
            let docs = Dictionary(uniqueKeysWithValues: configKeyDocs.map { ($0.key, $0.doc) })
            var out = "| key | value | meaning and allowed values |\n| --- | --- | --- |\n"
            for (key, value) in config.leaves {
                out += "| `\(key)` | `\(value)` | \(docs[key] ?? "") |\n"
            }
            print(out, terminator: "")
        } else {
            print("# resolved configuration (metatrain config)")
            print(config.commentedYAML, terminator: "")
        }
    }
}

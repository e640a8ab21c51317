import ArgumentParser
import Core
import Foundation
import Runtime

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Writes a CURVE key pair for a coordinator or a worker (NAME.pub and NAME.secret).",
        discussion: """
            The secret key is readable by its owner only; the public key is what the
            other side lists. A coordinator takes --key coordinator.secret and
            --authorized-keys (a file of public keys, one per line, or a directory
            of *.pub files); a worker takes --key NAME.secret and --coordinator-key
            coordinator.pub. Keys are never overwritten.
            Example:
              metatrain keygen --out keys/coordinator && metatrain keygen --out keys/authorized/host1
            """)

    @Option(help: ArgumentHelp("Path and name of the pair: writes PATH.pub and PATH.secret.", valueName: "path"))
    var out: String

    func run() throws {
        let pair = try KeyFiles.generate(out)
        print("wrote \(out).pub (public: \(pair.publicKey)) and \(out).secret (secret, mode 600)")
    }
}

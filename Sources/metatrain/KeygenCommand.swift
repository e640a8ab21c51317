import ArgumentParser
import Core
import Foundation
import Link
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
            Where each file goes: the coordinator's machine keeps coordinator.secret and
            lists every worker's .pub in --authorized-keys; each worker machine keeps its
            own NAME.secret and a copy of coordinator.pub. A .secret file never leaves
            the machine it was made for.
            Examples:
              metatrain keygen --out keys/coordinator
              metatrain keygen --out keys/host1
            """)

    @Option(help: ArgumentHelp("Path and name of the pair: writes PATH.pub and PATH.secret.", valueName: "path"))
    var out: String

    func run() throws {
        let pair = try KeyFiles.generate(out)
        print("wrote \(out).pub (public: \(pair.publicKey)) and \(out).secret (secret, mode 600)")
        let name = URL(fileURLWithPath: out).lastPathComponent
        print(
            """
            as a coordinator's pair: keep \(name).secret here (--key \(out).secret) and copy \(name).pub to every worker machine (--coordinator-key)
            as a worker's pair: keep \(name).secret on that worker (--key) and copy \(name).pub into the coordinator's --authorized-keys directory
            """)
    }
}

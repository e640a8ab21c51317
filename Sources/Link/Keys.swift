import Core
import Foundation
import Transport

/// CURVE key files, in ssh's spirit: `NAME.pub` holds a public key and
/// `NAME.secret` the secret one (Z85 text, readable by its owner only); an
/// authorized-keys file lists public keys one per line (`#` comments), and an
/// authorized-keys directory is read as every `*.pub` file in it.
public enum KeyFiles {
    /// Writes a fresh key pair to `base.pub` and `base.secret`; refuses to overwrite either.
    public static func generate(_ base: String) throws -> CurveKeyPair {
        let pair = try CurveKeyPair.generate()
        let dir = URL(fileURLWithPath: base).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (path, text, mode) in [(base + ".secret", pair.secretKey, 0o600), (base + ".pub", pair.publicKey, 0o644)] {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode_t(mode))
            guard fd >= 0 else {
                throw MetatrainError(
                    "\(path): cannot create (\(String(cString: strerror(errno)))); keys are never overwritten")
            }
            let line = text + "\n"
            let ok = line.withCString { write(fd, $0, strlen($0)) } == line.utf8.count && fsync(fd) == 0
            close(fd)
            guard ok else { unlink(path); throw MetatrainError("\(path): cannot write") }
        }
        return pair
    }

    /// The key pair of a secret key file, which must be readable by its owner only.
    public static func readSecret(_ path: String) throws -> CurveKeyPair {
        var st = stat()
        guard stat(path, &st) == 0 else { throw MetatrainError("\(path): no such key file") }
        if path.hasSuffix(".pub") {
            throw MetatrainError(
                "\(path) is a public key; --key takes the secret half of a pair, \(path.dropLast(4)).secret (metatrain keygen writes both)"
            )
        }
        guard st.st_mode & 0o077 == 0 else {
            throw MetatrainError("\(path): a secret key must be readable by its owner only (chmod 600 \(path))")
        }
        let text = try read(path)
        do { return try CurveKeyPair(secretKey: text) } catch { throw MetatrainError("\(path): \(error)") }
    }

    /// A public key file's key.
    public static func readPublic(_ path: String) throws -> String {
        if path.hasSuffix(".secret") {
            throw MetatrainError(
                "\(path) is a secret key; give the public half, \(path.dropLast(7)).pub (a secret key never leaves its machine)"
            )
        }
        let keys = try publicKeys(in: path)
        guard keys.count == 1 else { throw MetatrainError("\(path): holds \(keys.count) public keys, expected one") }
        return keys[0]
    }

    /// Every public key in a file (one per line) or in a directory's `*.pub` files.
    public static func authorized(_ path: String) throws -> Set<String> {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw MetatrainError("\(path): no such file or directory")
        }
        if !isDir.boolValue { return Set(try publicKeys(in: path)) }
        let names = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".pub") }.sorted()
        var keys = Set<String>()
        for n in names { keys.formUnion(try publicKeys(in: path + "/" + n)) }
        guard !keys.isEmpty else { throw MetatrainError("\(path): no *.pub key files in it") }
        return keys
    }

    static func publicKeys(in path: String) throws -> [String] {
        var keys: [String] = []
        for (i, raw) in try read(path, keepLines: true).split(separator: "\n", omittingEmptySubsequences: false)
            .enumerated()
        {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let key = String(line.split(separator: " ")[0])
            guard key.utf8.count == 40, key.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                throw MetatrainError("\(path):\(i + 1): not a public key (40 Z85 characters)")
            }
            keys.append(key)
        }
        return keys
    }

    static func read(_ path: String, keepLines: Bool = false) throws -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw MetatrainError("\(path): cannot read")
        }
        return keepLines ? text : text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether `endpoint` can be reached from this machine only (ipc://, or tcp on a loopback address).
    public static func isLoopback(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://"), let colon = endpoint.lastIndex(of: ":") else { return false }
        let host = endpoint[endpoint.index(endpoint.startIndex, offsetBy: 6)..<colon]
        return host == "localhost" || host.hasPrefix("127.") || host == "[::1]" || host == "::1"
    }
}

/// How a coordinator's link admits workers: CURVE keys and the list of keys let in.
public struct CurveServerKeys: Sendable {
    public let pair: CurveKeyPair
    public let authorized: Set<String>
    public init(pair: CurveKeyPair, authorized: Set<String>) { self.pair = pair; self.authorized = authorized }
}

/// How a worker's link connects: its key pair and the coordinator's public key.
public struct CurveClientKeys: Sendable {
    public let pair: CurveKeyPair
    public let serverKey: String
    public init(pair: CurveKeyPair, serverKey: String) { self.pair = pair; self.serverKey = serverKey }
}

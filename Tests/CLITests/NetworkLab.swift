import Foundation

/// Hosts made of Linux network namespaces on this machine, for tests of what
/// crosses a network: a "switch" namespace holds a bridge, and each host is a
/// namespace with its own address whose veth link plugs into that bridge.
/// Nothing is added to the machine's own namespace, traffic goes only between
/// these addresses, and `tearDown` (also run on deinit) removes everything.
final class NetworkLab {
    struct Host {
        let namespace: String
        let address: String
        /// The switch side of the host's link: down cuts the host off.
        let port: String
    }

    let prefix: String
    let switchNamespace: String
    private(set) var hosts: [Host] = []
    private var namespaces: [String] = []

    /// Why namespaces cannot be made here, or nil if they can.
    static func unavailableReason() -> String? {
        guard getuid() == 0 else { return "network namespaces need root" }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else { return "iproute2 (/usr/sbin/ip) is not installed" }
        let probe = "mtprobe\(getpid())"
        let (status, out) = NetworkLab.ip(["netns", "add", probe])
        _ = NetworkLab.ip(["netns", "del", probe])
        return status == 0 ? nil : "ip netns add failed: \(out)"
    }

    /// `count` hosts at 10.213.0.1, 10.213.0.2, … (addresses exist only inside these namespaces).
    init(hosts count: Int) throws {
        prefix = "mt\(getpid() % 100_000)"
        switchNamespace = prefix + "sw"
        try add(namespace: switchNamespace)
        try run(["-n", switchNamespace, "link", "add", "br0", "type", "bridge"])
        try run(["-n", switchNamespace, "link", "set", "br0", "up"])
        for i in 0..<count {
            let ns = prefix + "h\(i)", port = prefix + "p\(i)", address = "10.213.0.\(i + 1)"
            try add(namespace: ns)
            try run(["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", switchNamespace])
            try run(["-n", switchNamespace, "link", "set", port, "master", "br0"])
            try run(["-n", switchNamespace, "link", "set", port, "up"])
            try run(["-n", ns, "addr", "add", address + "/24", "dev", "eth0"])
            try run(["-n", ns, "link", "set", "eth0", "up"])
            try run(["-n", ns, "link", "set", "lo", "up"])
            hosts.append(Host(namespace: ns, address: address, port: port))
        }
    }

    deinit { tearDown() }

    /// Cuts a host's link (as a pulled cable would) or restores it.
    func setLink(_ host: Host, up: Bool) throws {
        try run(["-n", switchNamespace, "link", "set", host.port, up ? "up" : "down"])
    }

    /// Bytes a host sent and received on its link so far.
    func counters(_ host: Host) -> (tx: Int, rx: Int) {
        func read(_ what: String) -> Int {
            let (_, out) = NetworkLab.ip(["netns", "exec", host.namespace, "cat", "/sys/class/net/eth0/statistics/\(what)_bytes"])
            return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        return (read("tx"), read("rx"))
    }

    /// The command prefix that runs a program inside `host`.
    func exec(_ host: Host) -> [String] { ["/usr/sbin/ip", "netns", "exec", host.namespace] }

    func tearDown() {
        for ns in namespaces.reversed() { _ = NetworkLab.ip(["netns", "del", ns]) }
        namespaces = []
    }

    private func add(namespace ns: String) throws {
        _ = NetworkLab.ip(["netns", "del", ns])   // left over from a killed earlier run of this pid
        try run(["netns", "add", ns])
        namespaces.append(ns)
    }

    private func run(_ args: [String]) throws {
        let (status, out) = NetworkLab.ip(args)
        guard status == 0 else { throw NSError(domain: "ip \(args.joined(separator: " ")): \(out)", code: Int(status)) }
    }

    @discardableResult
    static func ip(_ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }
}

import Core
import Foundation

/// Hosts made of Linux network namespaces on this machine, for measurements
/// and tests of what crosses a network (`bench --hosts`, the multi-host
/// test): a "switch" namespace holds a bridge, and each host is a namespace
/// with its own address whose veth link plugs into that bridge. Nothing is
/// added to the machine's own namespace, traffic goes only between these
/// addresses, and `tearDown` (also run on deinit) removes everything. Needs
/// root and iproute2.
public final class NetworkLab {
    public struct Host: Sendable {
        public let namespace: String
        public let address: String
        /// The switch side of the host's link: down cuts the host off.
        public let port: String
    }

    public let prefix: String
    public let switchNamespace: String
    public private(set) var hosts: [Host] = []
    private var namespaces: [String] = []

    /// Why namespaces cannot be made here, or nil if they can.
    public static func unavailableReason() -> String? {
        guard getuid() == 0 else { return "network namespaces need root" }
        guard FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else {
            return "iproute2 (/usr/sbin/ip) is not installed"
        }
        let probe = "mtprobe\(getpid())"
        let (status, out) = NetworkLab.ip(["netns", "add", probe])
        _ = NetworkLab.ip(["netns", "del", probe])
        return status == 0 ? nil : "ip netns add failed: \(out)"
    }

    /// `count` hosts at 10.213.0.1, 10.213.0.2, … (addresses exist only inside these namespaces).
    public init(hosts count: Int, tag: String = "") throws {
        prefix = "mt\(tag)\(getpid() % 100_000)"
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
    public func setLink(_ host: Host, up: Bool) throws {
        try run(["-n", switchNamespace, "link", "set", host.port, up ? "up" : "down"])
    }

    /// Limits the host's link to `mbit` Mbit/s in both directions with a token
    /// bucket (tc's tbf) on each end of the veth pair; nil removes the limits.
    public func limit(_ host: Host, mbit: Int?) throws {
        for (ns, dev) in [(host.namespace, "eth0"), (switchNamespace, host.port)] {
            _ = NetworkLab.run("/usr/sbin/tc", ["-n", ns, "qdisc", "del", "dev", dev, "root"])
            guard let mbit else { continue }
            // A burst of 2 ms at the rate (at least 64 KB), queueing at most 50 ms.
            let burst = max(65_536, mbit * 250)
            let (status, out) = NetworkLab.run(
                "/usr/sbin/tc",
                [
                    "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", "\(mbit)mbit",
                    "burst", "\(burst)", "latency", "50ms"
                ])
            guard status == 0 else {
                throw MetatrainError("tc qdisc add dev \(dev) (\(ns)) tbf rate \(mbit)mbit: \(out)")
            }
        }
    }

    /// Bytes a host sent and received on its link so far.
    public func counters(_ host: Host) -> (tx: Int, rx: Int) {
        func read(_ what: String) -> Int {
            let (_, out) = NetworkLab.ip([
                "netns", "exec", host.namespace, "cat", "/sys/class/net/eth0/statistics/\(what)_bytes"
            ])
            return Int(out.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        return (read("tx"), read("rx"))
    }

    /// The command prefix that runs a program inside `host`.
    public func exec(_ host: Host) -> [String] { ["/usr/sbin/ip", "netns", "exec", host.namespace] }

    public func tearDown() {
        for ns in namespaces.reversed() { _ = NetworkLab.ip(["netns", "del", ns]) }
        namespaces = []
    }

    private func add(namespace ns: String) throws {
        _ = NetworkLab.ip(["netns", "del", ns]) // left over from a killed earlier run of this pid
        try run(["netns", "add", ns])
        namespaces.append(ns)
    }

    private func run(_ args: [String]) throws {
        let (status, out) = NetworkLab.ip(args)
        guard status == 0 else { throw MetatrainError("ip \(args.joined(separator: " ")): \(out)") }
    }

    @discardableResult
    static func ip(_ args: [String]) -> (Int32, String) { run("/usr/sbin/ip", args) }

    static func run(_ tool: String, _ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe; p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self))
    }
}

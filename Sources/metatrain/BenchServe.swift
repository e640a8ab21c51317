import Core
import Datasets
import Foundation
import Glibc

/// `bench --serve`: a real `metatrain serve` child on loopback and a load generator of
/// our own (blocking HTTP/1.1 keep-alive clients, one thread and one connection each) in
/// this process. Figures, not tests.
extension BenchCommand {
    func benchServe(dir: String, data: String, dataset: Dataset) throws {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        // A meta checkpoint at the bench's sizes (V 1,519, E 64, H 128, FOMAML, 5 inner steps):
        // two meta-iterations are enough, latency does not depend on how trained it is.
        let train = Process()
        train.executableURL = exe
        train.arguments = [
            "train", "--data", data, "--run-dir", dir + "/serve-run", "--workers", "1", "--set", "maml.iterations=2",
            "--set", "eval.every=1000000", "--set", "checkpoint.every=1000000"
        ]
        train.standardOutput = FileHandle.nullDevice
        train.standardError = FileHandle.nullDevice
        try train.run()
        train.waitUntilExit()
        guard train.terminationStatus == 0 else { throw MetatrainError("bench --serve: training the model failed") }

        let out = dir + "/serve.out"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        let serve = Process()
        serve.executableURL = exe
        serve.arguments = ["serve", "--checkpoint", dir + "/serve-run/final.h5", "--bind", "127.0.0.1:0"]
        serve.standardOutput = FileHandle(forWritingAtPath: out)
        serve.standardError = FileHandle.nullDevice
        try serve.run()
        defer {
            if serve.isRunning { kill(serve.processIdentifier, SIGTERM); serve.waitUntilExit() }
        }
        var port = 0
        for _ in 0..<3000 where port == 0 && serve.isRunning {
            let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.contains("listening on http://") }) {
                port = line.split(separator: ":").last.flatMap { Int($0) } ?? 0
            }
            if port == 0 { usleep(20_000) }
        }
        guard port > 0 else { throw MetatrainError("bench --serve: serve did not start") }

        // Learners of 10 events each in one session (9 pairs: support of 5, adapted with 5 steps).
        let bodies = (0..<64).map { u -> [UInt8] in
            let events = (0..<10).map { j in
                let item = dataset.itemIds[1 + (u * 37 + j * 101) % (dataset.nItems - 1)]
                return #"{"item":"\#(item)","time":\#(1_462_096_800 + u * 86_400 + j * 300)}"#
            }
            let json = #"{"events":[\#(events.joined(separator: ","))],"k":10}"#
            let head =
                "POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(json.utf8.count)\r\n\r\n"
            return Array((head + json).utf8)
        }
        print(
            String(
                format:
                    "serve: POST /v1/recommend, a learner of 10 events (5 support pairs, 5 inner steps), V %d, E 64, H 128; "
                    + "metatrain serve --threads %d and this load generator share the machine's %d cores",
                dataset.nItems, ProcessInfo.processInfo.activeProcessorCount,
                ProcessInfo.processInfo.activeProcessorCount))
        _ = try loadRun(port: port, bodies: bodies, concurrency: 8, requests: 400) // warm up
        for c in [1, 8, 64] {
            let r = try loadRun(port: port, bodies: bodies, concurrency: c, requests: max(serveRequests / 50, 20 * c))
            print(
                String(
                    format: "  concurrency %2d: p50 %.2f ms, p99 %.2f ms, %.0f requests/s (%d requests)", c,
                    r.p50 * 1000, r.p99 * 1000, r.rps, r.count))
        }
        // Memory over many requests: the server's resident set every tenth of the way.
        var rss: [Int] = [residentKB(serve.processIdentifier)]
        let tenth = max(serveRequests / 10, 8)
        for _ in 0..<10 {
            _ = try loadRun(port: port, bodies: bodies, concurrency: 8, requests: tenth)
            rss.append(residentKB(serve.processIdentifier))
        }
        print(
            "  server RSS over \(tenth * 10) requests at concurrency 8 (MB, every \(tenth)): "
                + rss.map { String(format: "%.1f", Double($0) / 1024) }.joined(separator: " "))
    }

    struct LoadResult { var p50: Double, p99: Double, rps: Double, count: Int }

    /// `requests` requests over `concurrency` keep-alive connections, each on its own thread;
    /// every answer must be 200.
    func loadRun(port: Int, bodies: [[UInt8]], concurrency: Int, requests: Int) throws -> LoadResult {
        let latencies = Locked([Double]()), failure = Locked(String?.none)
        let next = Locked(0)
        let group = DispatchGroup()
        let start = Date()
        for t in 0..<concurrency {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    let client = try HTTPClientConnection(port: port)
                    defer { client.close() }
                    var mine: [Double] = []
                    while true {
                        let i = next.withLock { n -> Int in
                            n += 1; return n - 1
                        }
                        if i >= requests { break }
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        let status = try client.exchange(bodies[(i + t) % bodies.count])
                        mine.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                        if status != 200 { throw MetatrainError("status \(status)") }
                    }
                    latencies.withLock { $0 += mine }
                } catch {
                    failure.withLock { $0 = "\(error)" }
                }
            }
        }
        group.wait()
        let wall = Date().timeIntervalSince(start)
        if let f = failure.withLock({ $0 }) { throw MetatrainError("bench --serve: a request failed: \(f)") }
        let sorted = latencies.withLock { $0 }.sorted()
        func quantile(_ q: Double) -> Double { sorted[min(sorted.count - 1, Int(q * Double(sorted.count)))] }
        return LoadResult(
            p50: quantile(0.5), p99: quantile(0.99), rps: Double(sorted.count) / wall, count: sorted.count)
    }

    func residentKB(_ pid: Int32) -> Int {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }
        return line.flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true)[1]) } ?? 0
    }
}

/// One blocking HTTP/1.1 keep-alive connection to 127.0.0.1:port.
final class HTTPClientConnection {
    let fd: Int32
    var pending: [UInt8] = []

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw MetatrainError("socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { Glibc.close(fd); throw MetatrainError("connect to 127.0.0.1:\(port): errno \(errno)") }
    }

    func close() { Glibc.close(fd) }

    /// Sends one request and reads its whole answer; returns the status.
    func exchange(_ request: [UInt8]) throws -> Int {
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, request.count - sent, 0) }
            guard n > 0 else { throw MetatrainError("send: errno \(errno)") }
            sent += n
        }
        // Headers up to the blank line, then Content-Length bytes of body.
        let crlf2: [UInt8] = [13, 10, 13, 10]
        var headerEnd: Int?
        while headerEnd == nil {
            headerEnd = find(crlf2)
            if headerEnd == nil { try fill() }
        }
        let head = String(decoding: pending[..<headerEnd!], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        guard let statusLine = lines.first, let status = Int(statusLine.split(separator: " ")[1]) else {
            throw MetatrainError("bad answer: \(head)")
        }
        let length =
            lines.first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        let total = headerEnd! + 4 + length
        while pending.count < total { try fill() }
        pending.removeFirst(total)
        return status
    }

    private func find(_ needle: [UInt8]) -> Int? {
        guard pending.count >= needle.count else { return nil }
        for i in 0...(pending.count - needle.count) where pending[i] == needle[0] {
            if Array(pending[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }

    private func fill() throws {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
        guard n > 0 else { throw MetatrainError("connection closed (errno \(errno))") }
        pending += buffer[..<n]
    }
}

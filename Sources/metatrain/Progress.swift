import Foundation
import Training

#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif

/// A live status line on a terminal (stderr), plain log lines otherwise.
final class ConsoleProgress: ProgressSink {
    let isTerminal = isatty(2) != 0
    private var lastUpdate = Date.distantPast
    private var showing = false

    func update(_ line: String) {
        guard isTerminal else { return }
        let now = Date()
        guard now.timeIntervalSince(lastUpdate) > 0.1 else { return }
        lastUpdate = now
        // Never as wide as the terminal: a line that wraps leaves a trail behind every update.
        var size = winsize()
        let columns = ioctl(2, UInt(TIOCGWINSZ), &size) == 0 && size.ws_col > 0 ? Int(size.ws_col) : 80
        FileHandle.standardError.write(Data("\r\u{1B}[K\(line.prefix(columns - 1))".utf8))
        showing = true
    }

    func log(_ line: String) {
        if showing { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)); showing = false }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}

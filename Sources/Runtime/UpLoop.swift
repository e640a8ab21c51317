import Core
import Foundation
import Link
import Transport

/// The poll loop a worker shell and a host agent share, towards the
/// coordinator: it waits on the link's sockets and the shell's own, hands
/// the shell the link's events, and ticks every half second or when the
/// machine's deadline comes; it notices an interrupt and a parent that went,
/// and says why a worker cannot get in. What each event means is the shell's
/// (its machine's); the loop only decides when to ask.
struct UpLoop {
    let link: WorkerLink
    let stop: StopFlag
    /// Leave when this process is no longer our parent's child.
    let exitWithParent: pid_t?
    /// The shell's own sockets, polled with the link's (a compute thread's pair, the link to its processes).
    var others: [ZMQSocket] = []
    /// Lines for a person: why this worker cannot get in.
    let notice: (String) -> Void

    /// What the loop asks of its shell.
    struct Shell {
        /// Whether the machine has exited (the loop then ends).
        var exited: () -> Bool
        /// The machine's next deadline, if any.
        var wakeAt: () -> Double?
        /// Leave now with this reason and exit code (an interrupt: 130; the parent gone: 1).
        var leave: (_ reason: String, _ code: Int32) throws -> Void
        /// Some of `others` may have something (which ones, in their order); called before the link's events.
        var onOthers: (_ ready: [Bool], _ now: Double) throws -> Void = { _, _ in }
        var onEvent: (WorkerLink.Event, _ now: Double) throws -> Void
        var onTick: (_ now: Double) throws -> Void
    }

    /// Runs until the machine exits or the shell leaves.
    func run(_ shell: Shell) throws {
        var lastTick = monotonicNow()
        while !shell.exited() {
            if stop.isSet {
                try shell.leave("interrupted", 130)
                return
            }
            // Wake for the machine's own deadline (a pending fetch) if it comes before the next poll ends.
            let wait = shell.wakeAt().map { max(0, min(100, Int((($0 - monotonicNow()) * 1000).rounded(.up)))) } ?? 100
            let ready = try zmqPoll(link.sockets + others, timeoutMs: wait)
            if !others.isEmpty { try shell.onOthers(Array(ready.suffix(others.count)), monotonicNow()) }
            for event in try link.receive(timeoutMs: 0) where !shell.exited() {
                try shell.onEvent(event, monotonicNow())
            }
            let now = monotonicNow()
            if !shell.exited(), now - lastTick >= 0.5 || shell.wakeAt().map({ now >= $0 }) == true {
                lastTick = now
                if let parent = exitWithParent, getppid() != parent {
                    try shell.leave("parent process \(parent) exited", 1)
                    return
                }
                for line in link.advice(now: now) { notice(line) }
                try shell.onTick(now)
            }
        }
    }
}

import Wire
import XCTest

@testable import Coordination

/// The work units a coordinator's directives send, with their workers.
func work(_ d: [CoordinatorMachine.Directive]) -> [(PeerID, WorkUnit)] {
    d.compactMap {
        if case .send(let p, .work(let u)) = $0 { return (p, u) }; return nil
    }
}

/// The lines a coordinator's directives log.
/// The lines directives say (a dropped worker's among them).
func logs(_ d: [CoordinatorMachine.Directive]) -> [String] {
    d.compactMap {
        switch $0 {
        case .log(let s), .dropped(_, let s): return s
        default: return nil
        }
    }
}

final class CoordinatorMachineTests: XCTestCase {
    let a = PeerID([1]), b = PeerID([2])
    func machine() -> CoordinatorMachine {
        CoordinatorMachine(
            settings: .init(runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 10), version: 0)
    }
    func env(_ m: Message, run: String = "run") -> Envelope { Envelope(runId: run, message: m) }
    func sends(_ d: [CoordinatorMachine.Directive]) -> [(PeerID, Message)] {
        d.compactMap {
            if case .send(let p, let m) = $0 { return (p, m) }; return nil
        }
    }
    func result(_ u: WorkUnit, _ x: Float) -> Message {
        .trainResult(
            TrainResult(
                unitId: u.id, version: u.version, gradTheta: [x], gradAlpha: [], lossSum: Double(x),
                tasks: u.episodes.count))
    }
    func join(_ m: inout CoordinatorMachine, _ p: PeerID, now: Double = 0) {
        _ = m.onMessage(env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp"))), from: p, now: now)
        _ = m.onMessage(env(.ready), from: p, now: now)
    }

    /// Workers a and b share a phase of five units; b has returned all of its own. Returns the two a still holds.
    func aHoldsTwoUnitsAndBFinishedItsOwn(_ m: inout CoordinatorMachine) -> [Int] {
        join(&m, a); join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, leaves: [[1], [2], [3], [4], [5]])))
        let held = sent.filter { $0.0 == a }.map { $0.1.id }
        XCTAssertEqual(held.count, 2)
        for (_, u) in sent where !held.contains(u.id) { _ = m.onMessage(env(result(u, 1)), from: b, now: 1) }
        return held
    }

    func testFingerprintMismatchIsRefusedAndMatchWelcomed() {
        var m = machine()
        let bad = m.onMessage(env(.hello(Hello(workerName: "w", datasetFingerprint: "other"))), from: a, now: 0)
        XCTAssertTrue(
            sends(bad).contains {
                if case .refuse(.datasetFingerprint, let r) = $0.1 { return r.contains("worker has") }; return false
            })
        XCTAssertEqual(m.liveWorkers, 0)
        let good = m.onMessage(env(.hello(Hello(workerName: "w", datasetFingerprint: "fp"))), from: a, now: 0)
        XCTAssertEqual(sends(good).first?.1, .welcome(Welcome(configJSON: "{}", version: 0)))
        XCTAssertEqual(m.liveWorkers, 1)
    }

    func testUnitsGoToReadyWorkersAndResultsComeBackInUnitOrder() {
        var m = machine()
        join(&m, a); join(&m, b)
        let started = m.startPhase(.init(kind: .train, version: 0, leaves: [[1, 2], [3, 4], [5]]))
        let w1 = work(started)
        XCTAssertEqual(w1.map(\.0), [a, b])
        XCTAssertEqual(w1.map(\.1.episodes), [[1, 2], [3, 4]])
        // b finishes first and gets the third unit.
        let d1 = m.onMessage(env(result(w1[1].1, 2)), from: b, now: 1)
        let w2 = work(d1)
        XCTAssertEqual(w2.map(\.0), [b]); XCTAssertEqual(w2[0].1.episodes, [5])
        _ = m.onMessage(env(result(w2[0].1, 3)), from: b, now: 2)
        let done = m.onMessage(env(result(w1[0].1, 1)), from: a, now: 3)
        guard
            case .phaseComplete(let r)? = done.first(where: {
                if case .phaseComplete = $0 { return true }; return false
            })
        else {
            return XCTFail("phase did not complete: \(done)")
        }
        XCTAssertEqual(
            r.results.map {
                if case .train(let t) = $0 { return t.gradTheta[0] }; return Float(-1)
            }, [Float(1), 2, 3])
        XCTAssertFalse(m.inPhase)
    }

    /// While more units are pending than workers are live, each busy worker also
    /// gets a queued unit; the end of the phase goes to whoever is idle.
    func testBusyWorkersGetAQueuedUnitWhileWorkRemains() {
        var m = machine()
        join(&m, a); join(&m, b)
        let w0 = work(m.startPhase(.init(kind: .train, version: 0, leaves: (1...6).map { [$0] })))
        XCTAssertEqual(w0.map(\.0), [a, b, a, b], "one to compute and one queued each")
        XCTAssertEqual(w0.map(\.1.episodes), [[1], [2], [3], [4]])
        // Two pending for two workers: finishing a unit with one still queued brings no new one.
        XCTAssertTrue(work(m.onMessage(env(result(w0[0].1, 1)), from: a, now: 1)).isEmpty)
        XCTAssertTrue(work(m.onMessage(env(result(w0[1].1, 2)), from: b, now: 2)).isEmpty)
        // Whoever runs out of work gets the rest, one at a time.
        let d3 = work(m.onMessage(env(result(w0[3].1, 4)), from: b, now: 3))
        XCTAssertEqual(d3.map(\.0), [b]); XCTAssertEqual(d3[0].1.episodes, [5])
        let d4 = work(m.onMessage(env(result(w0[2].1, 3)), from: a, now: 4))
        XCTAssertEqual(d4.map(\.0), [a]); XCTAssertEqual(d4[0].1.episodes, [6])
        // Workers that time out lose every unit they held; a worker that joins again gets them.
        XCTAssertTrue(work(m.onTick(now: 100)).isEmpty)
        XCTAssertEqual(m.liveWorkers, 0)
        _ = m.onMessage(env(.hello(Hello(workerName: "b", datasetFingerprint: "fp"))), from: b, now: 100)
        let again = work(m.onMessage(env(.ready), from: b, now: 100))
        XCTAssertEqual(again.map(\.1.episodes), [[5]], "as many pending as workers: nothing queued")
        XCTAssertEqual(work(m.onMessage(env(result(again[0].1, 5)), from: b, now: 101)).map(\.1.episodes), [[6]])
    }

    func testWrongVersionIsABadResultAndRequeued() {
        var m = machine()
        join(&m, a)
        let u = work(m.startPhase(.init(kind: .train, version: 0, leaves: [[1]])))[0].1
        var stale = u; stale.version = 5
        let d = m.onMessage(env(result(stale, 9)), from: a, now: 1)
        XCTAssertTrue(
            d.contains {
                if case .log(let s) = $0 { return s.contains("computed on version 5, the unit is for version 0") };
                return false
            })
        let again = work(d)
        XCTAssertEqual(again.first?.1.id, u.id, "the unit is handed out again")
        XCTAssertTrue(m.inPhase)
    }

    func testSilentWorkerIsDroppedAndItsUnitReassigned() {
        var m = machine()
        join(&m, a); join(&m, b, now: 0)
        let w = work(m.startPhase(.init(kind: .train, version: 0, leaves: [[1], [2]])))
        _ = m.onMessage(env(result(w[1].1, 2)), from: b, now: 5) // b done and ready; a goes silent
        _ = m.onMessage(env(.heartbeat), from: b, now: 9)
        let d = m.onTick(now: 11)
        XCTAssertEqual(
            d.first,
            .dropped(
                a,
                line:
                    "worker w\(a) silent for 11s; dropped, its 1 unit(s) re-queued (if a unit takes longer than 10s, raise --worker-timeout)"
            ))
        XCTAssertEqual(m.liveWorkers, 1)
        XCTAssertEqual(work(d).map(\.0), [b])
        XCTAssertEqual(work(d).first?.1.id, w[0].1.id)
        // a comes back late with a valid result for a unit now also at b: first one wins, no crash.
        let late = m.onMessage(env(result(w[0].1, 1)), from: a, now: 12)
        XCTAssertTrue(
            sends(late).contains {
                if case .refuse = $0.1 { return true }; return false
            })
    }

    func testEndedWorkerIsDroppedAtOnceAndItsUnitsGoToAnother() {
        // b finishes its units; a's process ended: its two units go to b without a timeout.
        var m = machine()
        _ = aHoldsTwoUnitsAndBFinishedItsOwn(&m)
        let d = m.onWorkerGone(name: "w\(a)", reason: "(pid 7) was killed by signal 9")
        XCTAssertEqual(
            d.first, .dropped(a, line: "worker w\(a) (pid 7) was killed by signal 9; dropped, its 2 unit(s) re-queued"))
        XCTAssertEqual(m.liveWorkers, 1)
        XCTAssertTrue(work(d).allSatisfy { $0.0 == b })
        XCTAssertFalse(work(d).isEmpty)
        XCTAssertEqual(m.onWorkerGone(name: "w\(a)", reason: "again"), [], "a worker is dropped once")
    }

    func testForeignRunAndMalformedAndOtherProtocolAreDropped() {
        var m = machine()
        join(&m, a)
        XCTAssertTrue(
            m.onMessage(env(.ready, run: "other"), from: a, now: 1).allSatisfy {
                if case .log = $0 { return true }; return false
            })
        XCTAssertTrue(
            m.onUndecodable(.truncated("x"), from: a).allSatisfy {
                if case .log = $0 { return true }; return false
            })
        let d = m.onUndecodable(.protocolMismatch(theirs: 9), from: b)
        XCTAssertTrue(
            sends(d).contains {
                if case .refuse(.protocolVersion, let r) = $0.1 { return r.contains("worker speaks") }; return false
            })
        XCTAssertEqual(m.shutdown(reason: "done").count, 1)
    }

    /// A worker that says goodbye (it failed, or was interrupted) is dropped at
    /// once and its units go to another worker, with no wait for the timeout.
    func testGoodbyeDropsTheWorkerAtOnceAndRequeuesItsUnits() {
        var m = machine()
        let held = aHoldsTwoUnitsAndBFinishedItsOwn(&m)
        let d = m.onMessage(env(.goodbye(reason: "internal: out of memory\nsecond line")), from: a, now: 1)
        XCTAssertEqual(
            d.first,
            .dropped(
                a, line: "worker w\(a) left (internal: out of memory second line); dropped, its 2 unit(s) re-queued"))
        XCTAssertEqual(m.liveWorkers, 1)
        XCTAssertFalse(work(d).isEmpty)
        XCTAssertTrue(work(d).allSatisfy { $0.0 == b && held.contains($0.1.id) })
        // A second goodbye, or one from a stranger, is logged and nothing else: no refusal, no crash.
        XCTAssertEqual(
            m.onMessage(env(.goodbye(reason: "again")), from: a, now: 2),
            [.log("goodbye from unknown peer \(a): again")])
        let long = m.onMessage(env(.goodbye(reason: String(repeating: "x", count: 100_000))), from: PeerID([9]), now: 2)
        guard case .log(let line)? = long.first else { return XCTFail("\(long)") }
        XCTAssertLessThan(line.count, 300)
        // A worker that goes before it read its welcome knows no run id yet: its goodbye counts all the same.
        let gone = m.onMessage(Envelope(runId: "", message: .goodbye(reason: "interrupted")), from: b, now: 3)
        guard case .dropped(b, let left)? = gone.first else { return XCTFail("\(gone)") }
        XCTAssertTrue(left.hasPrefix("worker w\(b) left (interrupted); dropped"), left)
        XCTAssertEqual(m.liveWorkers, 0)
    }

    /// With no worker connected the coordinator says so once, then at most every
    /// 30 s; a worker joining resets it, and losing the last one says so at once.
    func testNoWorkersIsSaidOnceThenEveryThirtySeconds() {
        var m = machine()
        func notices(_ d: [CoordinatorMachine.Directive]) -> [Double] {
            d.compactMap {
                if case .waitingForWorkers(let s) = $0 { return s }; return nil
            }
        }
        XCTAssertEqual(notices(m.onTick(now: 1)), [0])
        XCTAssertEqual(m.withoutWorkersSince, 1)
        for t in 2...30 { XCTAssertEqual(notices(m.onTick(now: Double(t))), [], "tick \(t)") }
        XCTAssertEqual(notices(m.onTick(now: 31)), [30])
        XCTAssertEqual(notices(m.onTick(now: 32)), [])
        join(&m, a, now: 40)
        XCTAssertEqual(notices(m.onTick(now: 41)), [])
        XCTAssertNil(m.withoutWorkersSince)
        _ = m.onMessage(env(.goodbye(reason: "bye")), from: a, now: 42)
        XCTAssertEqual(notices(m.onTick(now: 43)), [0], "said at once when the last worker goes")
        XCTAssertEqual(notices(m.onTick(now: 60)), [])
        XCTAssertEqual(notices(m.onTick(now: 73)), [30])
    }

    /// Each join names the worker's kernels; a worker on other ones gets one warning that says how to pin them.
    func testDifferentKernelsAreWarnedAboutOnce() {
        var m = machine()
        func hello(_ name: String, _ core: String) -> Envelope {
            env(
                .hello(
                    Hello(
                        workerName: name, datasetFingerprint: "fp",
                        hardware: Hardware(cpuModel: "CPU \(core)", blasCore: core))))
        }
        XCTAssertEqual(
            logs(m.onMessage(hello("a", "Haswell"), from: a, now: 0)),
            ["worker a joined (1 live; OpenBLAS Haswell on CPU Haswell)"])
        XCTAssertEqual(
            logs(m.onMessage(hello("b", "Haswell"), from: b, now: 0)),
            ["worker b joined (2 live; OpenBLAS Haswell on CPU Haswell)"])
        let c = logs(m.onMessage(hello("c", "SkylakeX"), from: PeerID([3]), now: 0))
        XCTAssertEqual(c.count, 2)
        XCTAssertTrue(
            c[1].hasPrefix(
                "warning: worker c runs OpenBLAS SkylakeX on CPU SkylakeX, worker a runs OpenBLAS Haswell on CPU Haswell"
            ), c[1])
        XCTAssertTrue(c[1].contains("OPENBLAS_CORETYPE"), c[1])
        XCTAssertEqual(logs(m.onMessage(hello("d", "Zen"), from: PeerID([4]), now: 0)).count, 1, "warned once")
    }
}

/// Results are checked before they count (docs/PROTOCOL.md): a bad one is
/// dropped and counted against its sender, its unit goes out again, and a
/// sender of three is dropped; no result ends the coordinator, but a unit that
/// is non-finite on two workers stops the run.
final class ResultCheckTests: XCTestCase {
    let a = PeerID([1]), b = PeerID([2])
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }
    func machine() -> CoordinatorMachine {
        var s = CoordinatorMachine.Settings(
            runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 10, unitsPerWorker: 1)
        s.gradientCounts = (2, 0)
        return CoordinatorMachine(settings: s, version: 0)
    }
    func join(_ m: inout CoordinatorMachine, _ p: PeerID) {
        _ = m.onMessage(env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp"))), from: p, now: 0)
        _ = m.onMessage(env(.ready), from: p, now: 0)
    }
    func train(_ u: WorkUnit, _ g: [Float] = [1, 2], tasks: Int? = nil, loss: Double = 1) -> Envelope {
        env(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: Floats(g), gradAlpha: [], lossSum: loss,
                    tasks: tasks ?? u.episodes.count)))
    }

    func failures(_ d: [CoordinatorMachine.Directive]) -> [String] {
        d.compactMap {
            if case .unitFailed(_, let r) = $0 { return r }; return nil
        }
    }

    /// A process that crashes (a fault, not a kill) is taken to have crashed on
    /// the first unit it held; the second crash on one unit fails it, naming its
    /// episodes and both processes. Kills never count, however many.
    func testAUnitThatCrashesTwoProcessesFails() {
        var m = machine()
        join(&m, a); join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: [[[7, 8]], [[3]]])))
        let ua = sent.first { $0.0 == a }!.1
        var d = m.onWorkerGone(name: "w01", reason: "(pid 1) was killed by signal 9")
        XCTAssertEqual(failures(d), [])
        XCTAssertEqual(work(d).map(\.1.id), [], "b still holds its own unit")
        d = m.onMessage(train(sent.first { $0.0 == b }!.1, [3, 4]), from: b, now: 1)
        XCTAssertEqual(work(d).map(\.1.id), [ua.id], "the killed worker's unit goes to b")
        d = m.onWorkerGone(name: "w02", reason: "(pid 2) crashed (signal 4)", crashed: true)
        XCTAssertEqual(failures(d), [], "one crash is not enough")
        _ = m.onMessage(env(.hello(Hello(workerName: "w01", datasetFingerprint: "fp"))), from: a, now: 2)
        d = m.onMessage(env(.ready), from: a, now: 2)
        XCTAssertEqual(work(d).map(\.1.id), [ua.id])
        d = m.onWorkerGone(name: "w01", reason: "(pid 3) crashed (signal 11)", crashed: true)
        XCTAssertEqual(failures(d).count, 1)
        XCTAssertTrue(
            failures(d)[0].hasPrefix(
                "unit \(ua.id) of version 0 (episodes 7,8) crashed the processes that computed it: "), failures(d)[0])
        XCTAssertTrue(
            failures(d)[0].contains("(pid 2) crashed (signal 4)")
                && failures(d)[0].contains("(pid 3) crashed (signal 11)"))
    }

    /// A host agent gives a unit back (it crashed two of its processes): only the
    /// holder may, the unit never goes to it again, and a unit given back by two
    /// workers, or by every live one, fails.
    func testAUnitGivenBackByEveryWorkerFails() {
        var m = machine()
        join(&m, a); join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1]], [[2]], [[3]]])))
        let ua = sent.first { $0.0 == a }!.1, ub = sent.first { $0.0 == b }!.1
        var d = m.onMessage(env(.unitFailed(unitId: ua.id, reason: "crashed")), from: b, now: 1)
        XCTAssertEqual(
            logs(d),
            [
                "dropped a bad result or message from worker w02 (1 of 3 allowed): gave back unit \(ua.id), which it does not hold"
            ])
        d = m.onMessage(env(.unitFailed(unitId: ua.id, reason: "crashed a-1 and a-2")), from: a, now: 1)
        XCTAssertEqual(failures(d), [])
        XCTAssertEqual(logs(d), ["worker w01 gave back unit \(ua.id): crashed a-1 and a-2"])
        XCTAssertEqual(work(d).map(\.1.id), [ua.id + 2], "a takes the next unit, not the one it gave back")
        // b finishes its unit and takes the given-back one; b gives it back too: two workers, the unit fails.
        d = m.onMessage(train(ub, [3, 4]), from: b, now: 2)
        XCTAssertEqual(work(d).map(\.1.id), [ua.id])
        d = m.onMessage(env(.unitFailed(unitId: ua.id, reason: "crashed b-1 and b-2")), from: b, now: 3)
        XCTAssertEqual(
            failures(d), ["unit \(ua.id) of version 0 (episodes 1) failed on workers w01 and w02: crashed b-1 and b-2"])
        // With one live worker, its own give-back is enough.
        var one = machine()
        join(&one, a)
        let u = work(one.startPhase(.init(kind: .train, version: 0, units: [[[5, 6]]])))[0].1
        d = one.onMessage(env(.unitFailed(unitId: u.id, reason: "crashed")), from: a, now: 1)
        XCTAssertEqual(
            failures(d), ["unit \(u.id) of version 0 (episodes 5,6) failed on worker w01, the only one live: crashed"])
    }

    func testBadResultsAreDroppedCountedAndTheirUnitsGoOutAgain() {
        var m = machine()
        join(&m, a); join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1, 2]], [[3]]])))
        let ua = sent.first { $0.0 == a }!.1, ub = sent.first { $0.0 == b }!.1
        // b hands in a's unit: not its to hand in.
        var d = m.onMessage(train(ua), from: b, now: 1)
        XCTAssertEqual(
            logs(d),
            [
                "dropped a bad result or message from worker w02 (1 of 3 allowed): a result for unit \(ua.id), which it was not given"
            ])
        // a claims too many tasks, then sends a gradient of the wrong size: each time its unit goes out again (to a).
        d = m.onMessage(train(ua, tasks: 1 << 62), from: a, now: 1)
        XCTAssertEqual(
            logs(d),
            [
                "dropped a bad result or message from worker w01 (1 of 3 allowed): unit \(ua.id): it claims \(1 << 62) tasks, the unit has 2"
            ])
        let again = work(d)
        XCTAssertEqual(again.map(\.1.id), [ua.id])
        d = m.onMessage(train(again[0].1, [1]), from: a, now: 1)
        XCTAssertTrue(logs(d)[0].contains("gradients of 1+0 floats, the model has 2+0"), "\(logs(d))")
        // The third bad result drops a; its unit goes to b once b is free.
        d = m.onMessage(train(work(d)[0].1, loss: .infinity), from: a, now: 1)
        XCTAssertTrue(
            logs(d).contains {
                $0.hasPrefix(
                    "worker w01 sent 3 bad results or messages (the last: unit \(ua.id): non-finite values); dropped")
            }, "\(logs(d))")
        XCTAssertEqual(m.liveWorkers, 1)
        d = m.onMessage(train(ub, [3, 4]), from: b, now: 2)
        XCTAssertEqual(work(d).map(\.1.id), [ua.id])
        d = m.onMessage(train(work(d)[0].1, [5, 6]), from: b, now: 3)
        guard case .phaseComplete(let r)? = d.last else { return XCTFail("\(d)") }
        XCTAssertEqual(
            r.results.map { r -> [Float] in
                if case .train(let t) = r { return t.gradTheta.array }; return []
            }, [[5, 6], [3, 4]])
        // Eval metrics out of range are bad too (a hit rate above the query count).
        var e = machine()
        join(&e, a)
        let u = work(e.startPhase(.init(kind: .eval, version: 0, leaves: [[1]])))[0].1
        d = e.onMessage(
            env(.evalResult(EvalResult(unitId: u.id, version: 0, sums: [0, 0, 7, 0, 0, 0], queries: [1], losses: [1]))),
            from: a, now: 1)
        XCTAssertTrue(logs(d)[0].contains("episode 0's metrics are out of range"), "\(logs(d))")
    }

    func testAUnitNonFiniteOnTwoWorkersStopsTheRun() {
        var m = machine()
        join(&m, a); join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1]], [[2]]])))
        let ua = sent.first { $0.0 == a }!.1, ub = sent.first { $0.0 == b }!.1
        _ = m.onMessage(train(ub), from: b, now: 1)
        var d = m.onMessage(train(ua, [1, .nan]), from: a, now: 1)
        XCTAssertTrue(logs(d)[0].contains("non-finite values"))
        let next = work(d)
        XCTAssertEqual(next.map(\.1.id), [ua.id])
        let other = next[0].0 == a ? b : a
        XCTAssertTrue(work(m.onMessage(env(.ready), from: other, now: 2)).isEmpty)
        d = m.onMessage(train(next[0].1, [.infinity, 0]), from: next[0].0, now: 2)
        if next[0].0 == a {
            // The same worker again, with another worker live: not yet the model's fault.
            XCTAssertFalse(
                d.contains {
                    if case .fail = $0 { return true }; return false
                })
            return
        }
        guard case .fail(let why)? = d.first else { return XCTFail("\(d)") }
        XCTAssertTrue(
            why.contains("unit \(ua.id) of version 0 (episodes 1) gave non-finite results on workers w01 and w02"), why)
    }
}

/// A peer's noise costs a few log lines a minute, not one line per frame.
final class NoiseTests: XCTestCase {
    let a = PeerID([1]), x = PeerID([9, 9])

    func testMalformedAndUnknownFloodsAreLoggedFiveTimesAMinute() {
        var m = CoordinatorMachine(
            settings: .init(runId: "run", datasetFingerprint: "fp", configJSON: "{}"), version: 0)
        var lines: [String] = [], refusals = 0
        for i in 0..<100_000 {
            let t = Double(i) * 0.0001 // 10 s of frames
            let d =
                m.onUndecodable(.badMagic, from: x, now: t)
                + m.onMessage(Envelope(runId: "run", message: .ready), from: x, now: t)
            lines += logs(d)
            refusals +=
                d.filter {
                    if case .send(_, .refuse) = $0 { return true }; return false
                }.count
        }
        XCTAssertEqual(lines.count, 10, "five malformed and five unknown-peer lines")
        XCTAssertEqual(refusals, 100_000, "and a refusal for every message: a dropped peer always learns it")
        // A minute later the next line says how many were held back.
        let later = logs(m.onUndecodable(.badMagic, from: x, now: 70))
        XCTAssertEqual(later.last, "(99995 more like that from peer 0909 were not logged)")
        // Other peers are not held back by this one.
        XCTAssertEqual(logs(m.onUndecodable(.badMagic, from: a, now: 70)).count, 1)
    }
}

/// Liveness in the state machines, with a manual clock.
final class LivenessMachineTests: XCTestCase {
    let a = PeerID([1]), b = PeerID([2])
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }

    /// A unit held past its deadline (10 x the measured time per task, at least 5 s) goes out again; the first result counts.
    func testUnitsPastTheirDeadlineGoOutAgain() {
        var m = CoordinatorMachine(
            settings: .init(
                runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 100,
                unitsPerWorker: 1), version: 0)
        for p in [a, b] {
            _ = m.onMessage(env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp"))), from: p, now: 0)
            _ = m.onMessage(env(.ready), from: p, now: 0)
        }
        func result(_ u: WorkUnit) -> Envelope {
            env(
                .trainResult(
                    TrainResult(
                        unitId: u.id, version: 0, gradTheta: [1], gradAlpha: [], lossSum: 0, tasks: u.episodes.count)))
        }
        let sent = work(m.startPhase(.init(kind: .train, version: 0, leaves: [[1], [2], [3]])))
        XCTAssertTrue(m.onTick(now: 4).isEmpty, "no unit time measured yet: the first deadline is 120 s")
        let ua = sent.first { $0.0 == a }!.1, ub = sent.first { $0.0 == b }!.1
        // b's units take 4.2 s and 0.2 s: 3.4 s a task on average, so a's one-task unit is due after max(5, 10 x 3.4) = 34 s.
        let u2 = work(m.onMessage(result(ub), from: b, now: 4.2))[0].1
        XCTAssertTrue(work(m.onMessage(result(u2), from: b, now: 4.4)).isEmpty)
        XCTAssertEqual(m.taskSeconds ?? 0, 3.4, accuracy: 1e-9)
        XCTAssertTrue(m.onTick(now: 33).isEmpty)
        let d = m.onTick(now: 35)
        XCTAssertEqual(
            d.first, .log("worker w01 has held unit \(ua.id) for 35s, past its deadline of 34s; it goes out again"))
        XCTAssertEqual(work(d).map(\.0), [b], "to the worker that is free")
        XCTAssertTrue(m.onTick(now: 60).isEmpty, "once per copy (b's copy is due at 69 s)")
        let done = m.onMessage(result(work(d)[0].1), from: b, now: 36)
        XCTAssertTrue(
            done.contains {
                if case .phaseComplete = $0 { return true }; return false
            })
        XCTAssertEqual(m.liveWorkers, 2, "the late worker is not dropped: it heartbeats")
    }

    /// A joined worker that hears nothing for `livenessTimeout` joins again, saying hello with backoff; it exits only after `coordinatorTimeout`.
    func testASilentCoordinatorIsNoticedInSecondsAndJoinedAgainWithBackoff() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp", coordinatorTimeout: 60)
        w.heartbeatInterval = 1; w.livenessTimeout = 3
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        XCTAssertEqual(w.onTick(now: 1.5), [.send(.heartbeat)])
        XCTAssertEqual(w.onTick(now: 2.0), [])
        let d = w.onTick(now: 3.2)
        XCTAssertEqual(
            d,
            [
                .log("no word from the coordinator for 3.2s; joining again"),
                .send(.hello(Hello(workerName: "w", datasetFingerprint: "fp")))
            ])
        var hellos: [Double] = []
        var t = 3.2
        while t < 40 {
            t += 0.1
            if w.onTick(now: t).contains(where: {
                if case .send(.hello) = $0 { return true }; return false
            }) {
                hellos.append(t)
            }
        }
        let gaps = zip(hellos.dropFirst(), hellos).map { (($0 - $1) * 10).rounded() / 10 }
        XCTAssertEqual(
            Array(gaps.prefix(4)), [2.1, 4.1, 8.0, 8.0], "backoff doubles up to 8 s (ticks every 0.1 s): \(hellos)")
        XCTAssertEqual(w.onTick(now: 60.1).last, .exit(code: 1, reason: "no word from the coordinator for 60s"))
    }
}

/// Host agents: a connection with N processes, and an agent's own phase that
/// grows as blocks arrive.
final class HostAgentMachineTests: XCTestCase {
    let agent = PeerID([9]), plain = PeerID([1])
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }
    func machine() -> CoordinatorMachine {
        CoordinatorMachine(
            settings: .init(runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 10), version: 0)
    }
    func join(_ m: inout CoordinatorMachine, _ p: PeerID, procs: Int) -> [CoordinatorMachine.Directive] {
        let d = m.onMessage(
            env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp", procs: procs))), from: p, now: 0)
        return d + m.onMessage(env(.ready), from: p, now: 0)
    }
    func result(_ u: WorkUnit) -> Message {
        .trainResult(
            TrainResult(
                unitId: u.id, version: u.version, gradTheta: [Float(u.id)], gradAlpha: [], lossSum: 0,
                tasks: u.episodes.count))
    }

    /// An agent of 3 processes takes one unit and one queued, like a plain worker, until its
    /// results show more processes; each result it returns lets it hold one more (up to 3 and a
    /// queued one). Blocks keep their leaves.
    func testAnAgentsShareGrowsWithTheResultsItReturns() {
        var m = machine()
        let logs = join(&m, plain, procs: 1) + join(&m, agent, procs: 3)
        XCTAssertTrue(
            logs.contains(.log("host agent w09 of 3 processes joined (2 live; OpenBLAS ? on an unknown CPU)")),
            "\(logs)")
        XCTAssertEqual(m.liveProcs, 4)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: (0..<12).map { [[$0], [$0 + 100]] })))
        XCTAssertEqual(sent.map(\.0), [plain, agent, plain, agent], "one each and one queued each, in join order")
        XCTAssertEqual(sent[1].1.leaves, [[1], [101]])
        let more = work(m.onMessage(env(result(sent[1].1)), from: agent, now: 1))
        XCTAssertEqual(more.map(\.0), [agent, agent], "a result shows a second process: one to compute, one queued")
        let most = work(m.onMessage(env(result(sent[3].1)), from: agent, now: 1))
        XCTAssertEqual(most.map(\.0), [agent, agent], "a third process, and its queued unit")
        XCTAssertTrue(
            work(m.onMessage(env(result(more[0].1)), from: agent, now: 1)).map(\.0).allSatisfy { $0 == agent })
        XCTAssertLessThanOrEqual(m.inFlightUnits(of: agent), 4, "its 3 processes and a queued unit, no more")
    }

    /// Units added to a running phase take the next indices, go out after the pending ones, and each
    /// accepted result is reported as it comes, so an agent can send a block on as soon as it is whole.
    func testUnitsAddedToARunningPhaseReportEachResult() {
        var m = machine()
        _ = join(&m, plain, procs: 1)
        let first = work(m.startPhase(.init(kind: .train, version: 0, leaves: [[1], [2], [3]])))
        XCTAssertEqual(first.map(\.1.episodes), [[1], [2]], "one to compute and one queued")
        XCTAssertEqual(m.phaseUnits, 3)
        XCTAssertTrue(
            work(m.addUnits([[[4]], [[5]], [[6]]], dispatchOrder: [2, 0, 1])).isEmpty, "the worker holds two already")
        XCTAssertEqual(m.phaseUnits, 6)
        var d = m.onMessage(env(result(first[0].1)), from: plain, now: 1)
        guard
            case .unitResult(index: 0, .train(let r0))? = d.first(where: {
                if case .unitResult = $0 { return true }; return false
            })
        else {
            return XCTFail("no unit result in \(d)")
        }
        XCTAssertEqual(r0.unitId, first[0].1.id)
        var held = [first[1].1] + work(d).map(\.1)
        var order = work(d).map(\.1.episodes)
        var complete = false
        while let u = held.first {
            held.removeFirst()
            d = m.onMessage(env(result(u)), from: plain, now: 2)
            for (_, w) in work(d) { held.append(w); order.append(w.episodes) }
            if d.contains(where: {
                if case .phaseComplete = $0 { return true }; return false
            }) {
                complete = true
            }
        }
        XCTAssertEqual(
            order, [[3], [6], [4], [5]], "added units go out after the pending one, in their own dispatch order")
        XCTAssertTrue(complete)
        XCTAssertFalse(m.inPhase)
    }
}

final class WorkerMachineTests: XCTestCase {
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }

    func testJoinFetchComputeAndExit() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp", coordinatorTimeout: 30)
        XCTAssertEqual(w.onStart(now: 0), [.send(.hello(Hello(workerName: "w", datasetFingerprint: "fp")))])
        // Joined after version 3 was broadcast: ready, and fetch it at once.
        let joined = w.onMessage(env(.welcome(Welcome(configJSON: "{c}", version: 3))), now: 1)
        XCTAssertEqual(joined.first, .configure(configJSON: "{c}"))
        XCTAssertEqual(Array(joined.suffix(2)), [.send(.ready), .send(.fetchWeights)])
        // Work on a version it does not hold yet: wait for the fetch (no second fetch), compute when the weights arrive.
        let u = WorkUnit(id: 7, kind: .train, version: 3, episodes: [1])
        XCTAssertEqual(w.onMessage(env(.work(u)), now: 2), [])
        XCTAssertEqual(w.wakeAt, 3, "fetch again if the reply has not come 2 s after the fetch")
        let wt = Weights(version: 3, theta: [1], alpha: [])
        XCTAssertEqual(w.onMessage(env(.weights(wt)), now: 3), [.compute(u, install: wt)])
        let r = Message.trainResult(
            TrainResult(unitId: 7, version: 3, gradTheta: [0], gradAlpha: [], lossSum: 0, tasks: 1))
        XCTAssertEqual(w.onComputed(r, now: 4), [.send(r)])
        // Same version: compute at once. An old broadcast is ignored.
        let u2 = WorkUnit(id: 8, kind: .eval, version: 3, episodes: [2])
        XCTAssertEqual(
            w.onMessage(env(.work(u2)), now: 5), [.compute(u2, install: nil)], "the computer holds version 3")
        XCTAssertEqual(w.onMessage(env(.weights(Weights(version: 2, theta: [0], alpha: []))), now: 6), [])
        XCTAssertEqual(w.onMessage(env(.shutdown(reason: "done")), now: 7), [.exit(code: 0, reason: "done")])
        XCTAssertTrue(w.isStopped)
    }

    /// With one compute slot (a worker's compute thread) the machine hands out one unit
    /// at a time: the others wait in it, in arrival order, each with the weights it was
    /// taken on with, and the next goes out with the previous one's result.
    func testOneSlotHandsOutOneUnitAtATime() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        w.computeSlots = 1
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        let w0 = Weights(version: 0, theta: [0], alpha: [])
        _ = w.onMessage(env(.weights(w0)), now: 0)
        let units = (1...3).map { WorkUnit(id: $0, kind: .train, version: 0, episodes: [$0]) }
        XCTAssertEqual(w.onMessage(env(.work(units[0])), now: 1), [.compute(units[0], install: w0)])
        XCTAssertEqual(w.onMessage(env(.work(units[1])), now: 1), [])
        XCTAssertEqual(w.onMessage(env(.work(units[2])), now: 1), [])
        XCTAssertEqual(w.computing, 3)
        func result(_ id: Int) -> Message {
            .trainResult(TrainResult(unitId: id, version: 0, gradTheta: [0], gradAlpha: [], lossSum: 0, tasks: 1))
        }
        XCTAssertEqual(w.onComputed(result(1), now: 2), [.send(result(1)), .compute(units[1], install: nil)])
        XCTAssertEqual(w.onComputed(result(2), now: 3), [.send(result(2)), .compute(units[2], install: nil)])
        XCTAssertEqual(w.onComputed(result(3), now: 4), [.send(result(3))])
        XCTAssertEqual(w.computing, 0)
    }

    /// A unit naming episodes the worker's dataset does not have is refused with a
    /// log line, never computed (a fake coordinator cannot make a worker trap).
    func testUnitsOutsideTheDatasetAreRefused() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        w.episodeLimits = (train: 10, val: 3)
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        _ = w.onMessage(env(.weights(Weights(version: 0, theta: [0], alpha: []))), now: 0)
        XCTAssertEqual(
            w.onMessage(env(.work(WorkUnit(id: 1, kind: .train, version: 0, episodes: [9, 1_000_000_000]))), now: 1),
            [
                .log(
                    "refused unit 1 from the coordinator: episode 1000000000 is not one of the dataset's 10 train episodes"
                )
            ])
        XCTAssertEqual(
            w.onMessage(env(.work(WorkUnit(id: 2, kind: .eval, version: 0, episodes: [3]))), now: 1),
            [.log("refused unit 2 from the coordinator: episode 3 is not one of the dataset's 3 val episodes")])
        XCTAssertEqual(
            w.onMessage(env(.work(WorkUnit(id: 3, kind: .train, version: 0, leaves: []))), now: 1),
            [.log("refused unit 3 from the coordinator: a unit of no leaves")])
        let ok = WorkUnit(id: 4, kind: .train, version: 0, episodes: [9, -0])
        XCTAssertEqual(w.onMessage(env(.work(ok)), now: 1).count, 1)
        XCTAssertEqual(w.computing, 1)
    }

    /// A host agent computes blocks on its processes while it listens: it may hold
    /// several at once, and its heartbeats keep going meanwhile.
    func testAnAgentComputesSeveralUnitsAndHeartbeatsMeanwhile() {
        var w = WorkerMachine(name: "agent", datasetFingerprint: "fp")
        w.procs = 4
        XCTAssertEqual(
            w.onStart(now: 0), [.send(.hello(Hello(workerName: "agent", datasetFingerprint: "fp", procs: 4)))])
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        let v0 = Weights(version: 0, theta: [0], alpha: [])
        _ = w.onMessage(env(.weights(v0)), now: 0)
        let u1 = WorkUnit(id: 1, kind: .train, version: 0, leaves: [[1], [2]]),
            u2 = WorkUnit(id: 2, kind: .train, version: 0, episodes: [3])
        XCTAssertEqual(w.onMessage(env(.work(u1)), now: 1), [.compute(u1, install: v0)])
        XCTAssertEqual(
            w.onMessage(env(.work(u2)), now: 1.1), [.compute(u2, install: nil)], "a second block while the first runs")
        XCTAssertEqual(w.computing, 2)
        XCTAssertEqual(w.onTick(now: 3.5), [.send(.heartbeat)], "heartbeats go on while the blocks are computed")
        let r = Message.trainResult(
            TrainResult(unitId: 2, version: 0, gradTheta: [0], gradAlpha: [], lossSum: 0, tasks: 1))
        XCTAssertEqual(w.onComputed(r, now: 4), [.send(r)])
        XCTAssertEqual(w.computing, 1)
    }

    /// Work usually arrives a moment before its broadcast: the worker waits for
    /// the broadcast (every queued unit kept), and fetches only if none comes.
    func testUnitsWaitForTheBroadcastThenFetch() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        w.broadcastGrace = 0.25
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        _ = w.onMessage(env(.weights(Weights(version: 0, theta: [0], alpha: []))), now: 0)
        XCTAssertEqual(w.weightsVersion, 0)
        let u1 = WorkUnit(id: 1, kind: .train, version: 1, episodes: [1])
        let u2 = WorkUnit(id: 2, kind: .train, version: 1, episodes: [2])
        XCTAssertEqual(w.onMessage(env(.work(u1)), now: 10), [])
        XCTAssertEqual(w.onMessage(env(.work(u2)), now: 10.1), [], "a second (queued) unit waits too")
        XCTAssertEqual(w.wakeAt, 10.25)
        // The broadcast comes in time: both units run, in order, and nothing is fetched.
        let v1 = Weights(version: 1, theta: [1], alpha: [])
        XCTAssertEqual(
            w.onMessage(env(.weights(v1)), now: 10.2), [.compute(u1, install: v1), .compute(u2, install: nil)])
        XCTAssertNil(w.wakeAt)
        for u in [u1, u2] {
            let r = Message.trainResult(
                TrainResult(unitId: u.id, version: 1, gradTheta: [0], gradAlpha: [], lossSum: 0, tasks: 1))
            XCTAssertEqual(w.onComputed(r, now: 10.3), [.send(r)])
        }
        XCTAssertEqual(w.onTick(now: 11), [])
        // The next broadcast is lost: after the grace the worker fetches, once.
        let u3 = WorkUnit(id: 3, kind: .train, version: 2, episodes: [3])
        XCTAssertEqual(w.onMessage(env(.work(u3)), now: 20), [])
        XCTAssertFalse(w.onTick(now: 20.1).contains(.send(.fetchWeights)), "still within the grace")
        let d = w.onTick(now: 20.3)
        XCTAssertEqual(d.last, .send(.fetchWeights))
        XCTAssertEqual(w.wakeAt, 22.3, "the reply is awaited for fetchRetry")
        XCTAssertFalse(w.onTick(now: 20.6).contains(.send(.fetchWeights)))
        let v2 = Weights(version: 2, theta: [2], alpha: [])
        XCTAssertEqual(w.onMessage(env(.weights(v2)), now: 20.7), [.compute(u3, install: v2)])
        XCTAssertNil(w.wakeAt)
    }

    /// A fetch's reply can be lost (sent to a connection being replaced, or
    /// dropped): a unit waiting for weights never waits for good. The worker
    /// fetches again every `fetchRetry` until they come, and a unit that comes
    /// again (re-issued past its deadline) does not reset the wait.
    func testALostFetchReplyIsFetchedAgain() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = w.onStart(now: 0)
        XCTAssertEqual(
            w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0).last, .send(.fetchWeights))
        let u = WorkUnit(id: 0, kind: .train, version: 0, episodes: [1])
        XCTAssertEqual(w.onMessage(env(.work(u)), now: 0.1), [], "the fetch on its way brings version 0")
        XCTAssertEqual(w.wakeAt, 2)
        let fetches = { (d: [WorkerMachine.Directive]) in d.filter { $0 == .send(.fetchWeights) }.count }
        XCTAssertEqual(fetches(w.onTick(now: 1.9)), 0)
        XCTAssertEqual(fetches(w.onTick(now: 2)), 1, "no reply: fetch again")
        XCTAssertEqual(w.wakeAt, 4)
        XCTAssertEqual(w.onMessage(env(.work(u)), now: 3), [], "the unit again, past its deadline")
        XCTAssertEqual(w.wakeAt, 4)
        XCTAssertEqual(fetches(w.onTick(now: 4)), 1)
        let v0 = Weights(version: 0, theta: [0], alpha: [])
        XCTAssertEqual(w.onMessage(env(.weights(v0)), now: 4.1), [.compute(u, install: v0), .compute(u, install: nil)])
        XCTAssertNil(w.wakeAt)
        XCTAssertEqual(fetches(w.onTick(now: 9)), 0)
    }

    /// A coordinator restarted on the same endpoint (new run id): the worker joins
    /// the new run and takes its weights, even at a version number it held before.
    func testRejoinsARestartedCoordinator() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{a}", version: 0))), now: 0)
        _ = w.onMessage(env(.weights(Weights(version: 4, theta: [1], alpha: []))), now: 1)
        let other = Envelope(runId: "run-2", message: .refuse(.unknownWorker, detail: "send hello first"))
        XCTAssertEqual(w.onMessage(other, now: 2).last, .send(.hello(Hello(workerName: "w", datasetFingerprint: "fp"))))
        let welcome = w.onMessage(
            Envelope(runId: "run-2", message: .welcome(Welcome(configJSON: "{b}", version: 4))), now: 3)
        XCTAssertEqual(welcome.first, .configure(configJSON: "{b}"))
        XCTAssertEqual(w.runId, "run-2")
        XCTAssertEqual(welcome.last, .send(.fetchWeights), "the old run's version 4 is not this run's")
        let fresh = Weights(version: 4, theta: [2], alpha: [])
        XCTAssertEqual(w.onMessage(Envelope(runId: "run-2", message: .weights(fresh)), now: 4), [])
        XCTAssertEqual(w.weightsVersion, 4)
        let u = WorkUnit(id: 1, kind: .train, version: 4, episodes: [1])
        XCTAssertEqual(w.onMessage(Envelope(runId: "run-2", message: .work(u)), now: 4), [.compute(u, install: fresh)])
        // Same config on a later welcome: no reconfiguration.
        XCTAssertFalse(
            w.onMessage(Envelope(runId: "run-2", message: .welcome(Welcome(configJSON: "{b}", version: 4))), now: 5)
                .contains {
                    if case .configure = $0 { return true }; return false
                })
    }

    /// A restarted coordinator that stops before this worker re-joined it: the
    /// worker exits too, instead of saying hello to a coordinator that is going.
    func testShutdownFromARestartedCoordinatorStopsAJoinedWorker() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        XCTAssertEqual(
            w.onMessage(Envelope(runId: "run-2", message: .shutdown(reason: "training finished")), now: 1),
            [.exit(code: 0, reason: "training finished")])
        XCTAssertTrue(w.isStopped)
        XCTAssertEqual(w.onTick(now: 10), [])
    }

    /// The shell cannot keep the terms it was welcomed on: the worker drops what
    /// it waits for and introduces itself again, then works as before.
    func testRejoinNeededSaysHelloAgain() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        _ = w.onMessage(env(.work(WorkUnit(id: 1, kind: .train, version: 1, episodes: []))), now: 1)
        XCTAssertEqual(
            w.onRejoinNeeded("cannot read", now: 2),
            [.log("cannot read; joining again"), .send(.hello(Hello(workerName: "w", datasetFingerprint: "fp")))])
        XCTAssertNil(w.wakeAt, "the unit it waited for is forgotten")
        XCTAssertEqual(
            w.onMessage(env(.work(WorkUnit(id: 2, kind: .train, version: 0, episodes: []))), now: 3),
            [.log("dropped work before welcome")])
        // A fetch sent before the re-join may have been dropped with it: the new membership fetches again.
        XCTAssertEqual(
            w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 4).last, .send(.fetchWeights))
        let u = WorkUnit(id: 3, kind: .train, version: 0, episodes: [])
        XCTAssertEqual(w.onMessage(env(.weights(Weights(version: 0, theta: [], alpha: []))), now: 5), [])
        XCTAssertEqual(
            w.onMessage(env(.work(u)), now: 6), [.compute(u, install: Weights(version: 0, theta: [], alpha: []))])
    }

    func testStaleUnitAfterNewerWeightsIsSkipped() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = w.onStart(now: 0)
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 0)
        _ = w.onMessage(env(.work(WorkUnit(id: 1, kind: .train, version: 4, episodes: []))), now: 1)
        let d = w.onMessage(env(.weights(Weights(version: 5, theta: [], alpha: []))), now: 2)
        XCTAssertEqual(w.weightsVersion, 5)
        XCTAssertEqual(d.last, .send(.ready))
        XCTAssertFalse(
            d.contains {
                if case .compute = $0 { return true }; return false
            })
    }

    func testRefusalsHeartbeatsAndTimeouts() {
        var w = WorkerMachine(name: "w", datasetFingerprint: "fp", coordinatorTimeout: 30)
        _ = w.onStart(now: 0)
        XCTAssertEqual(w.onTick(now: 1), [])
        XCTAssertEqual(w.onTick(now: 3), [.send(.hello(Hello(workerName: "w", datasetFingerprint: "fp")))])
        _ = w.onMessage(env(.welcome(Welcome(configJSON: "{}", version: 0))), now: 4)
        XCTAssertEqual(w.onTick(now: 7), [.send(.heartbeat)])
        XCTAssertEqual(
            w.onTick(now: 40),
            [
                .send(.goodbye(reason: "no word from the coordinator for 36s")),
                .exit(code: 1, reason: "no word from the coordinator for 36s")
            ])
        XCTAssertTrue(w.isStopped)

        var r = WorkerMachine(name: "w", datasetFingerprint: "fp")
        _ = r.onStart(now: 0)
        // A refusal meant for an earlier membership ("unknown worker") does not stop a joining worker.
        XCTAssertEqual(
            r.onMessage(env(.refuse(.unknownWorker, detail: "send hello first")), now: 1),
            [.log("coordinator does not know this worker yet; hello is on its way")])
        XCTAssertFalse(r.isStopped)
        XCTAssertEqual(
            r.onMessage(env(.refuse(.datasetFingerprint, detail: "worker has 0123…")), now: 1),
            [.exit(code: 1, reason: "coordinator refused this worker: dataset fingerprint mismatch: worker has 0123…")])
        var p = WorkerMachine(name: "w", datasetFingerprint: "fp")
        XCTAssertEqual(
            p.onUndecodable(.protocolMismatch(theirs: 9)),
            [
                .exit(
                    code: 1,
                    reason: "coordinator speaks protocol version 9, this worker speaks \(Envelope.protocolVersion)")
            ])
    }
}

/// Spot checks (`--verify F`): a seeded fraction of units is computed twice,
/// by different workers where there are several, and compared bit for bit.
final class VerifyTests: XCTestCase {
    let a = PeerID([1]), b = PeerID([2]), c = PeerID([3])
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }
    func machine(_ fraction: Double = 1) -> CoordinatorMachine {
        var s = CoordinatorMachine.Settings(
            runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 10, unitsPerWorker: 1)
        s.gradientCounts = (2, 0)
        s.verifyFraction = fraction
        s.verifySeed = 7
        return CoordinatorMachine(settings: s, version: 0)
    }
    func accepted(_ d: [CoordinatorMachine.Directive]) -> [TrainResult] {
        d.compactMap {
            if case .unitResult(_, .train(let r)) = $0 { return r }; return nil
        }
    }
    func join(_ m: inout CoordinatorMachine, _ p: PeerID) -> [CoordinatorMachine.Directive] {
        _ = m.onMessage(env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp"))), from: p, now: 0)
        return m.onMessage(env(.ready), from: p, now: 0)
    }
    func train(_ u: WorkUnit, _ g: Float) -> Envelope {
        env(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: [g, 1], gradAlpha: [], lossSum: 1,
                    tasks: u.episodes.count)))
    }

    /// The units checked are a seeded draw: the same in every machine with the same
    /// seed, about the fraction asked for, and other ones under another seed.
    func testTheUnitsCheckedAreASeededFraction() {
        let m = machine(0.3), same = machine(0.3)
        let draws = (0..<10_000).map { m.spotChecked(version: $0 / 100, index: $0 % 100) }
        XCTAssertEqual(draws, (0..<10_000).map { same.spotChecked(version: $0 / 100, index: $0 % 100) })
        let share = Double(draws.filter { $0 }.count) / 10_000
        XCTAssertEqual(share, 0.3, accuracy: 0.02)
        var other = CoordinatorMachine.Settings(runId: "run", datasetFingerprint: "fp", configJSON: "{}")
        other.verifyFraction = 0.3; other.verifySeed = 8
        XCTAssertNotEqual(
            draws,
            (0..<10_000).map {
                CoordinatorMachine(settings: other, version: 0).spotChecked(version: $0 / 100, index: $0 % 100)
            })
        XCTAssertFalse(machine(0).spotChecked(version: 0, index: 0))
    }

    /// A checked unit's first result waits; the unit goes to another worker,
    /// and when the bits agree the first result counts, once.
    func testAgreeingResultsCountOnce() {
        var m = machine()
        _ = join(&m, a); _ = join(&m, b)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1]], [[2]]])))
        let ua = sent.first { $0.0 == a }!.1, ub = sent.first { $0.0 == b }!.1
        var d = m.onMessage(train(ua, 0.5), from: a, now: 1)
        XCTAssertEqual(accepted(d), [])
        XCTAssertEqual(work(d).map(\.1.id), [], "a does not check itself while b is live")
        d = m.onMessage(train(ub, 0.25), from: b, now: 1)
        XCTAssertEqual(
            work(d).map { "\($0.0):\($0.1.id)" }.sorted(), ["\(a):\(ub.id)", "\(b):\(ua.id)"],
            "each unit goes to the other worker")
        d = m.onMessage(train(ua, 0.5), from: b, now: 2)
        XCTAssertEqual(accepted(d).map(\.unitId), [ua.id])
        d = m.onMessage(train(ub, 0.25), from: a, now: 2)
        XCTAssertEqual(accepted(d).map(\.unitId), [ub.id])
        XCTAssertTrue(
            d.contains {
                if case .phaseComplete = $0 { return true }; return false
            })
        XCTAssertEqual(m.verified, 2); XCTAssertEqual(m.mismatches, 0)
    }

    /// Two results that differ in one bit: logged naming both workers, computed a
    /// third time by a third worker; the one that disagrees with the majority is dropped.
    func testTheWorkerThatDisagreesWithTheMajorityIsDropped() {
        var m = machine()
        _ = join(&m, a); _ = join(&m, b)
        let u = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1]]])))[0].1
        XCTAssertEqual(work(m.onMessage(train(u, 0.5), from: a, now: 1)).map(\.0), [b])
        let liar = Float(bitPattern: Float(0.5).bitPattern ^ 1)
        var d = m.onMessage(train(u, liar), from: b, now: 1)
        XCTAssertEqual(
            logs(d), ["verify: unit \(u.id) differs between worker w01 and worker w02; computing it a third time"])
        XCTAssertTrue(
            d.contains {
                if case .fail = $0 { return true }; return false
            }, "no third worker is live: the run cannot decide")
        d = join(&m, c)
        XCTAssertEqual(work(d).map(\.0), [c], "the third opinion comes from a worker not heard yet")
        d = m.onMessage(train(u, 0.5), from: c, now: 2)
        XCTAssertEqual(
            logs(d).prefix(2),
            [
                "verify: unit \(u.id): worker w03 agrees with worker w01",
                "worker w02 disagrees with the majority on unit \(u.id) (verify); dropped"
            ])
        XCTAssertEqual(accepted(d).map(\.gradTheta), [[0.5, 1]])
        XCTAssertEqual(m.liveWorkers, 2)
        XCTAssertEqual(m.mismatches, 1)
    }

    /// With one worker (`train` runs one host agent) the second opinion is its own.
    func testALoneWorkerGivesTheSecondOpinion() {
        var m = machine()
        _ = join(&m, a)
        let u = work(m.startPhase(.init(kind: .train, version: 0, units: [[[1, 2]]])))[0].1
        let d = m.onMessage(train(u, 0.5), from: a, now: 1)
        XCTAssertEqual(work(d).map(\.1.id), [u.id])
        XCTAssertEqual(accepted(m.onMessage(train(u, 0.5), from: a, now: 2)).map(\.unitId), [u.id])
        XCTAssertEqual(m.verified, 1)
    }
}

/// Hostile peers that join and then hold work, flood, or lie about their size
/// (issue "hostile peers, part 2"): each costs seconds and a few log lines.
final class LeaseAndNoiseMachineTests: XCTestCase {
    let honest = PeerID([1]), holder = PeerID([7])
    func env(_ m: Message) -> Envelope { Envelope(runId: "run", message: m) }
    func machine() -> CoordinatorMachine {
        CoordinatorMachine(
            settings: .init(runId: "run", datasetFingerprint: "fp", configJSON: "{}", workerTimeout: 1000),
            version: 0)
    }
    func join(_ m: inout CoordinatorMachine, _ p: PeerID, procs: Int = 1, now: Double = 0) {
        _ = m.onMessage(
            env(.hello(Hello(workerName: "w\(p)", datasetFingerprint: "fp", procs: procs))), from: p, now: now)
        _ = m.onMessage(env(.ready), from: p, now: now)
    }
    func result(_ u: WorkUnit) -> Envelope {
        env(
            .trainResult(
                TrainResult(
                    unitId: u.id, version: u.version, gradTheta: [Float(u.id)], gradAlpha: [], lossSum: 0,
                    tasks: u.episodes.count)))
    }
    func completes(_ d: [CoordinatorMachine.Directive]) -> Bool {
        d.contains {
            if case .phaseComplete = $0 { return true }; return false
        }
    }

    /// A peer that claims 4,096 processes gets one unit until it returns results; a unit
    /// it holds past the deadline goes to the honest worker and never back to it; a second
    /// late unit drops it. The phase ends on the honest worker's results.
    func testAHolderCannotKeepALeaseNorClaimItsWayToMoreWork() {
        for claimed in [8, 4096] {
            var m = machine()
            join(&m, holder, procs: claimed)
            join(&m, honest)
            var sent = work(m.startPhase(.init(kind: .train, version: 0, leaves: (0..<8).map { [$0] })))
            XCTAssertEqual(sent.filter { $0.0 == holder }.count, 2, "one to compute and one queued, not \(claimed)")
            var done = false, now = 0.0
            var held = sent.filter { $0.0 == honest }.map(\.1)
            // The honest worker computes everything it is given, 0.1 s a unit; the holder answers nothing.
            while !done && now < 100 {
                now += 0.1
                if let u = held.first {
                    held.removeFirst()
                    let d = m.onMessage(result(u), from: honest, now: now)
                    done = completes(d)
                    held += work(d).filter { $0.0 == honest }.map(\.1)
                    XCTAssertTrue(work(d).allSatisfy { $0.0 == honest }, "nothing more for the holder")
                }
                let t = m.onTick(now: now)
                XCTAssertFalse(work(t).contains { $0.0 == holder }, "a late unit went back to its holder")
                held += work(t).filter { $0.0 == honest }.map(\.1)
                sent += work(t)
            }
            XCTAssertTrue(done, "the phase ended (claimed \(claimed))")
            XCTAssertLessThan(now, 12, "it cost seconds, not minutes (claimed \(claimed))")
            XCTAssertFalse(m.knows(holder), "two units past their deadlines drop the holder")
        }
    }

    /// A holder that takes the run's very first unit, before any unit time is measured, costs
    /// `minUnitDeadline` (5 s), not `firstUnitDeadline` (120 s): an idle peer takes a copy and its
    /// result counts; the holder, still holding that unit, gets nothing more.
    func testAHolderOfTheFirstUnitCostsSecondsNotTheFirstDeadline() {
        var m = machine()
        join(&m, holder, procs: 4096)
        let first = work(m.startPhase(.init(kind: .train, version: 0, units: [[[0]]])))
        XCTAssertEqual(first.map(\.0), [holder])
        join(&m, honest, now: 0.5)
        var now = 0.5, copy: WorkUnit?
        while copy == nil && now < 30 {
            now += 0.5
            let t = m.onTick(now: now)
            copy = work(t).first { $0.0 == honest }?.1
            if copy != nil {
                XCTAssertTrue(logs(t).contains { $0.contains("no unit time is measured yet") }, "\(logs(t))")
            }
        }
        XCTAssertEqual(copy?.id, first[0].1.id, "the honest worker computes a copy")
        XCTAssertLessThanOrEqual(now, 6, "after minUnitDeadline, not firstUnitDeadline")
        XCTAssertTrue(completes(m.onMessage(result(copy!), from: honest, now: now + 0.1)))
        XCTAssertTrue(m.knows(holder), "no blame: a first unit may be slow to start")
        XCTAssertNotNil(m.taskSeconds)
        // The next phase: the holder still holds the first unit (its one slot), so every unit goes
        // to the honest worker.
        m.onPublished(version: 1)
        let next = work(m.startPhase(.init(kind: .train, version: 1, units: [[[0]], [[1]]])))
        XCTAssertEqual(next.map(\.0), [honest])
        let second = work(m.onMessage(result(next[0].1), from: honest, now: now + 0.2))
        XCTAssertEqual(second.map(\.0), [honest])
        XCTAssertTrue(completes(m.onMessage(result(second[0].1), from: honest, now: now + 0.3)))
    }

    /// Results for units never issued, a unit given back that is not held, `ready` while
    /// holding work, a second fetch of the same weights at once and a malformed message each
    /// count as a strike; three drop the peer. A fetch after a real loss is answered.
    func testEveryMessageAJoinedPeerSendsIsUsefulOnceOrCounted() {
        func strikes(_ d: [CoordinatorMachine.Directive]) -> Int {
            logs(d).filter { $0.contains("bad result or message") }.count
        }
        var m = machine()
        join(&m, holder); join(&m, honest)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, leaves: (0..<6).map { [$0] })))
        let mine = sent.first { $0.0 == holder }!.1
        XCTAssertEqual(
            strikes(
                m.onMessage(result(WorkUnit(id: 999, kind: .train, version: 0, leaves: [[1]])), from: holder, now: 1)),
            1)
        XCTAssertEqual(strikes(m.onMessage(env(.unitFailed(unitId: 998, reason: "x")), from: holder, now: 1)), 1)
        let r = m.onMessage(env(.ready), from: holder, now: 1)
        XCTAssertTrue(logs(r).contains { $0.contains("sent 3 bad results or messages") }, "\(logs(r))")
        XCTAssertFalse(m.knows(holder))
        XCTAssertTrue(work(r).allSatisfy { $0.0 == honest })
        let first = sent.first { $0.0 == honest }!.1
        XCTAssertTrue(
            work(m.onMessage(result(first), from: honest, now: 2)).contains { $0.1.id == mine.id },
            "the holder's units go to the honest worker")

        // Fetches: one reply per version, another after a real loss.
        var f = machine()
        join(&f, holder)
        func replies(_ d: [CoordinatorMachine.Directive]) -> Int {
            d.filter {
                if case .sendWeights = $0 { return true }; return false
            }.count
        }
        XCTAssertEqual(replies(f.onMessage(env(.fetchWeights), from: holder, now: 10)), 1)
        let again = f.onMessage(env(.fetchWeights), from: holder, now: 10.2)
        XCTAssertEqual(replies(again), 0); XCTAssertEqual(strikes(again), 1)
        XCTAssertEqual(
            replies(f.onMessage(env(.fetchWeights), from: holder, now: 12.3)), 1, "a lost reply, asked again")
        XCTAssertEqual(strikes(f.onUndecodable(.invalid("a message of 2 frames"), from: holder, now: 13)), 1)
        XCTAssertEqual(f.liveWorkers, 1)
        _ = f.onUndecodable(.invalid("junk"), from: holder, now: 13)
        XCTAssertFalse(f.knows(holder), "three strikes")
    }

    /// An agent that gives a unit back and then says ready is honest: no strike.
    func testReadyAfterGivingAUnitBackIsNoStrike() {
        var m = machine()
        join(&m, holder, procs: 2)
        let sent = work(m.startPhase(.init(kind: .train, version: 0, leaves: (0..<4).map { [$0] })))
        let d =
            m.onMessage(env(.unitFailed(unitId: sent[0].1.id, reason: "crashed twice")), from: holder, now: 1)
            + m.onMessage(env(.ready), from: holder, now: 1)
        XCTAssertFalse(logs(d).contains { $0.contains("bad result or message") }, "\(logs(d))")
    }

    /// A dropped peer hears it must join again every time it speaks, however often it was
    /// dropped; the log says so at most five times a minute.
    func testAnUnknownPeerAlwaysLearnsItMustJoinAgain() {
        var m = machine()
        var refusals = 0, lines = 0
        for i in 0..<50 {
            let d = m.onMessage(env(.heartbeat), from: holder, now: Double(i) * 0.1)
            refusals +=
                d.filter {
                    if case .send(_, .refuse(.unknownWorker, _)) = $0 { return true }; return false
                }.count
            lines += logs(d).count
        }
        XCTAssertEqual(refusals, 50)
        XCTAssertLessThanOrEqual(lines, 5)
    }
}

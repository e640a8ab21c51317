import Foundation
import Runtime
import XCTest

final class AllocatorTests: XCTestCase {
    /// Page faults taken while `rounds` rounds each allocate, fill and free ten
    /// 1.5 MB buffers on a thread of their own (as ZeroMQ's I/O thread does with
    /// received messages), not counting the first round.
    func faultsReusingBuffers(rounds: Int) -> Int {
        final class Count: @unchecked Sendable { var faults = 0 }
        let count = Count()
        let t = Thread {
            func minorFaults() -> Int { var u = rusage(); getrusage(RUSAGE_SELF.rawValue, &u); return u.ru_minflt }
            var start = 0
            for round in 0..<rounds {
                if round == 1 { start = minorFaults() }
                let buffers = (0..<10).map { _ in malloc(1_500_000)! }
                for b in buffers { memset(b, 1, 1_500_000) }
                for b in buffers { free(b) }
            }
            count.faults = minorFaults() - start
        }
        t.start()
        while !t.isFinished { usleep(1000) }
        return count.faults
    }

    func testFreedMessageBuffersAreReusedWithoutPageFaults() {
        #if os(Linux)
        keepLargeBuffersMapped()
        // Without it glibc trims the freed 15 MB and faults in ~3,700 pages a round.
        XCTAssertLessThan(faultsReusingBuffers(rounds: 6), 500)
        #endif
    }
}

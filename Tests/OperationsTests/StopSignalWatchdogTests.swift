import Foundation
import Glibc
import Logging
import Synchronization
import Testing

@testable import Operations

/// The watchdog carries out the state machine's exits on its own queue, with the process's exit replaced by a
/// recorder: the drain's limit and a second signal end the process, a finished drain does not.
@Suite struct StopSignalWatchdogTests {
    /// The statuses the watchdog exited with, and a semaphore raised at each.
    final class Exits: Sendable {
        let statuses = Mutex<[Int32]>([])
        let exited = DispatchSemaphore(value: 0)

        func record(_ status: Int32) {
            statuses.withLock { $0.append(status) }
            exited.signal()
        }

        func waitForExit(seconds: Double) -> Bool { exited.wait(timeout: .now() + seconds) == .success }
    }

    func watchdog(limit: Duration, _ exits: Exits) -> StopSignalWatchdog {
        StopSignalWatchdog(limit: limit, logger: Logger(label: "test"), exit: { exits.record($0) })
    }

    @Test func aDrainPastItsLimitExitsWithStatusOne() {
        let exits = Exits()
        let watchdog = watchdog(limit: .milliseconds(200), exits)
        let signalled = ContinuousClock.now
        watchdog.received(SIGTERM)
        #expect(exits.statuses.withLock { $0 }.isEmpty, "the first signal only begins the drain")
        #expect(exits.waitForExit(seconds: 5), "no exit after the drain's limit")
        let elapsed = ContinuousClock.now - signalled
        #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(3), "exited after \(elapsed)")
        #expect(exits.statuses.withLock { $0 } == [StopSignalStateMachine.drainTooLongStatus])
    }

    @Test func aSecondSignalExitsAtOnce() {
        let exits = Exits()
        let watchdog = watchdog(limit: .seconds(60), exits)
        watchdog.received(SIGINT)
        watchdog.received(SIGTERM)
        #expect(exits.statuses.withLock { $0 } == [128 + SIGTERM])
    }

    @Test func aDrainThatFinishesInTimeDoesNotExit() {
        let exits = Exits()
        let watchdog = watchdog(limit: .milliseconds(100), exits)
        watchdog.received(SIGTERM)
        watchdog.servicesEnded()
        #expect(!exits.waitForExit(seconds: 0.5), "exited with \(exits.statuses.withLock { $0 }) after the drain ended")
        watchdog.received(SIGTERM)
        #expect(exits.statuses.withLock { $0 }.isEmpty)
    }
}

import Glibc
import Testing

@testable import Operations

/// The decisions behind a stop by signal: the first drains, a second or a drain past its limit exits at once.
@Suite struct StopSignalStateMachineTests {
    let start = ContinuousClock.now

    @Test func theFirstSignalDrainsWithinTheLimit() {
        var machine = StopSignalStateMachine(limit: .seconds(10))
        #expect(machine.signalReceived(SIGTERM, now: start) == .beginDrain(deadline: start + .seconds(10)))
        #expect(machine.state == .draining(signal: SIGTERM, deadline: start + .seconds(10)))
        // The deadline's timer may fire early by a hair: nothing happens before the deadline itself.
        #expect(machine.deadlineReached(now: start + .seconds(9)) == .none)
        machine.servicesEnded()
        #expect(machine.state == .finished)
        #expect(machine.deadlineReached(now: start + .seconds(11)) == .none)
        #expect(machine.signalReceived(SIGINT, now: start + .seconds(12)) == .none)
    }

    @Test func aSecondSignalExitsAtOnceWithTheShellsStatusForIt() {
        var machine = StopSignalStateMachine(limit: .seconds(10))
        _ = machine.signalReceived(SIGINT, now: start)
        guard case .exitNow(let status, let reason) = machine.signalReceived(SIGTERM, now: start + .milliseconds(300)) else {
            Issue.record("a second signal did not exit")
            return
        }
        #expect(status == 128 + SIGTERM)
        #expect(reason.contains("SIGTERM during the stop that SIGINT began"))
        #expect(machine.state == .exiting(status: 128 + SIGTERM))
        // Exiting is final: a late deadline or the services ending change nothing.
        #expect(machine.deadlineReached(now: start + .seconds(20)) == .none)
        machine.servicesEnded()
        #expect(machine.state == .exiting(status: 128 + SIGTERM))
    }

    @Test func aDrainPastItsLimitExitsNonZero() {
        var machine = StopSignalStateMachine(limit: .seconds(10))
        _ = machine.signalReceived(SIGTERM, now: start)
        guard case .exitNow(let status, let reason) = machine.deadlineReached(now: start + .seconds(10)) else {
            Issue.record("the deadline did not exit")
            return
        }
        #expect(status == StopSignalStateMachine.drainTooLongStatus)
        #expect(status != 0)
        #expect(reason.contains("did not finish within 10 s"))
        #expect(machine.signalReceived(SIGTERM, now: start + .seconds(11)) == .none)
    }

    @Test func servicesThatEndWithoutASignalIgnoreLaterSignals() {
        var machine = StopSignalStateMachine(limit: .seconds(10))
        #expect(machine.deadlineReached(now: start + .seconds(60)) == .none)
        machine.servicesEnded()
        #expect(machine.signalReceived(SIGTERM, now: start) == .none)
        #expect(machine.state == .finished)
    }
}

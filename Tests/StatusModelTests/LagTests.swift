import Foundation
import Testing
import WALCore

@testable import StatusModel

@Suite struct LagTrackerTests {
    let t0 = ContinuousClock.now

    @Test func nothingKnownYieldsNil() {
        let tracker = LagTracker()
        #expect(tracker.secondsBehind(LSN(100), at: t0) == nil)
        #expect(tracker.bytesBehind(LSN(100)) == nil)
    }

    @Test func caughtUpIsZero() {
        var tracker = LagTracker()
        tracker.primaryReported(lsn: LSN(1000), primaryTime: 5000, arrivedAt: t0, localWallClock: 5000)
        #expect(tracker.bytesBehind(LSN(1000)) == 0)
        #expect(tracker.secondsBehind(LSN(1000), at: t0 + .seconds(30)) == 0)
        #expect(tracker.secondsBehind(LSN(2000), at: t0) == 0)
    }

    @Test func ageOfOldestMissingWAL() {
        var tracker = LagTracker(spacingSeconds: 0)
        // The primary writes 100 bytes a second.
        for i in 1...10 {
            tracker.primaryReported(
                lsn: LSN(UInt64(i) * 100), primaryTime: 1000 + Double(i),
                arrivedAt: t0 + .seconds(i), localWallClock: 1000 + Double(i))
        }
        let now = t0 + .seconds(10)
        // A stage at 550 lacks WAL written between t=1005 (lsn 500) and t=1006 (lsn 600): about 4.5 s
        // old at t=1010.
        #expect(tracker.secondsBehind(LSN(550), at: now) == 4.5)
        #expect(tracker.bytesBehind(LSN(550)) == 450)
        // Time passes with no new WAL: the lag grows, measured on the monotonic clock.
        #expect(tracker.secondsBehind(LSN(550), at: now + .seconds(5)) == 9.5)
    }

    @Test func clockSkewDoesNotDistortLag() {
        // The primary's clock is an hour ahead of ours; lag must not show the hour.
        var tracker = LagTracker(spacingSeconds: 0)
        tracker.primaryReported(lsn: LSN(100), primaryTime: 1000 + 3600, arrivedAt: t0, localWallClock: 1000)
        tracker.primaryReported(lsn: LSN(200), primaryTime: 1002 + 3600, arrivedAt: t0 + .seconds(2), localWallClock: 1002)
        #expect(tracker.secondsBehind(LSN(150), at: t0 + .seconds(3)) == 2)
        #expect(tracker.clockSkewSeconds == 3600)
    }

    @Test func timeGoingBackwardsIsIgnored() {
        var tracker = LagTracker(spacingSeconds: 0)
        tracker.primaryReported(lsn: LSN(100), primaryTime: 2000, arrivedAt: t0, localWallClock: 2000)
        tracker.primaryReported(lsn: LSN(200), primaryTime: 1500, arrivedAt: t0 + .seconds(1), localWallClock: 2001)
        let lag = tracker.secondsBehind(LSN(150), at: t0 + .seconds(1))
        #expect(lag != nil && lag! >= 0)
        #expect(tracker.primaryNow(at: t0 + .seconds(1))! >= 2000)
    }

    @Test func boundedMemoryKeepsOldAges() {
        var tracker = LagTracker(capacity: 64, spacingSeconds: 0)
        for i in 1...10_000 {
            tracker.primaryReported(
                lsn: LSN(UInt64(i) * 10), primaryTime: Double(i), arrivedAt: t0 + .seconds(i), localWallClock: Double(i))
        }
        #expect(tracker.pointCount <= 65)
        // A stage stuck near the start is still known to be thousands of seconds behind.
        let lag = tracker.secondsBehind(LSN(15), at: t0 + .seconds(10_000))!
        #expect(lag > 9000)
    }

    @Test func forgettingPassedPoints() {
        var tracker = LagTracker(spacingSeconds: 0)
        for i in 1...5 {
            tracker.primaryReported(
                lsn: LSN(UInt64(i) * 100), primaryTime: Double(i), arrivedAt: t0 + .seconds(i), localWallClock: Double(i))
        }
        tracker.forget(upTo: LSN(300))
        #expect(tracker.pointCount == 3)
        #expect(tracker.secondsBehind(LSN(350), at: t0 + .seconds(5)) == 1.5)
    }

    @Test func historyIsSpacedAndBounded() {
        var history = LagHistory(capacity: 3, intervalSeconds: 2)
        let start = Date(timeIntervalSince1970: 0)
        for i in 0..<10 {
            history.record(.init(at: start.addingTimeInterval(Double(i)), bytes: UInt64(i), seconds: Double(i)))
        }
        #expect(history.points.map(\.bytes) == [4, 6, 8])
    }
}

@Suite struct AlertStateMachineTests {
    let start = Date(timeIntervalSince1970: 1_000_000)

    func lag(_ seconds: Double, firing: Bool) -> AlertObservation {
        AlertObservation(
            condition: "lag_seconds", system: "1", firing: firing, message: "lag \(seconds)", value: seconds, threshold: 10)
    }

    @Test func firesOnceAndRecoversOnce() {
        var machine = AlertStateMachine(role: "receiver", host: "dr", recoverAfterSeconds: 5)
        #expect(machine.evaluate([lag(1, firing: false)], now: start).isEmpty)
        let fired = machine.evaluate([lag(20, firing: true)], now: start.addingTimeInterval(1))
        #expect(fired.map(\.event) == [.firing])
        #expect(fired.first?.condition == "lag_seconds" && fired.first?.system == "1")
        // Still firing for a long time: no more notifications.
        for i in 2..<100 {
            #expect(machine.evaluate([lag(30, firing: true)], now: start.addingTimeInterval(Double(i))).isEmpty)
        }
        #expect(machine.active.count == 1)
        // Clear, but not yet for the recovery period.
        #expect(machine.evaluate([lag(1, firing: false)], now: start.addingTimeInterval(100)).isEmpty)
        #expect(machine.evaluate([lag(1, firing: false)], now: start.addingTimeInterval(103)).isEmpty)
        let resolved = machine.evaluate([lag(1, firing: false)], now: start.addingTimeInterval(105))
        #expect(resolved.map(\.event) == [.resolved])
        #expect(resolved.first?.durationSeconds == 104)
        #expect(machine.active.isEmpty)
    }

    @Test func flappingStaysOneIncident() {
        var machine = AlertStateMachine(role: "receiver", host: "dr", recoverAfterSeconds: 30)
        var events: [AlertEvent] = []
        for i in 0..<200 {
            events += machine.evaluate([lag(10, firing: i % 2 == 0)], now: start.addingTimeInterval(Double(i)))
        }
        #expect(events.map(\.event) == [.firing])
    }

    @Test func escalationIsNews() {
        var machine = AlertStateMachine(role: "sender", host: "p", recoverAfterSeconds: 0)
        let warn = AlertObservation(condition: "slot_wal_status", firing: true, severity: .warning, message: "extended")
        let crit = AlertObservation(condition: "slot_wal_status", firing: true, severity: .critical, message: "unreserved")
        #expect(machine.evaluate([warn], now: start).count == 1)
        #expect(machine.evaluate([warn], now: start).isEmpty)
        #expect(machine.evaluate([crit], now: start).map(\.severity) == [.critical])
    }

    @Test func absentConditionCountsAsClear() {
        var machine = AlertStateMachine(role: "receiver", host: "dr", recoverAfterSeconds: 0)
        _ = machine.evaluate([lag(20, firing: true)], now: start)
        #expect(machine.evaluate([], now: start.addingTimeInterval(1)).map(\.event) == [.resolved])
    }

    @Test func eventJSONIsStable() throws {
        let event = AlertEvent(
            event: .firing, condition: "memory", severity: .warning, role: "sender", host: "h", system: nil,
            message: "m", value: 70, threshold: 64, startedAt: start, at: start)
        let json = String(decoding: try StatusDocument.encoder(pretty: false).encode(event), as: UTF8.self)
        #expect(json.contains(#""event":"firing""#))
        #expect(json.contains(#""source":"walship""#))
        #expect(json.contains(#""startedAt":"1970-01-12T13:46:40.000Z""#))
    }
}

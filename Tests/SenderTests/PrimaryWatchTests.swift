import ShipProtocol
import Testing
import WALCore

@testable import Sender

@Suite struct PrimaryWatchTests {
    let t0 = ContinuousClock.now

    func at(_ millis: Int) -> ContinuousClock.Instant { t0 + .milliseconds(millis) }

    @Test func aDropConfirmedByTwoSecondsOfRefusalsIsLost() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        #expect(watch.verdict == .alive(lastHeard: at(0)))
        #expect(watch.nextProbe == nil, "nothing to ask while the connection is up")
        watch.connectionDropped(at: at(100))
        #expect(watch.verdict == .unanswered(droppedAt: at(100), lastHeard: at(0)))
        #expect(watch.nextProbe == at(100), "the first probe is due at once")
        for millis in stride(from: 100, to: 2_100, by: 500) {
            watch.unanswered(at: at(millis))
            #expect(watch.verdict == .unanswered(droppedAt: at(100), lastHeard: at(0)))
            #expect(watch.nextProbe == at(millis + 500))
        }
        watch.unanswered(at: at(2_100))
        #expect(watch.verdict == .lost(since: at(100), lastHeard: at(0)))
        #expect(watch.nextProbe == at(3_100), "a lost primary is still asked, less often")
    }

    @Test func anyAnswerWithdrawsTheVerdict() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        watch.connectionDropped(at: at(10))
        watch.unanswered(at: at(3_000))
        #expect(watch.verdict == .lost(since: at(10), lastHeard: at(0)))
        // "the database system is starting up": an answer.
        watch.answered(at: at(3_500))
        #expect(watch.verdict == .alive(lastHeard: at(3_500)))
        #expect(watch.nextProbe == nil)
        // A second drop starts the 2 s afresh.
        watch.connectionDropped(at: at(4_000))
        watch.unanswered(at: at(5_000))
        #expect(watch.verdict == .unanswered(droppedAt: at(4_000), lastHeard: at(3_500)))
        watch.unanswered(at: at(6_000))
        #expect(watch.verdict == .lost(since: at(4_000), lastHeard: at(3_500)))
    }

    @Test func aCrashRestartThatAnswersWithinTheWindowIsNeverLost() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        for round in 0..<10 {
            let base = round * 1_500
            watch.connectionDropped(at: at(base + 100))
            watch.unanswered(at: at(base + 600))
            watch.answered(at: at(base + 1_100))
            #expect(watch.verdict == .alive(lastHeard: at(base + 1_100)))
        }
    }

    @Test func refusalsWithoutADropDecideNothing() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        watch.unanswered(at: at(5_000))
        #expect(watch.verdict == .alive(lastHeard: at(0)))
        // A second drop report keeps the first moment.
        watch.connectionDropped(at: at(6_000))
        watch.connectionDropped(at: at(7_000))
        watch.unanswered(at: at(8_000))
        #expect(watch.verdict == .lost(since: at(6_000), lastHeard: at(0)))
    }

    @Test func aGracefulStopReportsAliveButNeverHidesALoss() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        watch.senderStopping()
        #expect(watch.verdict == .senderStopped(lastHeard: at(0)))
        #expect(watch.nextProbe == nil)
        var lostFirst = PrimaryWatch()
        lostFirst.connectionDropped(at: at(0))
        lostFirst.unanswered(at: at(2_000))
        lostFirst.senderStopping()
        #expect(lostFirst.verdict == .lost(since: at(0), lastHeard: nil))
    }

    @Test func theFrameCarriesAgesNotTimes() {
        var watch = PrimaryWatch()
        watch.answered(at: at(0))
        watch.connectionDropped(at: at(1_000))
        watch.unanswered(at: at(3_000))
        let frame = watch.frame(now: at(3_250), sentAt: PostgresTimestamp(rawValue: 42))
        #expect(
            frame
                == PrimaryVerdict(
                    state: .lost, lastHeardAgeMillis: 3_250, droppedAgeMillis: 2_250, sentAt: PostgresTimestamp(rawValue: 42)))
        let never = PrimaryWatch().frame(now: at(0), sentAt: PostgresTimestamp(rawValue: 0))
        #expect(never.state == .alive && never.lastHeardAgeMillis == nil && never.droppedAgeMillis == nil)
    }
}

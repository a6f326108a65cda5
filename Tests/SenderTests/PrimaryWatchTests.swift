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

    @Test func anAnswerFromBeforeTheDropWithdrawsNothing() {
        var watch = PrimaryWatch()
        watch.connectionDropped(at: at(1_000))
        watch.answered(at: at(900))
        #expect(watch.verdict == .unanswered(droppedAt: at(1_000), lastHeard: at(900)))
        watch.unanswered(at: at(3_000))
        #expect(watch.verdict == .lost(since: at(1_000), lastHeard: at(900)))
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

@Suite struct VerdictDeliveryTests {
    let t0 = ContinuousClock.now
    let interval = Duration.seconds(5)

    func send(
        _ delivery: inout VerdictDelivery, _ verdict: PrimaryWatch.Verdict, streaming: Bool, now: ContinuousClock.Instant,
        interval: Duration
    ) -> Bool {
        delivery.shouldSend(verdict, streaming: streaming, now: now, interval: interval)
    }

    @Test func aChangedVerdictGoesAtOnceTheSameOneAfterTheInterval() {
        var delivery = VerdictDelivery()
        let lost = PrimaryWatch.Verdict.lost(since: t0, lastHeard: nil)
        #expect(!send(&delivery, lost, streaming: true, now: t0, interval: interval), "the stream link carries the news")
        #expect(send(&delivery, lost, streaming: false, now: t0, interval: interval))
        #expect(!send(&delivery, lost, streaming: false, now: t0, interval: interval), "one at a time")
        delivery.finished(lost, delivered: true, at: t0)
        #expect(!send(&delivery, lost, streaming: false, now: t0 + .seconds(4), interval: interval))
        #expect(send(&delivery, lost, streaming: false, now: t0 + .seconds(5), interval: interval))
        delivery.finished(lost, delivered: true, at: t0 + .seconds(5))
        let alive = PrimaryWatch.Verdict.alive(lastHeard: t0 + .seconds(6))
        #expect(send(&delivery, alive, streaming: false, now: t0 + .seconds(6), interval: interval))
    }

    @Test func aFailedDeliveryIsRetriedAfterASecondAndAStopIsNotSentHere() {
        var delivery = VerdictDelivery()
        let lost = PrimaryWatch.Verdict.lost(since: t0, lastHeard: nil)
        #expect(send(&delivery, lost, streaming: false, now: t0, interval: interval))
        delivery.finished(lost, delivered: false, at: t0)
        #expect(!send(&delivery, lost, streaming: false, now: t0 + .milliseconds(500), interval: interval))
        #expect(send(&delivery, lost, streaming: false, now: t0 + .seconds(1), interval: interval))
        var stopping = VerdictDelivery()
        #expect(!send(&stopping, .senderStopped(lastHeard: t0), streaming: false, now: t0, interval: interval))
    }
}

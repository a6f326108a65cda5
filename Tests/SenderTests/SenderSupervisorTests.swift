import Testing
import WALCore

@testable import Sender

@Suite struct SenderSupervisorTests {
    let t0 = ContinuousClock.now

    func supervisor(
        _ policy: ReceiverLossPolicy = .block, buffer: Bool = false, maxBackoff: Duration = .seconds(30)
    ) -> SenderSupervisor {
        SenderSupervisor(receiverLoss: policy, hasBuffer: buffer, maxBackoff: maxBackoff)
    }

    /// A supervisor whose first session reached streaming.
    func linked(
        _ policy: ReceiverLossPolicy = .block, buffer: Bool = false, maxBackoff: Duration = .seconds(30)
    ) -> SenderSupervisor {
        var s = supervisor(policy, buffer: buffer, maxBackoff: maxBackoff)
        _ = s.start()
        _ = s.handle(.connected)
        _ = s.handle(.linked)
        return s
    }

    func linkLost(at offset: Duration = .zero, exposed: Bool = false) -> SenderSupervisor.Event {
        .linkLost(setUpMistake: nil, stillExposed: exposed, now: t0 + offset)
    }

    @Test func aSessionConnectsToThePrimaryThenTheReceiverThenStreams() {
        var s = supervisor()
        #expect(s.state == .starting)
        #expect(s.state.status.rawValue == "starting")
        #expect(s.start() == .reconnectNow)
        #expect(s.state == .connecting(.primary))
        #expect(s.state.status.rawValue == "connecting to primary")
        #expect(s.handle(.connected) == .none)
        #expect(s.state == .connecting(.receiver))
        #expect(s.state.status.rawValue == "connecting to receiver")
        #expect(s.handle(.linked) == .none)
        #expect(s.state == .streaming)
        #expect(s.state.status.rawValue == "streaming")
        #expect(s.everConnected && s.everLinked)
    }

    /// `--standby-wait`: a source that answers as a standby is asked again every 2 s, never a failure and never a
    /// set-up mistake, and its promotion leads to streaming as usual.
    @Test func aSenderBesideAStandbyWaitsForItsPromotion() {
        var s = supervisor()
        _ = s.start()
        _ = s.handle(.connected)
        for _ in 0..<3 {
            #expect(s.handle(.sourceIsStandby) == .wait(.seconds(2)))
            #expect(s.state == .waitingForPromotion)
            #expect(s.state.status.rawValue == "waiting for promotion")
            #expect(s.handle(.timePassed(now: t0)) == .reconnectNow)
        }
        // Waiting left no backoff behind, and a later failure is not taken for a set-up mistake.
        #expect(s.backoff == .seconds(1))
        #expect(s.handle(.primaryLost(setUpMistake: "refused", stillExposed: false, now: t0)) == .wait(.seconds(1)))
        _ = s.handle(.timePassed(now: t0))
        _ = s.handle(.connected)
        _ = s.handle(.linked)
        #expect(s.state == .streaming)
    }

    @Test func backoffDoublesUpToTheMaximumAndTheWaitEndsInAReconnect() {
        var s = linked(maxBackoff: .seconds(5))
        var waits: [SenderSupervisor.Action] = []
        for _ in 0..<5 {
            waits.append(s.handle(linkLost()))
            #expect(s.state.status.rawValue == "retrying")
            #expect(s.handle(.timePassed(now: t0)) == .reconnectNow)
            #expect(s.state == .connecting(.primary))
        }
        #expect(waits == [.wait(.seconds(1)), .wait(.seconds(2)), .wait(.seconds(4)), .wait(.seconds(5)), .wait(.seconds(5))])
    }

    @Test func aLinkResetsTheBackoff() {
        var s = linked()
        _ = s.handle(linkLost())
        _ = s.handle(.timePassed(now: t0))
        #expect(s.handle(.primaryLost(setUpMistake: nil, stillExposed: false, now: t0)) == .wait(.seconds(2)))
        #expect(s.state == .retrying(backoff: .seconds(2), stillDegraded: false))
        #expect(s.backoff == .seconds(4))
        _ = s.handle(.timePassed(now: t0))
        _ = s.handle(.connected)
        _ = s.handle(.linked)
        #expect(s.backoff == .seconds(1))
        #expect(s.handle(linkLost()) == .wait(.seconds(1)))
    }

    @Test func setUpMistakesStopBeforeTheFirstConnectionOrLinkOnly() {
        var fresh = supervisor()
        _ = fresh.start()
        #expect(
            fresh.handle(.primaryLost(setUpMistake: "login refused", stillExposed: false, now: t0))
                == .stop(fatal: "login refused", kind: .setUp))
        #expect(fresh.state == .failed(reason: "login refused"))
        #expect(fresh.state.status.rawValue == "failed")
        #expect(fresh.handle(.timePassed(now: t0)) == .none, "a failed supervisor stays failed")

        // Connected to the primary, never linked: a PostgreSQL failure is a restart, a TLS mistake still stops.
        var connected = supervisor()
        _ = connected.start()
        _ = connected.handle(.connected)
        #expect(
            connected.handle(.primaryLost(setUpMistake: "connection lost", stillExposed: false, now: t0)) == .wait(.seconds(1)))
        _ = connected.handle(.timePassed(now: t0))
        #expect(
            connected.handle(.linkLost(setUpMistake: "TLS", stillExposed: false, now: t0)) == .stop(fatal: "TLS", kind: .setUp))

        // Once linked, the same failures are retried.
        var s = linked()
        #expect(s.handle(.linkLost(setUpMistake: "TLS", stillExposed: false, now: t0)) == .wait(.seconds(1)))
        _ = s.handle(.timePassed(now: t0))
        #expect(s.handle(.primaryLost(setUpMistake: "connection lost", stillExposed: false, now: t0)) == .wait(.seconds(2)))
    }

    @Test func aFatalErrorStops() {
        var s = linked()
        #expect(s.handle(.fatal(reason: "slot invalidated", kind: .runtime)) == .stop(fatal: "slot invalidated", kind: .runtime))
        #expect(s.state == .failed(reason: "slot invalidated"))
    }

    @Test func aTimelineEndReconnectsAtOnceWithoutGrowingTheBackoff() {
        var s = linked()
        _ = s.handle(linkLost())
        _ = s.handle(.timePassed(now: t0))
        let backoff = s.backoff
        #expect(s.handle(.timelineEnded) == .reconnectNow)
        #expect(s.state == .connecting(.primary))
        #expect(s.backoff == backoff)
    }

    @Test func underBlockOrWithoutABufferTheSenderNeverDegrades() {
        var block = linked(.block, buffer: true)
        #expect(block.handle(linkLost(at: .seconds(600))) == .wait(.seconds(1)))
        #expect(block.handle(.timePassed(now: t0)) == .reconnectNow)
        #expect(block.handle(linkLost(at: .seconds(1200))) == .wait(.seconds(2)))
        var noBuffer = linked(.degradeAfter(.seconds(1)), buffer: false)
        _ = noBuffer.handle(linkLost())
        _ = noBuffer.handle(.timePassed(now: t0))
        #expect(noBuffer.handle(linkLost(at: .seconds(600))) == .wait(.seconds(2)))
    }

    @Test func degradingWaitsForTheAllowedTimeSinceTheReceiverWasLost() {
        var s = linked(.degradeAfter(.seconds(10)), buffer: true)
        #expect(s.handle(linkLost(at: .zero)) == .wait(.seconds(1)))
        #expect(s.receiverLostAt == t0)
        _ = s.handle(.timePassed(now: t0 + .seconds(1)))
        #expect(s.handle(linkLost(at: .seconds(1))) == .wait(.seconds(2)))
        _ = s.handle(.timePassed(now: t0 + .seconds(3)))
        #expect(s.handle(linkLost(at: .seconds(3))) == .wait(.seconds(4)))
        _ = s.handle(.timePassed(now: t0 + .seconds(7)))
        // 3 s remain: they shorten the 8 s backoff.
        #expect(s.handle(linkLost(at: .seconds(7))) == .wait(.seconds(3)))
        _ = s.handle(.timePassed(now: t0 + .seconds(10) - .milliseconds(50)))
        // 50 ms remain: never less than 100 ms.
        #expect(s.handle(linkLost(at: .seconds(10) - .milliseconds(50))) == .wait(.milliseconds(100)))
        _ = s.handle(.timePassed(now: t0 + .seconds(10)))
        // Time is up: degrade, first probing after the current backoff (not grown by the attempt).
        #expect(s.handle(linkLost(at: .seconds(10))) == .enterDegraded(firstProbeAfter: .seconds(30)))
        #expect(s.state == .retrying(backoff: .seconds(30), stillDegraded: false))
        #expect(s.handle(.acknowledgingFromBuffer(now: t0 + .seconds(11))) == .none)
        #expect(s.state == .degraded(since: t0 + .seconds(11)))
        #expect(s.state.status.rawValue == "degraded")
    }

    @Test func aPostgreSQLFailureNeverDegradesNorStartsTheClock() {
        var s = linked(.degradeAfter(.seconds(1)), buffer: true)
        #expect(s.handle(.primaryLost(setUpMistake: nil, stillExposed: false, now: t0 + .seconds(60))) == .wait(.seconds(1)))
        #expect(s.receiverLostAt == nil)
    }

    @Test func theReceiverBackEndsDegradedModeWithAReconnectAndAGrownBackoff() {
        var s = linked(.degradeAfter(.seconds(1)), buffer: true)
        _ = s.handle(linkLost())
        _ = s.handle(.timePassed(now: t0 + .seconds(1)))
        #expect(s.handle(linkLost(at: .seconds(1))) == .enterDegraded(firstProbeAfter: .seconds(2)))
        _ = s.handle(.acknowledgingFromBuffer(now: t0 + .seconds(2)))
        #expect(s.handle(.receiverBack) == .reconnectNow)
        #expect(s.state == .connecting(.primary))
        #expect(s.backoff == .seconds(4))
        // The buffer is not shipped yet: a failing link shows degraded, and degrading is tried again at once.
        _ = s.handle(.connected)
        #expect(s.handle(linkLost(at: .seconds(3), exposed: true)) == .enterDegraded(firstProbeAfter: .seconds(4)))
        #expect(s.state.status.rawValue == "degraded")
        // Linked: the clock and the backoff start afresh.
        _ = s.handle(.degradeFailed(now: t0 + .seconds(4)))
        _ = s.handle(.timePassed(now: t0 + .seconds(4)))
        _ = s.handle(.connected)
        _ = s.handle(.linked)
        #expect(s.receiverLostAt == nil)
        #expect(s.handle(linkLost(at: .seconds(100), exposed: false)) == .wait(.seconds(1)))
        #expect(s.receiverLostAt == t0 + .seconds(100))
    }

    @Test func aRefusalWaitsAtMostFiveSecondsShowsRetryingUntilTheReceiverIsBack() {
        var s = linked(.degradeAfter(.seconds(1)), buffer: true, maxBackoff: .seconds(60))
        for _ in 0..<3 {
            _ = s.handle(linkLost())
            _ = s.handle(.timePassed(now: t0))
        }
        // backoff is 8 s by now
        #expect(s.handle(linkLost(at: .seconds(2), exposed: true)) == .enterDegraded(firstProbeAfter: .seconds(8)))
        #expect(s.state.status.rawValue == "degraded")
        #expect(s.handle(.degradeRefused) == .wait(.seconds(5)))
        #expect(s.state == .refusingToDegrade)
        #expect(s.state.status.rawValue == "retrying")
        #expect(s.degradingRefused)
        #expect(s.backoff == .seconds(16))
        #expect(s.handle(.timePassed(now: t0 + .seconds(7))) == .reconnectNow)
        // The exposure remains, yet commits wait: retrying, not degraded.
        #expect(s.handle(linkLost(at: .seconds(7), exposed: true)) == .enterDegraded(firstProbeAfter: .seconds(16)))
        #expect(s.state == .retrying(backoff: .seconds(16), stillDegraded: false))
        #expect(!s.degradingRefused, "each attempt to degrade asks again")
        #expect(s.handle(.degradeRefused) == .wait(.seconds(5)))
        _ = s.handle(.timePassed(now: t0 + .seconds(12)))
        // The receiver is back: streaming again forgets the refusal.
        _ = s.handle(.connected)
        _ = s.handle(.linked)
        #expect(s.state == .streaming)
        #expect(!s.degradingRefused)
        #expect(s.backoff == .seconds(1))
        #expect(s.handle(linkLost(at: .seconds(20), exposed: true)) == .wait(.seconds(1)))
        #expect(s.state == .retrying(backoff: .seconds(1), stillDegraded: true))
    }

    @Test func aFailedAttemptToDegradeRetriesAfterTheShortestWait() {
        var s = linked(.degradeAfter(.seconds(1)), buffer: true)
        _ = s.handle(linkLost())
        _ = s.handle(.timePassed(now: t0 + .seconds(1)))
        #expect(s.handle(linkLost(at: .seconds(1))) == .enterDegraded(firstProbeAfter: .seconds(2)))
        // It could not even reach the primary: the state stays what the lost link made it.
        #expect(s.handle(.degradeFailed(now: t0 + .seconds(2))) == .wait(.milliseconds(100)))
        #expect(s.state == .retrying(backoff: .milliseconds(100), stillDegraded: false))
        #expect(s.backoff == .seconds(4))
        #expect(s.handle(.timePassed(now: t0 + .seconds(3))) == .reconnectNow)
        // Degraded mode that fails after it began acknowledging still shows degraded.
        #expect(s.handle(linkLost(at: .seconds(3))) == .enterDegraded(firstProbeAfter: .seconds(4)))
        _ = s.handle(.acknowledgingFromBuffer(now: t0 + .seconds(4)))
        #expect(s.handle(.degradeFailed(now: t0 + .seconds(5))) == .wait(.milliseconds(100)))
        #expect(s.state == .retrying(backoff: .milliseconds(100), stillDegraded: true))
        #expect(s.state.status.rawValue == "degraded")
        #expect(s.backoff == .seconds(8))
    }

    @Test(arguments: [
        (SenderSupervisor.State.starting, "starting"), (.connecting(.primary), "connecting to primary"),
        (.connecting(.receiver), "connecting to receiver"), (.streaming, "streaming"),
        (.retrying(backoff: .seconds(1), stillDegraded: false), "retrying"),
        (.retrying(backoff: .seconds(1), stillDegraded: true), "degraded"),
        (.degraded(since: .now), "degraded"), (.refusingToDegrade, "retrying"), (.failed(reason: "x"), "failed"),
    ])
    func statusNamesAreTheContract(_ state: SenderSupervisor.State, _ name: String) {
        #expect(state.status.rawValue == name)
    }
}

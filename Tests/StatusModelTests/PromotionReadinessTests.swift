import Foundation
import Testing
import WALCore

@testable import StatusModel

@Suite struct PromotionReadinessTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let timeout = 30.0

    func facts(
        connected: Bool = false, lastFrameAgo: Double? = nil, heardAgo: Double? = 5, rule: ReceiverLossRule? = .block,
        verdict: SenderVerdictRecord? = nil, version: UInt16? = 2
    ) -> PrimaryContactFacts {
        PrimaryContactFacts(
            linkConnected: connected, linkLastFrameAt: lastFrameAgo.map { now.addingTimeInterval(-$0) },
            primaryLastHeardAt: heardAgo.map { now.addingTimeInterval(-$0) }, linkTimeoutSeconds: timeout,
            receiverLoss: rule, verdict: verdict, senderProtocolVersion: version)
    }

    func verdict(_ state: SenderVerdictRecord.State, heardAgo: Double? = 4, droppedAgo: Double? = 3) -> SenderVerdictRecord {
        SenderVerdictRecord(
            state: state, receivedAt: now.addingTimeInterval(-1),
            primaryLastHeardAt: heardAgo.map { now.addingTimeInterval(-$0) },
            droppedAt: droppedAgo.map { now.addingTimeInterval(-$0) })
    }

    @Test(arguments: [ReceiverLossRule.block, .asynchronous, .degradeAfter(seconds: 10), nil])
    func aLinkThatBringsFramesIsNeverReady(rule: ReceiverLossRule?) {
        for state in SenderVerdictRecord.State.allCases {
            let result = PromotionReadiness.evaluate(
                facts(connected: true, lastFrameAgo: 1, rule: rule, verdict: verdict(state)), now: now)
            #expect(!result.ready)
            #expect(result.reason.contains("sender linked"))
            #expect(result.reason.contains(formatISO8601(now.addingTimeInterval(-4))), "the latest contact is named")
        }
        #expect(!PromotionReadiness.evaluate(facts(connected: true, lastFrameAgo: nil), now: now).ready)
    }

    @Test(arguments: [ReceiverLossRule.block, .asynchronous, .degradeAfter(seconds: 10), nil])
    func theSendersLostVerdictMakesItReadyAtOnce(rule: ReceiverLossRule?) {
        let result = PromotionReadiness.evaluate(facts(heardAgo: 3, rule: rule, verdict: verdict(.lost)), now: now)
        #expect(result.ready)
        #expect(
            result.summary.hasPrefix(
                "ready: the sender reports the primary lost since \(formatISO8601(now.addingTimeInterval(-3)))"))
        #expect(result.readyAt == nil)
    }

    @Test func aLinkSilentPastTheTimeoutIsJudgedAsSilence() {
        let stillRegistered = facts(connected: true, lastFrameAgo: 31, heardAgo: 31, verdict: verdict(.lost))
        #expect(PromotionReadiness.evaluate(stillRegistered, now: now).ready)
        let silent = facts(connected: true, lastFrameAgo: 31, heardAgo: 31)
        #expect(PromotionReadiness.evaluate(silent, now: now).ready)
    }

    @Test(arguments: [ReceiverLossRule.block, .asynchronous, .degradeAfter(seconds: 10), nil])
    func aStoppedSenderIsNeverReadyByWaiting(rule: ReceiverLossRule?) {
        let result = PromotionReadiness.evaluate(
            facts(heardAgo: 3_600, rule: rule, verdict: verdict(.senderStopped, heardAgo: 3_600, droppedAgo: nil)), now: now)
        #expect(!result.ready)
        #expect(result.readyAt == nil)
        #expect(result.reason.contains("walship send stopped"))
    }

    @Test(arguments: [ReceiverLossRule.block, .asynchronous, nil])
    func silenceIsReadyOnceTheLinkTimeoutPassedSinceLastHeard(rule: ReceiverLossRule?) {
        let early = PromotionReadiness.evaluate(facts(heardAgo: 29, rule: rule), now: now)
        #expect(!early.ready)
        #expect(early.readyAt == now.addingTimeInterval(1))
        #expect(early.reason.contains("ready at \(formatISO8601(now.addingTimeInterval(1)))"))
        let late = PromotionReadiness.evaluate(facts(heardAgo: 30, rule: rule), now: now)
        #expect(late.ready)
        #expect(late.reason.hasPrefix("the link is silent: the primary was last heard at"))
    }

    @Test func aVerdictThatThePrimaryAnswersMovesTheSilenceClock() {
        // The stream link is down (a primary crash-restarting refuses replication), but the sender heard it 1 s ago.
        let alive = PromotionReadiness.evaluate(
            facts(heardAgo: 40, verdict: verdict(.alive, heardAgo: 1, droppedAgo: nil)), now: now)
        #expect(!alive.ready)
        #expect(alive.readyAt == now.addingTimeInterval(29))
        // Dropped 3 s ago, not yet decided: the sender's last contact still counts.
        let unanswered = PromotionReadiness.evaluate(
            facts(heardAgo: 40, verdict: verdict(.unanswered, heardAgo: 3, droppedAgo: 3)), now: now)
        #expect(!unanswered.ready)
        #expect(unanswered.reason.contains("still deciding"))
        // An old verdict does not hide a later contact of the stream link.
        let older = PromotionReadiness.evaluate(
            facts(heardAgo: 2, verdict: verdict(.alive, heardAgo: 50, droppedAgo: nil)), now: now)
        #expect(older.readyAt == now.addingTimeInterval(28))
    }

    @Test func underDegradeAfterSilenceIsNeverReady() {
        for heardAgo in [1.0, 9, 10, 29, 30, 3_600] {
            let result = PromotionReadiness.evaluate(facts(heardAgo: heardAgo, rule: .degradeAfter(seconds: 10)), now: now)
            #expect(!result.ready)
            #expect(result.readyAt == nil)
            let from = now.addingTimeInterval(10 - heardAgo)
            #expect(
                result.reason.hasPrefix(
                    "the primary may be acknowledging locally \(from > now ? "from" : "since") \(formatISO8601(from))"))
        }
    }

    @Test func aVersion1SenderRestsOnSilenceAndSaysSo() {
        let result = PromotionReadiness.evaluate(facts(heardAgo: 31, rule: nil, version: 1), now: now)
        #expect(result.ready)
        #expect(result.reason.contains("protocol version 1"))
        #expect(!PromotionReadiness.evaluate(facts(heardAgo: 29, rule: nil, version: 1), now: now).ready)
    }

    @Test func nothingHeardIsNotReady() {
        let result = PromotionReadiness.evaluate(facts(heardAgo: nil), now: now)
        #expect(!result.ready)
        #expect(result.readyAt == nil)
        #expect(PromotionReadiness.evaluate(facts(heardAgo: nil, verdict: verdict(.lost, heardAgo: nil)), now: now).ready)
    }

    @Test func roundTripsThroughJSON() throws {
        let result = PromotionReadiness(ready: false, reason: "why", readyAt: now)
        let data = try StatusDocument.encoder().encode(result)
        #expect(try StatusDocument.decoder().decode(PromotionReadiness.self, from: data) == result)
        #expect(
            ReceiverLossRule(description: ReceiverLossRule.degradeAfter(seconds: 2.5).description) == .degradeAfter(seconds: 2.5))
        #expect(ReceiverLossRule(description: "degrade-after 30 s") == .degradeAfter(seconds: 30))
        #expect(ReceiverLossRule(description: "none") == .asynchronous)
        #expect(ReceiverLossRule(description: "block") == .block)
        #expect(ReceiverLossRule(description: "sometimes") == nil)
    }
}

import Foundation
import Spool
import StatusModel
import Testing
import WALCore

@testable import Operations

@Suite struct PromotionInterlockTests {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func report(heardAgo: Double, verdict: SenderVerdictRecord? = nil, connected: Bool = false) -> ReadinessReport {
        ReadinessReport.assess(
            systemIdentifier: "7", source: "receiver", now: now, linkConnected: connected, linkLastFrameAt: nil,
            linkSilentSince: nil, primaryLastHeardAt: now.addingTimeInterval(-heardAgo), linkTimeoutSeconds: 30,
            receiverLoss: "block", senderProtocolVersion: 2, verdict: verdict, mode: "sync", modeSince: nil)
    }

    func outcome(_ readiness: ReadinessReport, force: Bool = false) -> PreconditionOutcome {
        let spool = PromotionFacts.MatchingSpool(
            systemDirectory: "/spool/7", standbyListen: "127.0.0.1:7010", fencedAt: nil, fenceUnwritable: nil,
            readiness: readiness)
        let facts = PromotionFacts(
            inRecovery: true, systemIdentifier: 7, primaryConninfo: "host=127.0.0.1 port=7010", restoreCommand: "",
            hostName: "dr", spool: .matching(spool))
        return PromotionPrecondition.evaluate(PromotionPrecondition.spool, facts: facts, force: force)
    }

    @Test func aLinkedPrimaryRefusesThePromotionWithTheWaysOut() {
        let refused = outcome(report(heardAgo: 1, connected: true))
        let refusal = try? #require(refused.refusal)
        #expect(
            refusal?.hasPrefix(
                "the old primary may still be alive: the DR site last heard it at \(formatISO8601(now.addingTimeInterval(-1)))")
                == true)
        #expect(refusal?.contains("stop or fence the old primary") == true)
        #expect(refusal?.contains("--force if you are sure it is gone") == true)
        #expect(refusal?.contains("wait until") == false, "no wait helps while the sender streams")
        #expect(
            refused.checks.last
                == .init(name: "primary lost", passed: false, detail: report(heardAgo: 1, connected: true).verdict))
    }

    @Test func aSilentLinkNamesTheMomentItBecomesReady() {
        let refusal = outcome(report(heardAgo: 10)).refusal
        #expect(refusal?.contains("wait until \(formatISO8601(now.addingTimeInterval(20)))") == true)
    }

    @Test func forceOverridesAndALostPrimaryPasses() {
        let forced = outcome(report(heardAgo: 1, connected: true), force: true)
        #expect(forced.refusal == nil)
        #expect(forced.checks.contains { $0.name == "primary lost" && !$0.passed })
        let lost = SenderVerdictRecord(
            state: .lost, receivedAt: now, primaryLastHeardAt: now.addingTimeInterval(-3), droppedAt: now.addingTimeInterval(-2.5)
        )
        let passed = outcome(report(heardAgo: 3, verdict: lost))
        #expect(passed.refusal == nil)
        #expect(
            passed.checks.contains {
                $0.name == "primary lost" && $0.passed && $0.detail.hasPrefix("ready: the sender reports the primary lost")
            })
    }

    @Test func withoutAReceiverPrimaryJsonDecidesBySilence() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("walship-readiness-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func record(heardAgo: Double?) throws {
            try PrimaryProgressRecord(
                primaryLSN: "0/3000000", primaryTime: now, timeline: 1, acknowledgedLSN: "0/3000000", acknowledgedAt: now,
                senderName: "s", synchronous: true, updatedAt: now.addingTimeInterval(-5),
                primaryLastHeardAt: heardAgo.map { now.addingTimeInterval(-$0) }, linkTimeoutSeconds: 8
            ).save(systemDirectory: directory)
        }
        try record(heardAgo: 5)
        let early = ReadinessQuery.ask(systemDirectory: directory, systemIdentifier: 7, now: now)
        #expect(!early.ready)
        #expect(early.source == "primary.json")
        #expect(early.readyAt == now.addingTimeInterval(3))
        #expect(early.reason.hasPrefix("walship receive does not answer on \(directory)/control.sock"))
        #expect(early.verdict.hasPrefix("not ready: walship receive does not answer"))
        try record(heardAgo: 9)
        #expect(ReadinessQuery.ask(systemDirectory: directory, systemIdentifier: 7, now: now).ready)
        // A primary.json written before the key: when it was written stands in for the last contact.
        try record(heardAgo: nil)
        #expect(
            ReadinessQuery.ask(systemDirectory: directory, systemIdentifier: 7, now: now).readyAt == now.addingTimeInterval(3))
    }
}

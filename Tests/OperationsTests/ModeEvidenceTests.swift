import Foundation
import Spool
import StatusModel
import Testing

@testable import Operations

@Suite struct ModeEvidenceTests {
    /// Each mode entry carries the receiver-loss rule of the link it came on; a link of a version 1 sender is an
    /// entry of its own, with the mode unknown.
    @Test func entriesCarryTheRuleOfTheirLink() {
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        let entries = [
            ModeHistoryEntry(event: .link, mode: nil, at: t, receiverLoss: "block", protocolVersion: 2, recordedAt: t),
            ModeHistoryEntry(event: .mode, mode: .sync, at: t + 1, lsn: "0/3000000", syncState: "sync", recordedAt: t),
            ModeHistoryEntry(event: .link, mode: .unknown, at: t + 2, protocolVersion: 1, recordedAt: t),
            ModeHistoryEntry(event: .link, mode: nil, at: t + 3, receiverLoss: "degrade-after 30 s", recordedAt: t),
            ModeHistoryEntry(event: .mode, mode: .degraded, at: t + 4, exposureBytes: 10, recordedAt: t),
        ]
        let episodes = modeEpisodes(entries)
        #expect(episodes.map(\.mode) == ["sync", "unknown", "degraded"])
        #expect(episodes.map(\.receiverLoss) == ["block", nil, "degrade-after 30 s"])
        #expect(episodes[2].exposureBytes == 10)
    }

    @Test func anUnreadableHistoryClaimsNothing() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("mode-evidence-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory + "/audit.log", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var report = PromotionReport(kind: "promote", host: "dr", startedAt: Date(), dataDirectory: "/dr")
        report.lastReplayedLSN = "0/3000000"
        report.spoolEndLSN = "0/3000000"
        report.measureRecoveryPoint()
        report.judgeLoss(systemDirectory: directory, promotedAt: Date())
        #expect(report.modeAtLoss == "unknown" && report.everyAcknowledgedCommitPresent == false)
        #expect(report.checks.contains { $0.name == "mode history read" && !$0.passed })
    }
}

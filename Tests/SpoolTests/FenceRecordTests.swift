import Foundation
import Testing
import WALCore

@testable import Spool

@Suite struct FenceRecordTests {
    let history = "1\t0/5000060\tno recovery target specified\n"

    func directory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fence-\(UUID())").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func aRecordOfAnOlderReleaseStillReadsAndRefusesEverything() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old =
            #"{"by":"walship promote --pgdata /dr","promotedAt":"2026-12-01T10:00:00Z","promotedTimeline":2,"replayedLSN":"0/5000060"}"#
        try Data(old.utf8).write(to: URL(fileURLWithPath: FenceRecord.path(dir)))
        let record = try #require(try FenceRecord.load(systemDirectory: dir))
        #expect(record.promotedTimeline == 2)
        #expect(record.timelineHistory == nil && record.switchPoint == nil && record.parentTimeline == nil)
        #expect(record.lineage == nil)
    }

    @Test func thePromotionRecordsTheTimelineItsParentAndSwitchPointAndSurvivesARoundTrip() throws {
        let dir = try directory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var record = FenceRecord(
            promotedAt: Date(timeIntervalSince1970: 1_800_000_000), promotedTimeline: nil, replayedLSN: "0/5000060", by: "test")
        #expect(record.lineage == nil)
        try record.recordPromotion(timeline: 2, historyFile: history)
        #expect(record.promotedTimeline == 2 && record.parentTimeline == 1 && record.switchPoint == "0/5000060")
        try record.save(systemDirectory: dir)
        let loaded = try #require(try FenceRecord.load(systemDirectory: dir))
        #expect(loaded == record)
        let lineage = try #require(loaded.lineage)
        #expect(lineage.timeline == 2 && lineage.fencedTimeline == 1 && lineage.switchPoint == LSN("0/5000060")!)
    }

    @Test func aHistoryThatIsNotThePromotedTimelinesLeavesTheRecordAsItWas() {
        var record = FenceRecord(promotedAt: Date(), promotedTimeline: 2, replayedLSN: nil, by: "test")
        let before = record
        #expect(throws: (any Error).self) { try record.recordPromotion(timeline: 2, historyFile: "") }
        #expect(throws: (any Error).self) { try record.recordPromotion(timeline: 1, historyFile: history) }
        #expect(throws: (any Error).self) { try record.recordPromotion(timeline: 2, historyFile: "not a history") }
        #expect(record == before)
    }

    @Test func fieldsThatContradictTheHistoryLeaveNoLineage() throws {
        var record = FenceRecord(promotedAt: Date(), promotedTimeline: nil, replayedLSN: nil, by: "test")
        try record.recordPromotion(timeline: 2, historyFile: history)
        var otherPoint = record
        otherPoint.switchPoint = "0/4000000"
        #expect(otherPoint.lineage == nil)
        var otherParent = record
        otherParent.parentTimeline = 3
        #expect(otherParent.lineage == nil)
        var otherTimeline = record
        otherTimeline.promotedTimeline = 1
        #expect(otherTimeline.lineage == nil)
        var damaged = record
        damaged.timelineHistory = "garbage"
        #expect(damaged.lineage == nil)
    }
}

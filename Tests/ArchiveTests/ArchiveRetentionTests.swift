import Foundation
import Testing
import WALCore

@testable import Archive

@Suite struct ArchiveRetentionTests {
    static let size = WALSegmentSize(bytes: 16 << 20)!
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let day = 86_400.0

    /// A backup starting in segment `startSegment` (its start LSN a little into it), taken `daysAgo` days ago.
    static func backup(_ id: String, startSegment: UInt64, daysAgo: Double) -> ArchivedBackup {
        let start = LSN(startSegment * size.bytes + 0x28)
        return ArchivedBackup(
            id: id, start: start, stop: LSN(start.rawValue + (1 << 20)), createdAt: now.addingTimeInterval(-daysAgo * day),
            paths: ["base/\(id)/base.tar.lz4", "base/\(id)/backup_manifest", "base/\(id)/backup.json"])
    }

    static func segment(_ number: UInt64, timeline: TimeLineID = 1) -> String {
        SegmentName(timeline: timeline, number: number, segmentSize: size).description + ".lz4"
    }

    static func plan(
        _ policy: ArchiveRetentionPolicy, _ backups: [ArchivedBackup], _ wal: [String]
    ) -> ArchiveRetentionPlan {
        ArchiveRetentionPlan.make(policy: policy, backups: backups, walFiles: wal, segmentSize: size, now: now)
    }

    static let wal = (1...20).map { segment(UInt64($0)) }

    @Test func nothingGoesWithoutACompleteBackup() {
        let plan = Self.plan(.init(days: 1, backups: 1), [], Self.wal)
        #expect(plan.deletions.isEmpty)
        #expect(plan.nothingBecause?.contains("no complete backup") == true)
    }

    @Test func nothingGoesWithoutAPolicy() {
        let plan = Self.plan(.init(), [Self.backup("a", startSegment: 5, daysAgo: 30)], Self.wal)
        #expect(plan.deletions.isEmpty)
    }

    @Test func aCountKeepsTheNewestBackupsAndTheWALFromTheOldestKeptStart() {
        let backups = [
            Self.backup("a", startSegment: 3, daysAgo: 30), Self.backup("b", startSegment: 8, daysAgo: 20),
            Self.backup("c", startSegment: 14, daysAgo: 10),
        ]
        let plan = Self.plan(.init(backups: 2), backups, Self.wal + ["00000002.history"])
        #expect(plan.keptBackups == ["c", "b"])
        #expect(plan.removedBackups.map(\.id) == ["a"])
        // The record first, then the rest of backup a; then segments 1…7 (b starts in segment 8).
        #expect(
            plan.deletions
                == ["base/a/backup.json", "base/a/backup_manifest", "base/a/base.tar.lz4"]
                + (1...7).map { "wal/" + Self.segment(UInt64($0)) })
        #expect(!plan.deletions.contains("wal/" + Self.segment(8)))
        #expect(!plan.deletions.contains { $0.hasSuffix(".history") })
    }

    @Test func aWindowKeepsTheBackupBeforeItsStart() {
        let backups = [
            Self.backup("a", startSegment: 3, daysAgo: 30), Self.backup("b", startSegment: 8, daysAgo: 20),
            Self.backup("c", startSegment: 14, daysAgo: 10), Self.backup("d", startSegment: 18, daysAgo: 2),
        ]
        // A 14-day window: c and d are in it; b (20 days ago) is what a recovery to 14 days ago starts from.
        let plan = Self.plan(.init(days: 14), backups, Self.wal)
        #expect(plan.keptBackups == ["d", "c", "b"])
        #expect(plan.removedBackups.map(\.id) == ["a"])
        #expect(plan.deletions.filter { $0.hasPrefix("wal/") } == (1...7).map { "wal/" + Self.segment(UInt64($0)) })
    }

    @Test func bothRulesKeepWhatEitherKeeps() {
        let backups = [
            Self.backup("a", startSegment: 3, daysAgo: 30), Self.backup("b", startSegment: 8, daysAgo: 20),
            Self.backup("c", startSegment: 14, daysAgo: 10),
        ]
        // All three stay by count; only the WAL before the oldest one's start goes.
        let byCount = Self.plan(.init(days: 1, backups: 3), backups, Self.wal)
        #expect(byCount.removedBackups.isEmpty)
        #expect(byCount.deletions == ["wal/" + Self.segment(1), "wal/" + Self.segment(2)])
        #expect(Self.plan(.init(days: 25, backups: 1), backups, Self.wal).keptBackups == ["c", "b", "a"])
    }

    @Test func theNewestBackupIsAlwaysKept() {
        let backups = [Self.backup("a", startSegment: 3, daysAgo: 300), Self.backup("b", startSegment: 8, daysAgo: 200)]
        let byDays = Self.plan(.init(days: 1), backups, Self.wal)
        #expect(byDays.keptBackups == ["b"])
        let byZero = Self.plan(.init(backups: 0), backups, Self.wal)
        #expect(byZero.keptBackups == ["b"])
    }

    @Test func neverTheWALAKeptBackupNeeds() {
        // Backups out of start order (a later one restored from an older base is not how it goes, but the id and time
        // need not follow the LSN): the WAL kept starts at the smallest start among the kept.
        let backups = [
            Self.backup("old", startSegment: 2, daysAgo: 40), Self.backup("x", startSegment: 9, daysAgo: 5),
            Self.backup("y", startSegment: 6, daysAgo: 1),
        ]
        let plan = Self.plan(.init(backups: 2), backups, Self.wal)
        #expect(plan.keptBackups == ["y", "x"])
        let walGone = Set(plan.deletions.filter { $0.hasPrefix("wal/") })
        #expect(walGone == Set((1...5).map { "wal/" + Self.segment(UInt64($0)) }))
        for kept in backups where plan.keptBackups.contains(kept.id) {
            let first = Self.size.segmentNumber(of: kept.start)
            let last = Self.size.segmentNumber(of: kept.stop)
            for number in first...last { #expect(!walGone.contains("wal/" + Self.segment(number))) }
        }
    }

    @Test func everyTimelineIsCutAtTheSameLSNAndHistoryFilesStay() {
        // Timeline 2 began in segment 10; the kept backup is on timeline 2 from segment 12.
        let wal =
            (1...11).map { Self.segment(UInt64($0)) } + (10...15).map { Self.segment(UInt64($0), timeline: 2) }
            + ["00000002.history", "00000003.history"]
        let backups = [Self.backup("a", startSegment: 4, daysAgo: 9), Self.backup("b", startSegment: 12, daysAgo: 1)]
        let plan = Self.plan(.init(backups: 1), backups, wal)
        let walGone = plan.deletions.filter { $0.hasPrefix("wal/") }
        #expect(
            walGone
                == (1...9).map { "wal/" + Self.segment(UInt64($0)) } + [
                    "wal/" + Self.segment(10), "wal/" + Self.segment(10, timeline: 2), "wal/" + Self.segment(11),
                    "wal/" + Self.segment(11, timeline: 2),
                ])
        #expect(!walGone.contains { $0.contains("history") })
        #expect(!walGone.contains("wal/" + Self.segment(12, timeline: 2)))
    }

    @Test func namesThatAreNotSegmentsStay() {
        let plan = Self.plan(
            .init(backups: 1), [Self.backup("a", startSegment: 9, daysAgo: 1)], ["garbage.lz4", Self.segment(1), "x"])
        #expect(plan.deletions == ["wal/" + Self.segment(1)])
    }

    @Test func aBackupWhoseRecordTheStoreKeepsKeepsItsWAL() {
        let backups = [
            Self.backup("a", startSegment: 3, daysAgo: 30), Self.backup("b", startSegment: 8, daysAgo: 20),
            Self.backup("c", startSegment: 14, daysAgo: 10),
        ]
        let plan = Self.plan(.init(backups: 1), backups, Self.wal)
        #expect(plan.walDeletions == (1...13).map { "wal/" + Self.segment(UInt64($0)) })
        // The store refused to delete b's record (object lock): b still counts, and so does its WAL from segment 8.
        let held = plan.walDeletions(sparing: [backups[1]], segmentSize: Self.size)
        #expect(held == (1...7).map { "wal/" + Self.segment(UInt64($0)) })
        #expect(plan.walDeletions(sparing: [], segmentSize: Self.size) == plan.walDeletions)
    }

    @Test func refusalsAreTheLockAndPolicyCodes() {
        #expect(ArchiveRetentionPlan.isRefusal(code: "AccessDenied"))
        #expect(ArchiveRetentionPlan.isRefusal(code: "ObjectLocked"))
        #expect(ArchiveRetentionPlan.isRefusal(code: "InvalidRequest"))
        #expect(!ArchiveRetentionPlan.isRefusal(code: "SlowDown"))
        #expect(!ArchiveRetentionPlan.isRefusal(code: nil))
    }
}

import Foundation
import Logging
import Testing
import WALCore
import WALTestSupport

@testable import Spool

@Suite struct RetentionPlanTests {
    let size = WALSegmentSize.default

    func backup(_ id: String, start: String, status: BackupInfo.Status = .complete) -> BackupInfo {
        BackupInfo(
            id: id, label: "", systemIdentifier: "1", createdAt: Date(), startLSN: start, stopLSN: start, timeline: 1,
            archiveBytes: 0, archiveCRC32C: "0", storedBytes: 0, status: status)
    }

    var segments: [SegmentName] { (1...12).map { SegmentName(timeline: 1, number: UInt64($0), segmentSize: size) } }

    @Test func nothingIsPrunedWithoutACompleteBackup() {
        let plan = RetentionPlan.compute(
            backups: [backup("b1", start: "0/5000028", status: .waitingForWAL)], segments: segments,
            standbys: [], retainBackups: 2, segmentSize: size)
        #expect(plan.removeSegments.isEmpty && plan.removeBackups.isEmpty && plan.keepFrom == nil)
    }

    @Test func keepsTheNewestBackupsAndTheirWAL() {
        let backups = [backup("b1", start: "0/3000028"), backup("b2", start: "0/6000028"), backup("b3", start: "0/9000028")]
        let plan = RetentionPlan.compute(backups: backups, segments: segments, standbys: [], retainBackups: 2, segmentSize: size)
        #expect(plan.removeBackups == ["b1"])
        #expect(plan.keepFrom == LSN("0/6000000")!)
        #expect(plan.removeSegments.map(\.number) == [1, 2, 3, 4, 5])
    }

    @Test func whatTheArchiveHasNotConfirmedIsKept() {
        let backups = [backup("b1", start: "0/3000028"), backup("b2", start: "0/6000028"), backup("b3", start: "0/9000028")]
        let all = Set(segments.map { "\($0).lz4" })
        // Segment 4 and backup b1 are not in the object store yet: WAL from 4 on and b1 stay.
        let held = RetentionPlan.compute(
            backups: backups, segments: segments, standbys: [], retainBackups: 2, segmentSize: size,
            archiveHold: .allBut(
                archivedSegments: all.subtracting(["\(segments[3]).lz4", "\(segments[10]).lz4"]),
                archivedBackups: ["b2", "b3"]))
        #expect(held.removeBackups.isEmpty)
        #expect(held.keepFrom == LSN("0/4000000")!)
        #expect(held.removeSegments.map(\.number) == [1, 2, 3])
        #expect(held.reasons.contains { $0.contains("not in the object store yet") })
        // Everything archived: the plan is retention's own.
        let archived = RetentionPlan.compute(
            backups: backups, segments: segments, standbys: [], retainBackups: 2, segmentSize: size,
            archiveHold: .allBut(archivedSegments: all, archivedBackups: ["b1", "b2", "b3"]))
        #expect(archived.removeBackups == ["b1"])
        #expect(archived.removeSegments.map(\.number) == [1, 2, 3, 4, 5])
        // A segment the archiver has not seen yet (it completed during a long upload) is no more archived than one
        // it lists as waiting: segment 2 and what follows stay.
        let unseen = RetentionPlan.compute(
            backups: backups, segments: segments, standbys: [], retainBackups: 2, segmentSize: size,
            archiveHold: .allBut(archivedSegments: ["\(segments[0]).lz4"], archivedBackups: ["b1", "b2", "b3"]))
        #expect(unseen.removeSegments.map(\.number) == [1])
        #expect(unseen.keepFrom == LSN("0/2000000")!)
        // Before the archiver has read the store: nothing goes.
        let unknown = RetentionPlan.compute(
            backups: backups, segments: segments, standbys: [], retainBackups: 2, segmentSize: size, archiveHold: .everything)
        #expect(unknown.removeBackups.isEmpty && unknown.removeSegments.isEmpty && unknown.keepFrom == nil)
    }

    @Test func aStandbyBehindHoldsItsWAL() {
        let backups = [backup("b1", start: "0/3000028"), backup("b2", start: "0/9000028")]
        let slow = StandbyRecord(name: "dr", viaSlot: true, replayedLSN: LSN("0/4123456")!, updatedAt: Date())
        let plan = RetentionPlan.compute(
            backups: backups, segments: segments, standbys: [slow], retainBackups: 1, segmentSize: size)
        #expect(plan.removeBackups == ["b1"])
        #expect(plan.keepFrom == LSN("0/4000000")!)
        #expect(plan.removeSegments.map(\.number) == [1, 2, 3])
        #expect(plan.reasons.contains { $0.contains("standby dr") })
    }

    let now = Date(timeIntervalSince1970: 1_800_000_000)
    let day = 86_400.0

    func stored(_ id: String, start: String, daysAgo: Double, status: BackupInfo.Status = .complete) -> BackupInfo {
        var info = backup(id, start: start, status: status)
        info.createdAt = now.addingTimeInterval(-daysAgo * day)
        return info
    }

    /// Backups stored 10, 6 and 1 days ago, starting in segments 3, 6 and 9.
    var week: [BackupInfo] {
        [
            stored("b1", start: "0/3000028", daysAgo: 10), stored("b2", start: "0/6000028", daysAgo: 6),
            stored("b3", start: "0/9000028", daysAgo: 1),
        ]
    }

    func plan(
        retainBackups: Int = 1, days: Double?, backups: [BackupInfo]? = nil, standbys: [StandbyRecord] = []
    ) -> RetentionPlan {
        RetentionPlan.compute(
            backups: backups ?? week, segments: segments, standbys: standbys, retainBackups: retainBackups, segmentSize: size,
            recoveryWindow: days.map { $0 * day }, now: now)
    }

    /// A window reaching back to a time between two backups keeps the older one: a restore to that time starts there.
    @Test func aRecoveryWindowKeepsTheNewestBackupStoredBeforeItAndEveryOneAfter() {
        // Five days back lies between b2 (6 days ago) and b3: a restore to then starts from b2.
        let five = plan(days: 5)
        #expect(five.removeBackups == ["b1"])
        #expect(five.keepFrom == LSN("0/6000000")!)
        #expect(five.removeSegments.map(\.number) == [1, 2, 3, 4, 5])
        #expect(five.reasons.contains { $0.contains("recovery window of 5 days") && $0.contains("b2") }, "\(five.reasons)")
        // Seven days back lies before b2: b1 is needed.
        #expect(plan(days: 7).removeBackups.isEmpty && plan(days: 7).keepFrom == LSN("0/3000000")!)
        let eleven = plan(days: 11)
        #expect(eleven.removeBackups.isEmpty && eleven.keepFrom == LSN("0/3000000")!, "\(eleven.reasons)")
        #expect(eleven.reasons.contains { $0.contains("no backup is that old") })
        // Exactly at a backup's time: that backup can be restored to its own end.
        #expect(plan(days: 6).removeBackups == ["b1"])
        // A window shorter than the newest backup's age needs only that one.
        #expect(plan(days: 0.5).removeBackups == ["b1", "b2"])
        #expect(plan(days: 0.5).keepFrom == LSN("0/9000000")!)
    }

    @Test func retainBackupsStaysTheFloorUnderAWindow() {
        #expect(plan(retainBackups: 2, days: 0.5).removeBackups == ["b1"])
        #expect(plan(retainBackups: 3, days: 0.5).removeBackups.isEmpty)
        // Without a window the count alone decides, as before.
        #expect(plan(retainBackups: 1, days: nil).removeBackups == ["b1", "b2"])
    }

    @Test func aWindowNeverDropsWALAStandbyNeedsNorCountsIncompleteBackups() {
        let slow = StandbyRecord(name: "dr", viaSlot: true, replayedLSN: LSN("0/4123456")!, updatedAt: now)
        let held = plan(days: 5, standbys: [slow])
        #expect(held.removeBackups == ["b1"] && held.keepFrom == LSN("0/4000000")!)
        // A backup stored before the window but never completed cannot be restored from: the complete one before it is kept.
        let unfinished = [
            stored("b1", start: "0/3000028", daysAgo: 10), stored("b2", start: "0/6000028", daysAgo: 8, status: .waitingForWAL),
            stored("b3", start: "0/9000028", daysAgo: 1),
        ]
        let planned = plan(days: 7, backups: unfinished)
        // (b2, stored 8 days ago, would otherwise be the base for a 7-day window.)
        #expect(planned.removeBackups.isEmpty && planned.keepFrom == LSN("0/3000000")!, "\(planned.reasons)")
    }

    @Test func prunerRemovesFilesAndStandbyRecordsPersist() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let tSize = TestWAL.size
        for n in 1...4 { try append(system, TestWAL.segment(UInt64(n)), at: tSize.startLSN(ofSegment: UInt64(n))) }
        try system.sync()
        for (id, start) in [("b1", tSize.startLSN(ofSegment: 1)), ("b2", tSize.startLSN(ofSegment: 3))] {
            let dir = system.directory + "/base/" + id
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try BackupCatalog.write(backup(id, start: start.description), to: dir)
        }
        try StandbyRegistry.save(
            StandbyRecord(
                name: "dr", viaSlot: false, replayedLSN: tSize.startLSN(ofSegment: 2).advanced(by: 10),
                updatedAt: Date()), systemDirectory: system.directory)
        #expect(try StandbyRegistry.list(systemDirectory: system.directory).first?.name == "dr")
        let dry = try Pruner.prune(systemDirectory: system.directory, segmentSize: tSize, retainBackups: 1, dryRun: true)
        #expect(dry.removeSegments.map(\.number) == [1])
        #expect(try temp.files().contains("000000010000000000000001.lz4"))
        _ = try Pruner.prune(systemDirectory: system.directory, segmentSize: tSize, retainBackups: 1, dryRun: false)
        #expect(
            try temp.files() == ["000000010000000000000002.lz4", "000000010000000000000003.lz4", "000000010000000000000004.lz4"])
        #expect(try BackupCatalog.list(systemDirectory: system.directory).map(\.id) == ["b2"])
    }
}

/// `walship prune` takes the receiver's spool lock, so the two never remove or write files side by side.
@Suite struct SpoolMaintenanceLockTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test func pruneAndAReceiverExcludeEachOther() throws {
        let memory = InMemoryFileSystem()
        try memory.mkdir("/spool", mode: 0o750)
        var receiver: Spool? = try Spool(root: "/spool", logger: logger, fileSystem: memory)
        #expect {
            try SpoolMaintenanceLock(root: "/spool", fileSystem: memory)
        } throws: { error in
            let text = "\(error)"
            return (error as? SpoolError)?.kind == .locked && text.contains("in use by a running walship receive")
                && text.contains("--dry-run reads without the lock")
        }
        receiver = nil
        _ = receiver
        var prune: SpoolMaintenanceLock? = try SpoolMaintenanceLock(root: "/spool", fileSystem: memory)
        #expect(throws: SpoolError.self) { try Spool(root: "/spool", logger: logger, fileSystem: memory) }
        prune = nil
        _ = prune
        _ = try Spool(root: "/spool", logger: logger, fileSystem: memory)
    }

    @Test func aMissingSpoolIsNamed() {
        #expect {
            try SpoolMaintenanceLock(root: "/nowhere", fileSystem: InMemoryFileSystem())
        } throws: { "\($0)".contains("spool directory \"/nowhere\" does not exist") }
    }
}

import Foundation
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

import Foundation
import Logging
import Synchronization
import Testing
import WALCore
import WALTestSupport

@testable import Spool

#if canImport(Glibc)
import Glibc
#endif

/// A spool on the in-memory file system, which can fail calls and lose what was not fsynced.
final class MemorySpool {
    let fs = InMemoryFileSystem()
    let root = "/spool"
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    var spool: Spool?

    var systemDirectory: String { root + "/\(TestWAL.sysid)" }
    var walDirectory: String { systemDirectory + "/wal" }

    /// Opens the spool and its system as a receiver starting up would, closing any earlier one first.
    func open() throws -> SystemSpool {
        spool = nil
        let spool = try Spool(root: root, logger: logger, fileSystem: fs)
        self.spool = spool
        return try spool.system(TestWAL.sysid, segmentSize: TestWAL.size)
    }

    /// The machine loses power; what was open is gone.
    func crash() {
        spool = nil
        fs.crash()
    }

    func files() throws -> [String] {
        try fs.list(walDirectory).filter { !$0.hasSuffix(".tmp") }.sorted()
    }
}

/// A segment of timeline `timeline` whose pages after the first claim that timeline, as PostgreSQL writes the
/// first segment of a new timeline (its first page keeps the parent's).
func childTimelineSegment(_ number: UInt64, count: Int, timeline: UInt8 = 2) -> [UInt8] {
    var bytes = TestWAL.segment(number, count: count)
    var page = 8192
    while page < count {
        bytes[page + 4] = timeline
        page += 8192
    }
    return bytes
}

@Suite struct SpoolEndTests {
    let size = TestWAL.size

    @Test func theNewestTimelineWinsWhateverTheSegmentNumbers() {
        let names = [
            "000000010000000000000005.lz4", "000000010000000000000006.lz4", "000000010000000000000007.partial",
            "00000002.history", "000000020000000000000003.partial", "000000020000000000000002.lz4",
        ]
        let end = SpoolEnd(fileNames: names, segmentSize: size)
        #expect(end == SpoolEnd(segment: SegmentName(timeline: 2, number: 3, segmentSize: size), inJournal: true))
    }

    @Test func aCompletedSegmentWinsOverItsLeftoverJournal() {
        let names = ["000000010000000000000004.partial", "000000010000000000000004.lz4", "000000010000000000000003.lz4"]
        #expect(
            SpoolEnd(fileNames: names, segmentSize: size)
                == SpoolEnd(segment: SegmentName(timeline: 1, number: 4, segmentSize: size), inJournal: false))
    }

    @Test func noWALNoEnd() {
        #expect(SpoolEnd(fileNames: ["00000002.history", "000000010000000000000004.lz4.tmp", "junk"], segmentSize: size) == nil)
    }
}

@Suite struct RecoveryTimelineTests {
    let size = TestWAL.size

    /// A failover at the primary site to a partner four segments behind: the old timeline's WAL reaches
    /// segment 7, the new one starts back in segment 3. A restart must resume on timeline 2.
    @Test func aRestartResumesOnTheNewTimelineAfterAForkFarBehindTheOldEnd() throws {
        let temp = TempSpool()
        let fork = size.startLSN(ofSegment: 3).advanced(by: 250_000)
        let childEnd = size.startLSN(ofSegment: 3).advanced(by: 400_000)
        do {
            let (_, system) = try temp.open()
            for number: UInt64 in 3...6 { try append(system, TestWAL.segment(number), at: size.startLSN(ofSegment: number)) }
            try append(system, TestWAL.segment(7, count: 300_000), at: size.startLSN(ofSegment: 7))
            try system.sync()
            try system.storeHistory(timeline: 2, content: Array("1\t\(fork)\tno recovery target specified\n".utf8))
            try append(system, childTimelineSegment(3, count: 400_000), at: size.startLSN(ofSegment: 3), timeline: 2)
            try system.sync()
        }
        let (_, reopened) = try temp.open()
        #expect(reopened.position == SpoolPosition(timeline: 2, written: childEnd, durable: childEnd))
        // restore-wal and promote read the same end.
        let reader = try SpoolReader(root: temp.root, system: nil)
        #expect(try reader.newestTimeline() == 2)
        let end = try reader.end()
        #expect(end.timeline == 2 && end.lsn == childEnd)
        #expect(try reader.contents(of: "000000020000000000000003")?.size == Int(size.bytes))
        #expect(try reader.contents(of: "000000010000000000000007") == nil)
        // It goes on where timeline 2 ends.
        let more = Array(childTimelineSegment(3, count: 500_000)[400_000...])
        try append(reopened, more, at: childEnd, timeline: 2)
        #expect(try reopened.sync() == childEnd.advanced(by: 100_000))
    }
}

@Suite struct FsyncFailureTests {
    let size = TestWAL.size

    static func failing(
        _ kind: InMemoryFileSystem.Operation.Kind, pathContaining part: String, times: Int = 1
    )
        -> @Sendable (InMemoryFileSystem.Operation) -> InMemoryFileSystem.Fault?
    {
        let left = Mutex(times)
        return { operation in
            guard operation.kind == kind, operation.path.contains(part) else { return nil }
            return left.withLock { n in
                guard n > 0 else { return nil }
                n -= 1
                return .fail(EIO)
            }
        }
    }

    @Test func aFailedJournalFsyncStopsAcknowledgementUntilTheSpoolIsReadAgain() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3, count: 100_000), at: start)
        #expect(try system.sync() == start.advanced(by: 100_000))
        try append(system, Array(TestWAL.segment(3, count: 200_000)[100_000...]), at: start.advanced(by: 100_000))
        disk.fs.setFaults(Self.failing(.fdatasync, pathContaining: ".partial"))
        #expect(throws: SpoolError.self) { try system.sync() }
        // Linux would now report success for the same descriptor: the spool must not believe it.
        #expect(throws: SpoolError.self) { try system.sync() }
        #expect(throws: SpoolError.self) {
            try append(system, Array(TestWAL.segment(3, count: 210_000)[200_000...]), at: start.advanced(by: 200_000))
        }
        #expect(system.stoppedByFsyncFailure)
        #expect(system.position.durable == start.advanced(by: 100_000))
        // The kernel dropped those pages: after a crash only what the first fsync covered is there.
        disk.crash()
        let recovered = try disk.open()
        #expect(recovered.position.durable == start.advanced(by: 100_000))
        #expect(!recovered.stoppedByFsyncFailure)
    }

    /// A failed fsync of the old timeline's journal while switching used to be forgotten: the next attempt
    /// switched and acknowledged on the new timeline.
    @Test func aFailedFsyncDuringATimelineSwitchStopsTheSpool() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3, count: 300_000), at: start)
        try system.storeHistory(timeline: 2, content: Array("1\t\(start.advanced(by: 250_000))\tx\n".utf8))
        disk.fs.setFaults(Self.failing(.fdatasync, pathContaining: "000000010000000000000003.partial"))
        #expect(throws: SpoolError.self) { try append(system, childTimelineSegment(3, count: 20_000), at: start, timeline: 2) }
        #expect(throws: SpoolError.self) { try append(system, childTimelineSegment(3, count: 20_000), at: start, timeline: 2) }
        #expect(throws: SpoolError.self) { try system.sync() }
        #expect(system.stoppedByFsyncFailure)
        #expect(system.position.timeline == 1)
    }

    /// After a failed fsync, what the page cache shows may never have reached the disk. Reopening re-reads it
    /// and writes the journal anew before acknowledging any of it, so a crash afterwards keeps it.
    @Test func reopeningAfterAFailedFsyncWritesTheJournalAnew() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3, count: 100_000), at: start)
        disk.fs.setFaults(Self.failing(.fdatasync, pathContaining: ".partial"))
        #expect(throws: SpoolError.self) { try system.sync() }
        let reopened = try #require(try disk.spool!.reopen(TestWAL.sysid))
        #expect(!reopened.stoppedByFsyncFailure)
        #expect(reopened.position.durable == start.advanced(by: 100_000))
        disk.crash()
        #expect(try disk.open().position.durable == start.advanced(by: 100_000))
    }

    /// Completing a segment may retry: the journal, fsynced before, still holds the WAL.
    @Test func aFailedFsyncWhileCompletingASegmentIsRetriedFromTheJournal() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3, count: 900_000), at: start)
        try system.sync()
        disk.fs.setFaults(Self.failing(.fsync, pathContaining: ".lz4.tmp"))
        #expect(throws: SpoolError.self) {
            try append(system, Array(TestWAL.segment(3)[900_000...]), at: start.advanced(by: 900_000))
        }
        #expect(!system.stoppedByFsyncFailure)
        try append(system, TestWAL.segment(4, count: 10_000), at: size.startLSN(ofSegment: 4))
        #expect(try system.sync() == size.startLSN(ofSegment: 4).advanced(by: 10_000))
        #expect(try disk.files() == ["000000010000000000000003.lz4", "000000010000000000000004.partial"])
    }
}

@Suite struct AcknowledgedBoundTests {
    let size = TestWAL.size

    func record(timeline: UInt32, acknowledged: LSN) -> PrimaryProgressRecord {
        PrimaryProgressRecord(
            primaryLSN: nil, primaryTime: nil, timeline: timeline, acknowledgedLSN: "\(acknowledged)",
            acknowledgedAt: Date(), senderName: nil, synchronous: true, updatedAt: Date())
    }

    /// A damaged record in the journal ends its valid part like a torn tail would; below an acknowledged
    /// position that is lost WAL, and the system is not started.
    @Test func aJournalEndingBelowWhatWasAcknowledgedIsRefused() throws {
        let disk = MemorySpool()
        let start = size.startLSN(ofSegment: 3)
        do {
            let system = try disk.open()
            try append(system, TestWAL.segment(3, count: 100_000), at: start)
            try append(system, Array(TestWAL.segment(3, count: 200_000)[100_000...]), at: start.advanced(by: 100_000))
            let durable = try system.sync()
            try record(timeline: 1, acknowledged: durable).save(systemDirectory: system.directory, io: disk.spool!.io)
        }
        let journal = disk.walDirectory + "/000000010000000000000003.partial"
        var bytes = try #require(disk.fs.contents(journal))
        bytes[PartialSegment.headerLength + 150_000] ^= 0xFF  // inside the second record
        disk.fs.overwrite(journal, with: bytes)
        disk.spool = nil
        let spool = try Spool(root: disk.root, logger: disk.logger, fileSystem: disk.fs)
        #expect(try spool.openExistingSystems().isEmpty)
        let refusal = try #require(spool.refusedSystems[TestWAL.sysid])
        #expect(refusal.kind == .acknowledgedWALMissing)
        #expect(
            refusal.message.contains("\(start.advanced(by: 100_000))")
                && refusal.message.contains("\(start.advanced(by: 200_000))"))
        // The journal is left as it was, for a person to look at.
        #expect(disk.fs.contents(journal) == bytes)
    }

    /// After a fork the new timeline may end below the old one's acknowledgement: not a loss.
    @Test func aNewTimelineIsNotComparedWithTheOldOnesAcknowledgement() throws {
        let disk = MemorySpool()
        let start = size.startLSN(ofSegment: 3)
        do {
            let system = try disk.open()
            try append(system, TestWAL.segment(3, count: 300_000), at: start)
            let durable = try system.sync()
            try record(timeline: 1, acknowledged: durable).save(systemDirectory: system.directory, io: disk.spool!.io)
            try system.storeHistory(timeline: 2, content: Array("1\t\(start.advanced(by: 250_000))\tx\n".utf8))
            try append(system, childTimelineSegment(3, count: 20_000), at: start, timeline: 2)
            try system.sync()
        }
        #expect(try disk.open().position.timeline == 2)
        // But a spool back on timeline 1 when timeline 2 was acknowledged lost timeline 2.
        try record(timeline: 3, acknowledged: start).save(systemDirectory: disk.systemDirectory, io: disk.spool!.io)
        #expect { try disk.open() } throws: { ($0 as? SpoolError)?.kind == .acknowledgedWALMissing }
    }
}

@Suite struct DirectoryDurabilityTests {
    let size = TestWAL.size

    /// WAL fsynced into directories whose own entries a crash takes away would be lost with them.
    @Test func aNewSystemsDirectoriesSurviveACrash() throws {
        let disk = MemorySpool()
        let system = try disk.open()
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3, count: 50_000), at: start)
        #expect(try system.sync() == start.advanced(by: 50_000))
        disk.crash()
        #expect(try disk.open().position.durable == start.advanced(by: 50_000))
    }

    @Test func aNewAuditLogSurvivesACrash() throws {
        let disk = MemorySpool()
        _ = try disk.open()
        try disk.spool!.appendDurably(Array("{\"event\":\"degraded\"}\n".utf8), toFileNamed: "audit.log")
        disk.crash()
        #expect(disk.fs.contents(disk.root + "/audit.log") == Array("{\"event\":\"degraded\"}\n".utf8))
    }

    @Test func theWALDirectoryOfANewSystemIsDurable() throws {
        let disk = MemorySpool()
        _ = try disk.open()
        disk.crash()
        #expect(disk.fs.isDirectory(disk.walDirectory))
    }
}

import Foundation
import Testing
import WALCore
import WALTestSupport

@testable import Spool

/// The standby's site of a switchover proves from the spool alone that the primary stopped with nothing missing.
@Suite struct SpoolTailTests {
    let size = TestWAL.size

    /// WAL from the start of segment 1 into segment 2 (records crossing the boundary), then `last`.
    func spool(ending last: (inout TestWALWriter) -> Void) throws -> (TempSpool, TestWALWriter) {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        var wal = TestWALWriter(start: size.startLSN(ofSegment: 1))
        while wal.position < size.startLSN(ofSegment: 2).advanced(by: 5000) { wal.other(bodyLength: 700) }
        last(&wal)
        try append(system, wal.bytes, at: wal.start)
        try system.sync()
        return (temp, wal)
    }

    @Test func aSpoolEndingWithAShutdownCheckpointProvesACleanStop() throws {
        var checkpoint: (start: LSN, end: LSN)?
        let (temp, wal) = try spool { checkpoint = $0.checkpoint() }
        let tail = try SpoolReader(root: temp.root, system: TestWAL.sysid).tail()
        #expect(tail.end == wal.position)
        #expect(tail.lastRecord == WALRecordMark(start: checkpoint!.start, end: checkpoint!.end, isShutdownCheckpoint: true))
        #expect(tail.endsWithCleanShutdown)
    }

    @Test func anyOtherLastRecordIsNoProof() throws {
        for ending: (inout TestWALWriter) -> Void in [
            { $0.other(bodyLength: 40) }, { $0.checkpoint(online: true) },
            {
                $0.checkpoint()
                $0.transactionEnd(time: PostgresTimestamp(rawValue: 1))
            },
        ] {
            let (temp, _) = try spool(ending: ending)
            let tail = try SpoolReader(root: temp.root, system: TestWAL.sysid).tail()
            #expect(!tail.endsWithCleanShutdown, "\(String(describing: tail.lastRecord))")
        }
    }

    @Test func aCheckpointAtTheStartOfASegmentIsFound() throws {
        // The last segment holds only the checkpoint: the scan starts a segment earlier.
        var checkpoint: (start: LSN, end: LSN)?
        let (temp, _) = try spool { wal in
            while wal.position < size.startLSN(ofSegment: 3) { wal.other(bodyLength: 700) }
            checkpoint = wal.checkpoint()
        }
        let tail = try SpoolReader(root: temp.root, system: TestWAL.sysid).tail()
        #expect(tail.lastRecord?.start == checkpoint?.start)
        #expect(tail.endsWithCleanShutdown)
    }
}

@Suite struct SpoolReaderOpenIfPresentTests {
    /// restore-wal for a standby that follows a spool not yet sent anything: "not there yet", not an error, which
    /// PostgreSQL would take as fatal (the old primary after a switchover, started before the new primary ships).
    @Test func aSpoolWithoutTheSystemYetIsNotAnError() throws {
        let temp = TempSpool()
        try FileManager.default.createDirectory(atPath: temp.root, withIntermediateDirectories: true)
        #expect(try SpoolReader.openIfPresent(root: temp.root, system: TestWAL.sysid) == nil)
        #expect(try SpoolReader.openIfPresent(root: temp.root, system: nil) == nil)
        _ = try temp.open()
        #expect(try SpoolReader.openIfPresent(root: temp.root, system: TestWAL.sysid)?.systemIdentifier == TestWAL.sysid)
        #expect(try SpoolReader.openIfPresent(root: temp.root, system: 42) == nil)
        #expect(throws: (any Error).self) { try SpoolReader.openIfPresent(root: temp.root + "/missing", system: nil) }
    }
}

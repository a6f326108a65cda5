import Foundation
import Testing
import WALCore
import WALTestSupport

@testable import Spool

/// The journal zeroes the reserved space ahead of small records, so their fdatasync flushes data alone.
@Suite struct ZeroFillTests {
    @Test func aSmallRecordPastTheWrittenBlocksGetsTheNextStepZeroed() {
        #expect(
            ZeroFill.range(recordStart: 48, recordEnd: 3048, initializedEnd: 48, reservedEnd: 1 << 24)
                == 3048..<(3048 + ZeroFill.step))
    }

    @Test func aSmallRecordInsideZeroedSpaceNeedsNothing() {
        #expect(
            ZeroFill.range(recordStart: 3048, recordEnd: 6048, initializedEnd: 3048 + ZeroFill.step, reservedEnd: 1 << 24) == nil)
        #expect(ZeroFill.range(recordStart: 3048, recordEnd: 6048, initializedEnd: 6048, reservedEnd: 1 << 24) == nil)
    }

    @Test func largeRecordsGoStraightIntoTheReservedSpace() {
        #expect(
            ZeroFill.range(recordStart: 48, recordEnd: 48 + ZeroFill.largeRecord, initializedEnd: 48, reservedEnd: 1 << 24) == nil
        )
        #expect(
            ZeroFill.range(recordStart: 48, recordEnd: 48 + ZeroFill.largeRecord - 1, initializedEnd: 48, reservedEnd: 1 << 24)
                != nil)
    }

    @Test func zeroingStopsWhereTheReservedSpaceEnds() {
        let reserved = 1 << 20
        #expect(
            ZeroFill.range(recordStart: reserved - 5000, recordEnd: reserved - 1000, initializedEnd: 0, reservedEnd: reserved)
                == (reserved - 1000)..<reserved)
        #expect(
            ZeroFill.range(recordStart: reserved - 1000, recordEnd: reserved, initializedEnd: 0, reservedEnd: reserved) == nil)
    }

    @Test func aJournalOfSmallRecordsReadsBackExactlyAndKeepsItsReservedSize() throws {
        let temp = TempSpool()
        try FileManager.default.createDirectory(atPath: temp.walDirectory, withIntermediateDirectories: true)
        let path = temp.walDirectory + "/000000010000000000000003.partial"
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid,
            segment: SegmentName(timeline: 1, number: 3, segmentSize: TestWAL.size))
        let wal = TestWAL.segment(3, count: 700_000)
        let writer = try PartialSegmentWriter(creating: path, header: header, directory: temp.walDirectory, io: .posix)
        let sizeBefore = try fileSize(path)
        // Commit-sized records, across more than two zeroing steps; then one large record.
        var offset = 0
        for length in [3000, 5000, 1200, 40_000] + Array(repeating: 8192, count: 60) {
            try wal[offset..<offset + length].withUnsafeBytes { try writer.append(offset: offset, $0) }
            try writer.sync()
            offset += length
        }
        try wal[offset..<offset + 100_000].withUnsafeBytes { try writer.append(offset: offset, $0) }
        try writer.sync()
        offset += 100_000
        #expect(offset > 2 * ZeroFill.step)
        let contents = try PartialSegment.read(path: path)
        #expect(contents.wal == Array(wal[0..<offset]))
        // Past the last record: only zeros, whether zeroed or merely reserved.
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(file[contents.journalLength...].allSatisfy { $0 == 0 })
        #expect(try fileSize(path) == sizeBefore)
    }

    private func fileSize(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? -1
    }
}

import Foundation
import Testing
import WALCore
import WALTestSupport

@testable import Spool

@Suite struct SpoolReaderTests {
    let size = TestWAL.size

    @Test func servesCompletedSegmentsAndThePaddedTail() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg1 = TestWAL.segment(1)
        let seg2 = TestWAL.segment(2, count: 70_000)
        try append(system, seg1 + seg2, at: size.startLSN(ofSegment: 1))
        try system.sync()
        let reader = try SpoolReader(root: temp.root, system: nil)
        #expect(try reader.contents(of: "000000010000000000000001") == ServedFile(whole: seg1))
        let tail = try #require(try reader.contents(of: "000000010000000000000002"))
        #expect(tail.size == Int(size.bytes) && tail.isPadded)
        #expect(tail.bytes == seg2)
        #expect(tail.contents.count == Int(size.bytes) && tail.contents[70_000...].allSatisfy { $0 == 0 })
        #expect(try reader.contents(of: "000000010000000000000003") == nil)
        #expect(try reader.contents(of: "000000010000000000000002.partial") == nil)
        #expect(try reader.contents(of: "00000002.history") == nil)
        #expect(try reader.contents(of: "not-a-wal-file") == nil)
    }

    @Test func heldWALRunsWithoutAGapFromTheSegmentAsked() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        try append(
            system, TestWAL.segment(1) + TestWAL.segment(2) + TestWAL.segment(3, count: 70_000),
            at: size.startLSN(ofSegment: 1))
        try system.sync()
        let reader = try SpoolReader(root: temp.root, system: nil)
        let inSecond = LSN(size.startLSN(ofSegment: 2).rawValue + 100)
        let journalEnd = LSN(size.startLSN(ofSegment: 3).rawValue + 70_000)
        #expect(try reader.heldWAL(timeline: 1, from: inSecond) == size.startLSN(ofSegment: 2)..<journalEnd)
        #expect(try reader.heldWAL(timeline: 1, from: size.startLSN(ofSegment: 1)) == size.startLSN(ofSegment: 1)..<journalEnd)
        #expect(try reader.heldWAL(timeline: 1, from: size.startLSN(ofSegment: 4)) == nil)
        #expect(try reader.heldWAL(timeline: 2, from: inSecond) == nil)
        // A gap ends the run: what lies after it is not reached without the missing segment.
        try FileManager.default.removeItem(atPath: temp.walDirectory + "/000000010000000000000002.lz4")
        #expect(
            try reader.heldWAL(timeline: 1, from: size.startLSN(ofSegment: 1)) == size.startLSN(
                ofSegment: 1)..<size.startLSN(ofSegment: 2))
        #expect(try reader.heldWAL(timeline: 1, from: inSecond) == nil)
    }

    @Test func oldTimelinesTailIsNeverServed() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        try append(system, TestWAL.segment(4, count: 30_000), at: size.startLSN(ofSegment: 4))
        try system.sync()
        try system.storeHistory(timeline: 2, content: Array("1\t0/430000\tno recovery target specified\n".utf8))
        let reader = try SpoolReader(root: temp.root, system: TestWAL.sysid)
        #expect(try reader.newestTimeline() == 2)
        #expect(try reader.contents(of: "000000010000000000000004") == nil)
        #expect(
            try reader.contents(of: "00000002.history")
                == ServedFile(whole: Array("1\t0/430000\tno recovery target specified\n".utf8)))
    }

    @Test func damagedSegmentIsAnErrorNotAbsence() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        try append(system, TestWAL.segment(1), at: size.startLSN(ofSegment: 1))
        try system.sync()
        let path = temp.walDirectory + "/000000010000000000000001.lz4"
        var frame = try Data(contentsOf: URL(fileURLWithPath: path))
        frame[frame.count / 2] ^= 0xFF
        try frame.write(to: URL(fileURLWithPath: path))
        let reader = try SpoolReader(root: temp.root, system: nil)
        #expect(throws: SpoolError.self) { try reader.contents(of: "000000010000000000000001") }
    }

    @Test func systemMustBeNamedWhenAmbiguous() throws {
        let temp = TempSpool()
        let (spool, _) = try temp.open()
        _ = try spool.system(99, segmentSize: size)
        #expect(throws: SpoolError.self) { try SpoolReader(root: temp.root, system: nil) }
        #expect(try SpoolReader(root: temp.root, system: 99).systemIdentifier == 99)
        #expect(throws: SpoolError.self) { try SpoolReader(root: temp.root, system: 12345) }
        #expect(throws: SpoolError.self) { try SpoolReader(root: temp.root + "-missing", system: nil) }
    }
}

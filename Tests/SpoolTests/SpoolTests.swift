import Foundation
import LZ4Codec
import Logging
import NIOCore
import Testing
import WALCore
import WALTestSupport

@testable import Spool

final class TempSpool {
    let root: String
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    init() {
        root = NSTemporaryDirectory() + "walship-spool-test-\(UUID().uuidString)"
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }

    func open() throws -> (Spool, SystemSpool) {
        let spool = try Spool(root: root, logger: logger)
        return (spool, try spool.system(TestWAL.sysid, segmentSize: TestWAL.size))
    }

    var walDirectory: String { root + "/\(TestWAL.sysid)/wal" }

    /// The spool's files, without the in-progress segment's compressed copy (`NAME.lz4.tmp`).
    func files() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: walDirectory).filter { !$0.hasSuffix(".lz4.tmp") }.sorted()
    }
}

func append(_ system: SystemSpool, _ bytes: [UInt8], at lsn: LSN, timeline: TimeLineID = 1) throws {
    try bytes.withUnsafeBytes { try system.append(timeline: timeline, startLSN: lsn, bytes: $0) }
}

@Suite struct SpoolTests {
    let size = TestWAL.size

    @Test func completedSegmentIsOneLZ4FrameOfTheExactBytes() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg5 = TestWAL.segment(5)
        let seg6 = TestWAL.segment(6, count: 100_000)
        // One write crossing the segment boundary, as XLogData may.
        try append(system, Array(seg5[0..<700_000]), at: size.startLSN(ofSegment: 5))
        try append(system, Array(seg5[700_000...]) + seg6, at: size.startLSN(ofSegment: 5).advanced(by: 700_000))
        let durable = try system.sync()
        #expect(durable == size.startLSN(ofSegment: 6).advanced(by: 100_000))
        #expect(try temp.files() == ["000000010000000000000005.lz4", "000000010000000000000006.partial"])
        // The segment in progress is compressed as it arrives; the finished one's temporary copy is gone.
        let all = try FileManager.default.contentsOfDirectory(atPath: temp.walDirectory)
        #expect(all.filter { $0.hasSuffix(".tmp") } == ["000000010000000000000006.lz4.tmp"])
        let frame = try Data(contentsOf: URL(fileURLWithPath: temp.walDirectory + "/000000010000000000000005.lz4"))
        let restored = try Array(frame).withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) }
        #expect(restored == seg5)
        let partial = try PartialSegment.read(path: temp.walDirectory + "/000000010000000000000006.partial")
        #expect(partial.wal == seg6)
        #expect(!partial.hadTornTail)
    }

    @Test func theSendersBlocksAreStoredAsTheyCameAndTheSegmentIsStillExact() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        // Compressible, as WAL is: most of each page after its header is zero.
        func compressible(_ bytes: [UInt8]) -> [UInt8] {
            bytes.enumerated().map { $0.offset % 8192 < 40 || $0.offset % 512 < 64 ? $0.element : 0 }
        }
        let seg5 = compressible(TestWAL.segment(5))
        let seg6 = compressible(TestWAL.segment(6, count: 300_000))
        var blocks: [[UInt8]] = []
        func appendBlock(_ bytes: [UInt8], at lsn: LSN) throws {
            let block = LZ4.compressBlock(ByteBuffer(bytes: bytes))
            blocks.append(Array(block.readableBytesView))
            try bytes.withUnsafeBytes { raw in
                try block.withUnsafeReadableBytes {
                    try system.append(timeline: 1, startLSN: lsn, bytes: raw, compressedBlock: $0)
                }
            }
        }
        let start = size.startLSN(ofSegment: 5)
        // Blocks within the segment are stored; a block crossing into the next segment is compressed again.
        try append(system, Array(seg5[0..<10_000]), at: start)
        try appendBlock(Array(seg5[10_000..<600_000]), at: start.advanced(by: 10_000))
        try appendBlock(Array(seg5[600_000...]) + seg6[0..<100_000], at: start.advanced(by: 600_000))
        try appendBlock(Array(seg6[100_000...]), at: size.startLSN(ofSegment: 6).advanced(by: 100_000))
        try system.sync()
        let frame = try Array(Data(contentsOf: URL(fileURLWithPath: temp.walDirectory + "/000000010000000000000005.lz4")))
        #expect(try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == seg5)
        #expect(try PartialSegment.read(path: temp.walDirectory + "/000000010000000000000006.partial").wal == seg6)
        // The first block is in the file byte for byte, right after its 4-byte size; the crossing one is not.
        #expect(frame.firstRange(of: blocks[0]) != nil)
        #expect(frame.firstRange(of: blocks[1]) == nil)
    }

    @Test func reopeningResumesExactlyAtTheDurableEnd() throws {
        let temp = TempSpool()
        let seg = TestWAL.segment(2)
        do {
            let (_, system) = try temp.open()
            try append(system, Array(seg[0..<300_000]), at: size.startLSN(ofSegment: 2))
            try system.sync()
            // The journal was prepared under a temporary name and renamed into place.
            #expect(try temp.files() == ["000000010000000000000002.partial"])
        }
        let (_, system) = try temp.open()
        let resumed = system.position
        #expect(resumed.durable == size.startLSN(ofSegment: 2).advanced(by: 300_000))
        #expect(resumed.timeline == 1)
        try append(system, Array(seg[300_000...]), at: resumed.durable)
        try system.sync()
        #expect(try temp.files() == ["000000010000000000000002.lz4"])
    }

    @Test func tornTailIsCutAndNeverServed() throws {
        let temp = TempSpool()
        let seg = TestWAL.segment(3)
        let path = temp.walDirectory + "/000000010000000000000003.partial"
        do {
            let (_, system) = try temp.open()
            try append(system, Array(seg[0..<200_000]), at: size.startLSN(ofSegment: 3))
            try system.sync()
            try append(system, Array(seg[200_000..<260_000]), at: size.startLSN(ofSegment: 3).advanced(by: 200_000))
        }
        // A crash mid-write: the last record's data is half garbage.
        let journal = try PartialSegment.read(path: path)
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        handle.seek(toFileOffset: UInt64(journal.journalLength - 1000))
        handle.write(Data(repeating: 0xAB, count: 500))
        handle.closeFile()

        let (_, system) = try temp.open()
        #expect(system.position.durable == size.startLSN(ofSegment: 3).advanced(by: 200_000))
        let recovered = try PartialSegment.read(path: path)
        #expect(recovered.wal == Array(seg[0..<200_000]))
        #expect(!recovered.hadTornTail)  // the cut tail was zeroed on disk
        try append(system, Array(seg[200_000...]), at: system.position.durable)
        try system.sync()
        let frame = try Data(contentsOf: URL(fileURLWithPath: temp.walDirectory + "/000000010000000000000003.lz4"))
        #expect(try Array(frame).withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == seg)
    }

    /// A spool holding segment `number`, completed, and closed again.
    func storeWholeSegment(_ number: UInt64, in temp: TempSpool) throws {
        let (_, system) = try temp.open()
        try append(system, TestWAL.segment(number), at: size.startLSN(ofSegment: number))
        try system.sync()
    }

    @Test func crashLeftoversAreResolved() throws {
        let temp = TempSpool()
        try storeWholeSegment(7, in: temp)
        // Crash after the .lz4 rename but before the journal was removed, plus a temp file of an unfinished write.
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid,
            segment: SegmentName(timeline: 1, number: 7, segmentSize: size))
        _ = try PartialSegmentWriter(
            creating: temp.walDirectory + "/000000010000000000000007.partial", header: header,
            directory: temp.walDirectory, io: .posix)
        #expect(
            FileManager.default.createFile(
                atPath: temp.walDirectory + "/000000010000000000000008.lz4.tmp", contents: Data([1, 2, 3])))
        // And a journal whose creation was cut short: preallocated, its header not yet written.
        #expect(
            FileManager.default.createFile(
                atPath: temp.walDirectory + "/000000010000000000000008.partial.tmp",
                contents: Data(repeating: 0, count: 4096)))
        let (_, system) = try temp.open()
        #expect(try temp.files() == ["000000010000000000000007.lz4"])
        #expect(system.position.durable == size.startLSN(ofSegment: 8))
    }

    @Test func aJournalLeftHeaderlessByAnOlderReceiverIsRemovedAndAnythingElseIsRefused() throws {
        let temp = TempSpool()
        try storeWholeSegment(7, in: temp)
        // Older receivers created the journal in place: stopped before its header, it stays all zeros.
        let blank = temp.walDirectory + "/000000010000000000000008.partial"
        #expect(FileManager.default.createFile(atPath: blank, contents: Data(repeating: 0, count: 3 << 20)))
        do {
            let (_, system) = try temp.open()
            #expect(try temp.files() == ["000000010000000000000007.lz4"])
            #expect(system.position.durable == size.startLSN(ofSegment: 8))
        }
        // One non-zero byte anywhere and it is not ours to delete: start-up stops and says what to do.
        var damaged = Data(repeating: 0, count: 3 << 20)
        damaged[(2 << 20) + 17] = 1
        #expect(FileManager.default.createFile(atPath: blank, contents: damaged))
        do {
            _ = try temp.open()
            Issue.record("a damaged journal must stop start-up")
        } catch let error as SpoolError {
            #expect(error.message.contains("bad header") && error.message.contains("hint:"), "\(error.message)")
        }
        #expect(FileManager.default.fileExists(atPath: blank))
    }

    @Test func fullJournalWithoutItsLZ4IsFinishedOnStart() throws {
        let temp = TempSpool()
        let seg = TestWAL.segment(9)
        try FileManager.default.createDirectory(atPath: temp.walDirectory, withIntermediateDirectories: true)
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid,
            segment: SegmentName(timeline: 1, number: 9, segmentSize: size))
        let writer = try PartialSegmentWriter(
            creating: temp.walDirectory + "/000000010000000000000009.partial",
            header: header, directory: temp.walDirectory, io: .posix)
        try seg.withUnsafeBytes { try writer.append(offset: 0, $0) }
        try writer.sync()
        let (_, system) = try temp.open()
        #expect(try temp.files() == ["000000010000000000000009.lz4"])
        #expect(system.position.durable == size.startLSN(ofSegment: 10))
    }

    @Test func pageHeadersSplitAcrossChunksAreCheckedWhereverTheSplitFalls() throws {
        let start = size.startLSN(ofSegment: 3)
        // Splits inside the long header of page 0, inside short headers, right after them and mid-page.
        let cuts = [0, 3, 17, 39, 40, 41, 8192 + 5, 8192 + 23, 8192 + 24, 3 * 8192 + 1, 3 * 8192 + 30, 5 * 8192, 50_000]
        let seg = TestWAL.segment(3, count: 50_000)
        let temp = TempSpool()
        let (_, system) = try temp.open()
        for (from, to) in zip(cuts, cuts.dropFirst()) {
            try append(system, Array(seg[from..<to]), at: start.advanced(by: UInt64(from)))
        }
        try system.sync()
        #expect(try PartialSegment.read(path: temp.walDirectory + "/000000010000000000000003.partial").wal == seg)

        // A damaged field of a header whose bytes arrive in two chunks is refused, whichever chunk holds it.
        for (cut, damaged) in [(8192 + 5, 8192 + 2), (8192 + 5, 8192 + 9), (3 * 8192 + 1, 3 * 8192 + 12)] {
            let other = TempSpool()
            let (_, fresh) = try other.open()
            var bad = seg
            bad[damaged] ^= 0x40
            try append(fresh, Array(bad[0..<cut - 30]), at: start)
            #expect(throws: SpoolError.self) {
                try append(fresh, Array(bad[(cut - 30)..<cut]), at: start.advanced(by: UInt64(cut - 30)))
                try append(fresh, Array(bad[cut..<cut + 100]), at: start.advanced(by: UInt64(cut)))
            }
        }
    }

    @Test func invalidWALIsRefusedAndNothingIsStored() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let foreign = TestWAL.segment(4, count: 50_000, systemIdentifier: 42)
        #expect(throws: SpoolError.self) { try append(system, foreign, at: size.startLSN(ofSegment: 4)) }
        // Good bytes, then a page whose address is wrong: the good part stays, the bad page never lands.
        var seg = TestWAL.segment(4, count: 40_000)
        try append(system, Array(seg[0..<16_384]), at: size.startLSN(ofSegment: 4))
        seg[16_384 + 8] ^= 0x40
        do {
            try append(system, Array(seg[16_384...]), at: size.startLSN(ofSegment: 4).advanced(by: 16_384))
            Issue.record("corrupt page accepted")
        } catch let error as SpoolError {
            #expect(error.kind == .invalidWAL)
            #expect(error.message.contains("claims address"))
        }
        try system.sync()
        #expect(system.position.durable == size.startLSN(ofSegment: 4).advanced(by: 16_384))
        let stored = try PartialSegment.read(path: temp.walDirectory + "/000000010000000000000004.partial")
        #expect(stored.wal.count == 16_384)
    }

    @Test func gapsAndMisalignedStartsAreRefused() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg = TestWAL.segment(1, count: 30_000)
        #expect(throws: SpoolError.self) {
            try append(system, Array(seg[100...]), at: size.startLSN(ofSegment: 1).advanced(by: 100))
        }
        try append(system, Array(seg[0..<10_000]), at: size.startLSN(ofSegment: 1))
        do {
            try append(system, Array(seg[12_000...]), at: size.startLSN(ofSegment: 1).advanced(by: 12_000))
            Issue.record("gap accepted")
        } catch let error as SpoolError {
            #expect(error.kind == .notContiguous)
        }
        #expect(system.position.written == size.startLSN(ofSegment: 1).advanced(by: 10_000))
    }

    @Test func oneReceiverPerSpool() throws {
        let temp = TempSpool()
        let (first, _) = try temp.open()
        do {
            _ = try Spool(root: temp.root, logger: temp.logger)
            Issue.record("second spool opened")
        } catch let error as SpoolError {
            #expect(error.kind == .locked)
        }
        withExtendedLifetime(first) {}
    }

    @Test func historyFilesAreStoredOnceAndChecked() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let history = Array("1\t0/5000060\tno recovery target specified\n".utf8)
        try system.storeHistory(timeline: 2, content: history)
        try system.storeHistory(timeline: 2, content: history)
        #expect(throws: SpoolError.self) { try system.storeHistory(timeline: 2, content: Array("1\t0/6000000\tother\n".utf8)) }
        #expect(throws: SpoolError.self) { try system.storeHistory(timeline: 3, content: Array("garbage".utf8)) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: temp.walDirectory + "/00000002.history")) == Data(history))
    }
}

@Suite struct TimelineSwitchTests {
    let size = TestWAL.size

    /// A segment on timeline 2 whose pages claim timeline 1 up to `copiedPrefix`, as PostgreSQL writes the
    /// first segment of a new timeline; timeline 2 afterwards.
    func newTimelineSegment(_ number: UInt64, count: Int) -> [UInt8] {
        var bytes = TestWAL.segment(number, count: count)
        var page = 8192
        while page < count {
            bytes[page + 4] = 2  // xlp_tli = 2 from the second page on
            page += 8192
        }
        return bytes
    }

    @Test func switchesOnlyAtTheForkWithItsHistory() throws {
        let temp = TempSpool()
        try switchOnce(temp)
        // After a restart the spool resumes on timeline 2.
        let (_, reopened) = try temp.open()
        #expect(reopened.position.timeline == 2)
    }

    func switchOnce(_ temp: TempSpool) throws {
        let (_, system) = try temp.open()
        try append(system, TestWAL.segment(3, count: 300_000), at: size.startLSN(ofSegment: 3))
        try system.sync()
        let fork = size.startLSN(ofSegment: 3).advanced(by: 250_000)
        let childStart = size.startLSN(ofSegment: 3)
        // Without the history file, WAL of timeline 2 is refused.
        #expect(throws: SpoolError.self) { try append(system, newTimelineSegment(3, count: 20_000), at: childStart, timeline: 2) }
        try system.storeHistory(timeline: 2, content: Array("1\t\(fork)\tno recovery target specified\n".utf8))
        // Not at the fork segment's start: refused.
        #expect(throws: SpoolError.self) {
            try append(
                system, Array(newTimelineSegment(3, count: 20_000)[8192...]), at: childStart.advanced(by: 8192), timeline: 2)
        }
        try append(system, newTimelineSegment(3, count: 400_000), at: childStart, timeline: 2)
        try system.sync()
        #expect(
            system.position
                == SpoolPosition(
                    timeline: 2, written: childStart.advanced(by: 400_000), durable: childStart.advanced(by: 400_000)))
        // The old timeline's tail (with 50 000 bytes beyond the fork) stays aside and is never served.
        #expect(try temp.files() == ["000000010000000000000003.partial", "00000002.history", "000000020000000000000003.partial"])
        let reader = try SpoolReader(root: temp.root, system: nil)
        #expect(try reader.contents(of: "000000010000000000000003") == nil)
        #expect(try reader.contents(of: "000000020000000000000003")?.size == Int(size.bytes))
        // What was kept aside can still be read out (walship extract-partial).
        let aside = try reader.journalWAL(of: SegmentName(timeline: 1, number: 3, segmentSize: size))
        #expect(aside == Array(TestWAL.segment(3, count: 300_000)))
    }

    @Test func aGapBeforeTheForkIsRefused() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        try append(system, TestWAL.segment(3, count: 100_000), at: size.startLSN(ofSegment: 3))
        try system.storeHistory(timeline: 2, content: Array("1\t\(size.startLSN(ofSegment: 3).advanced(by: 200_000))\tx\n".utf8))
        #expect(throws: SpoolError.self) {
            try append(system, newTimelineSegment(3, count: 20_000), at: size.startLSN(ofSegment: 3), timeline: 2)
        }
    }

    @Test func oldestStoredPositionAndRemovingASystem() throws {
        let temp = TempSpool()
        let (spool, system) = try temp.open()
        #expect(try system.oldestLSN() == nil)
        let start = size.startLSN(ofSegment: 3)
        try append(system, TestWAL.segment(3), at: start)
        try append(system, Array(TestWAL.segment(4)[0..<20_000]), at: size.startLSN(ofSegment: 4))
        try system.sync()
        #expect(try system.oldestLSN() == start)
        try spool.removeSystem(TestWAL.sysid)
        #expect(!FileManager.default.fileExists(atPath: temp.root + "/\(TestWAL.sysid)"))
        let reopened = try spool.system(TestWAL.sysid, segmentSize: size)
        #expect(reopened.position == .empty)
    }

    @Test func aQuotaRefusesANewSegmentLikeAFullDiskAndAllowsItOnceThereIsRoom() throws {
        let temp = TempSpool()
        let spool = try Spool(root: temp.root, quota: 5 * (1 << 19), logger: temp.logger)
        let system = try spool.system(TestWAL.sysid, segmentSize: size)
        try append(system, TestWAL.segment(1), at: size.startLSN(ofSegment: 1))
        try system.sync()
        let next = size.startLSN(ofSegment: 2)
        #expect {
            try append(system, Array(TestWAL.segment(2)[0..<8192]), at: next)
        } throws: { error in
            (error as? SpoolError)?.kind == .diskFull && "\(error)".contains("--spool-max-bytes")
        }
        let capacity = try #require(spool.capacity)
        #expect(capacity.total == 5 * (1 << 19) && capacity.free < 2 * (1 << 20))
        // Room again (the completed segment pruned): the same append goes through.
        let completed =
            temp.walDirectory + "/"
            + SegmentName(timeline: 1, containing: size.startLSN(ofSegment: 1), segmentSize: size).description + ".lz4"
        try FileManager.default.removeItem(atPath: completed)
        try append(system, Array(TestWAL.segment(2)[0..<8192]), at: next)
        #expect(system.position.written == next.advanced(by: 8192))
    }

    @Test func aSegmentWhoseStreamingCompressionFailedIsCompressedFromItsJournal() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg7 = TestWAL.segment(7)
        try append(system, Array(seg7[0..<300_000]), at: size.startLSN(ofSegment: 7))
        // The compressed copy in progress disappears (an operator's clean-up, say): completing it fails once...
        try FileManager.default.removeItem(atPath: temp.walDirectory + "/000000010000000000000007.lz4.tmp")
        #expect(throws: SpoolError.self) {
            try append(system, Array(seg7[300_000...]), at: size.startLSN(ofSegment: 7).advanced(by: 300_000))
        }
        #expect(system.position.durable < size.startLSN(ofSegment: 8))
        // ...and the next write completes it from the journal before going on.
        try append(system, TestWAL.segment(8, count: 8192), at: size.startLSN(ofSegment: 8))
        try system.sync()
        let frame = try Data(contentsOf: URL(fileURLWithPath: temp.walDirectory + "/000000010000000000000007.lz4"))
        #expect(try Array(frame).withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == seg7)
        #expect(try temp.files() == ["000000010000000000000007.lz4", "000000010000000000000008.partial"])
    }
}

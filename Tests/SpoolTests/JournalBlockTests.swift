import Foundation
import LZ4Codec
import NIOCore
import Testing
import WALCore
import WALTestSupport

@testable import Spool

/// Journals that record the sender's LZ4 blocks (format version 2), and version 1 journals left by older receivers.
@Suite struct JournalBlockTests {
    let size = TestWAL.size

    /// Compressible, as WAL is: most of each page after its header is zero.
    static func compressibleSegment(_ number: UInt64, count: Int = 1 << 20) -> [UInt8] {
        TestWAL.segment(number, count: count).enumerated().map { $0.offset % 8192 < 40 || $0.offset % 512 < 64 ? $0.element : 0 }
    }

    static func appendBlock(_ system: SystemSpool, _ bytes: [UInt8], at lsn: LSN) throws {
        let block = LZ4.compressBlock(ByteBuffer(bytes: bytes))
        try bytes.withUnsafeBytes { raw in
            try block.withUnsafeReadableBytes { try system.append(timeline: 1, startLSN: lsn, bytes: raw, compressedBlock: $0) }
        }
    }

    static func fileBytes(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    @Test func theJournalRecordsBlocksAndRecoversTheExactWAL() throws {
        let temp = TempSpool()
        let seg = Self.compressibleSegment(4)
        let start = size.startLSN(ofSegment: 4)
        let path = temp.walDirectory + "/000000010000000000000004.partial"
        do {
            let (_, system) = try temp.open()
            try append(system, Array(seg[0..<10_000]), at: start)  // a raw record (no block came with it)
            try Self.appendBlock(system, Array(seg[10_000..<300_000]), at: start.advanced(by: 10_000))
            try Self.appendBlock(system, Array(seg[300_000..<600_000]), at: start.advanced(by: 300_000))
            try system.sync()
        }
        let journal = try PartialSegment.read(path: path)
        #expect(journal.header.version == 2)
        #expect(journal.wal == Array(seg[0..<600_000]))
        // The blocks are what was written: far fewer bytes than the WAL they hold.
        #expect(journal.journalLength < 10_000 + 590_000 / 3, "journal is \(journal.journalLength) bytes")
        let file = try Self.fileBytes(path)
        #expect(file.firstRange(of: Array("WSPZ".utf8)) != nil)

        let (_, system) = try temp.open()
        #expect(system.position.durable == start.advanced(by: 600_000))
        try Self.appendBlock(system, Array(seg[600_000...]), at: system.position.durable)
        try system.sync()
        #expect(try temp.files() == ["000000010000000000000004.lz4"])
        let frame = try Self.fileBytes(temp.walDirectory + "/000000010000000000000004.lz4")
        #expect(try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == seg)
    }

    @Test func aTornBlockRecordIsCutAndTheRecordsBeforeItKept() throws {
        let temp = TempSpool()
        let seg = Self.compressibleSegment(5)
        let start = size.startLSN(ofSegment: 5)
        let path = temp.walDirectory + "/000000010000000000000005.partial"
        let before: Int
        do {
            let (_, system) = try temp.open()
            try Self.appendBlock(system, Array(seg[0..<200_000]), at: start)
            try system.sync()
            before = try PartialSegment.read(path: path).journalLength
            try Self.appendBlock(system, Array(seg[200_000..<400_000]), at: start.advanced(by: 200_000))
        }
        // A crash mid-write: the second block's last bytes never reached the disk.
        let journal = try PartialSegment.read(path: path)
        #expect(journal.journalLength > before)
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        handle.seek(toFileOffset: UInt64(journal.journalLength - 100))
        handle.write(Data(repeating: 0xAB, count: 100))
        handle.closeFile()

        let (_, system) = try temp.open()
        #expect(system.position.durable == start.advanced(by: 200_000))
        let recovered = try PartialSegment.read(path: path)
        #expect(recovered.wal == Array(seg[0..<200_000]))
        #expect(recovered.journalLength == before)
        #expect(!recovered.hadTornTail)
        try Self.appendBlock(system, Array(seg[200_000...]), at: system.position.durable)
        try system.sync()
        let frame = try Self.fileBytes(temp.walDirectory + "/000000010000000000000005.lz4")
        #expect(try frame.withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == seg)
    }

    @Test func aBlockThatPassesItsCRCButDoesNotDecompressIsCorruptionNotATornTail() throws {
        let temp = TempSpool()
        try FileManager.default.createDirectory(atPath: temp.walDirectory, withIntermediateDirectories: true)
        let path = temp.walDirectory + "/000000010000000000000006.partial"
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid, segment: SegmentName(timeline: 1, number: 6, segmentSize: size))
        let writer = try PartialSegmentWriter(creating: path, header: header, directory: temp.walDirectory, io: .posix)
        let wal = Self.compressibleSegment(6, count: 8192)
        // Not an LZ4 block of 8192 bytes, yet recorded with a valid CRC (as a bug or bad memory would write it).
        let garbage = [UInt8](repeating: 0xFF, count: 64)
        try wal.withUnsafeBytes { raw in try garbage.withUnsafeBytes { try writer.append(offset: 0, raw, block: $0) } }
        try writer.sync()
        #expect {
            try PartialSegment.read(path: path)
        } throws: { error in
            (error as? SpoolError)?.kind == .corrupt && "\(error)".contains("does not decompress")
        }
    }

    @Test func aVersionOneJournalIsReadAndContinuedWithRawRecords() throws {
        let temp = TempSpool()
        let seg = Self.compressibleSegment(7)
        let start = size.startLSN(ofSegment: 7)
        let path = temp.walDirectory + "/000000010000000000000007.partial"
        try FileManager.default.createDirectory(atPath: temp.walDirectory, withIntermediateDirectories: true)
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid,
            segment: SegmentName(timeline: 1, number: 7, segmentSize: size), version: 1)
        do {
            let writer = try PartialSegmentWriter(creating: path, header: header, directory: temp.walDirectory, io: .posix)
            try seg[0..<100_000].withUnsafeBytes { try writer.append(offset: 0, $0) }
            try writer.sync()
        }
        let (_, system) = try temp.open()
        #expect(system.position.durable == start.advanced(by: 100_000))
        // A block arrives, but an older walship could not read a block record in this journal: it stays raw.
        try Self.appendBlock(system, Array(seg[100_000..<500_000]), at: start.advanced(by: 100_000))
        try system.sync()
        let journal = try PartialSegment.read(path: path)
        #expect(journal.header.version == 1)
        #expect(journal.wal == Array(seg[0..<500_000]))
        #expect(try Self.fileBytes(path).firstRange(of: Array("WSPZ".utf8)) == nil)
        let reader = WALRangeReader(spool: system)
        #expect(
            try reader.read(timeline: 1, from: start.advanced(by: 99_000), durableEnd: system.position.durable, maxBytes: 3000)
                == Array(seg[99_000..<102_000]))
    }

    @Test func aJournalFromANewerWalshipIsRefusedWithAClearMessage() throws {
        let temp = TempSpool()
        try FileManager.default.createDirectory(atPath: temp.walDirectory, withIntermediateDirectories: true)
        let path = temp.walDirectory + "/000000010000000000000008.partial"
        let header = PartialSegment.Header(
            systemIdentifier: TestWAL.sysid,
            segment: SegmentName(timeline: 1, number: 8, segmentSize: size), version: 3)
        _ = try PartialSegmentWriter(creating: path, header: header, directory: temp.walDirectory, io: .posix)
        #expect {
            _ = try temp.open()
        } throws: { error in
            "\(error)".contains("unknown partial format version 3") && "\(error)".contains("newer walship")
        }
    }

    /// A spool whose journal for `segment` holds `length` bytes of WAL as 100 kB block records, all durable.
    func blockJournal(
        segment: UInt64, length: Int
    ) throws
        -> (temp: TempSpool, system: SystemSpool, seg: [UInt8], start: LSN, durable: LSN)
    {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let seg = Self.compressibleSegment(segment)
        let start = size.startLSN(ofSegment: segment)
        for piece in stride(from: 0, to: length, by: 100_000) {
            try Self.appendBlock(system, Array(seg[piece..<piece + 100_000]), at: start.advanced(by: UInt64(piece)))
        }
        return (temp, system, seg, start, try system.sync())
    }

    @Test func theStandbyReaderFollowsBlockRecordsFromAnyOffset() throws {
        let (temp, system, seg, start, durable) = try blockJournal(segment: 9, length: 700_000)
        defer { withExtendedLifetime(temp) {} }  // its directory goes with it
        let reader = WALRangeReader(spool: system)
        var read: [UInt8] = []
        var position = start
        while position < durable {
            let bytes = try reader.read(timeline: 1, from: position, durableEnd: durable, maxBytes: 8192)
            #expect(!bytes.isEmpty)
            read += bytes
            position = position.advanced(by: UInt64(bytes.count))
        }
        #expect(read == Array(seg[0..<700_000]))
        // From inside a block record, by a fresh reader (a standby restarting its stream).
        let fresh = WALRangeReader(spool: system)
        #expect(
            try fresh.read(timeline: 1, from: start.advanced(by: 333_333), durableEnd: durable, maxBytes: 5000)
                == Array(seg[333_333..<338_333]))
    }

    /// A record header whose stored length was damaged on disk (here: 4 GiB) must not be believed before its CRC
    /// is checked: the standby reader stops at it without reading, or allocating, gigabytes.
    @Test func theStandbyReaderStopsAtADamagedRecordWithoutBelievingItsLength() throws {
        let (temp, system, seg, start, durable) = try blockJournal(segment: 11, length: 300_000)
        defer { withExtendedLifetime(temp) {} }  // its directory goes with it
        let path = temp.walDirectory + "/00000001000000000000000B.partial"
        let third = try #require(Self.fileBytes(path).ranges(of: Array("WSPZ".utf8)).dropFirst(2).first).lowerBound
        let file = try #require(FileHandle(forUpdatingAtPath: path))
        try file.seek(toOffset: UInt64(third + 12))
        try file.write(contentsOf: [0xF0, 0xFF, 0xFF, 0xFF])  // stored length, little-endian
        try file.close()

        let peakBefore = Self.peakResidentKiB()
        let reader = WALRangeReader(spool: system)
        #expect(try reader.read(timeline: 1, from: start, durableEnd: durable, maxBytes: 200_000) == Array(seg[0..<200_000]))
        let beyond = try? reader.read(timeline: 1, from: start.advanced(by: 200_000), durableEnd: durable, maxBytes: 100_000)
        #expect(beyond?.isEmpty ?? true, "nothing of the damaged record is served")
        #expect(Self.peakResidentKiB() - peakBefore < 512 * 1024, "no allocation the size of the damaged length")
    }

    static func peakResidentKiB() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss
    }

    @Test func aJournalCutAnywhereReadsAsAPrefixOfWholeRecords() throws {
        let temp = TempSpool()
        let seg = Self.compressibleSegment(10)
        let start = size.startLSN(ofSegment: 10)
        let path = temp.walDirectory + "/00000001000000000000000A.partial"
        var ends: [Int: Int] = [:]  // journal length after each record -> WAL bytes held
        do {
            let (_, system) = try temp.open()
            ends[PartialSegment.headerLength] = 0
            for (i, piece) in stride(from: 0, to: 400_000, by: 50_000).enumerated() {
                let bytes = Array(seg[piece..<piece + 50_000])
                if i % 3 == 0 {
                    try append(system, bytes, at: start.advanced(by: UInt64(piece)))
                } else {
                    try Self.appendBlock(system, bytes, at: start.advanced(by: UInt64(piece)))
                }
                try system.sync()
                ends[try PartialSegment.read(path: path).journalLength] = piece + 50_000
            }
        }
        let whole = try Self.fileBytes(path)
        let journalEnd = try #require(ends.keys.max())
        let cut = temp.walDirectory + "/cut.partial"
        for length in stride(from: PartialSegment.headerLength, through: journalEnd, by: 2999) + [journalEnd - 1, journalEnd] {
            _ = FileManager.default.createFile(atPath: cut, contents: Data(whole[0..<length]))
            let contents = try PartialSegment.read(path: cut)
            let expected = try #require(ends.filter { $0.key <= length }.max { $0.key < $1.key })
            #expect(contents.journalLength == expected.key)
            #expect(contents.wal == Array(seg[0..<expected.value]))
        }
    }
}

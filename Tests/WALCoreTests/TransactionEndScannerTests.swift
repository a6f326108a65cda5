import Testing
import WALTestSupport

@testable import WALCore

struct TransactionEndScannerTests {
    static let base = PostgresTimestamp(rawValue: 850_000_000_000_000)

    /// Commits, aborts and other records of many sizes over several pages, with what a scan must find.
    static func sampleWAL() -> (wal: TestWALWriter, ends: [TransactionEnd]) {
        var wal = TestWALWriter(start: TestWAL.size.startLSN(ofSegment: 3))
        var ends: [TransactionEnd] = []
        var seed: UInt32 = 7
        for i in 0..<600 {
            seed = seed &* 1_664_525 &+ 1_013_904_223
            wal.other(bodyLength: Int(seed >> 20) % 300 + (i % 97 == 0 ? 20_000 : 0))
            let time = PostgresTimestamp(rawValue: base.rawValue + Int64(i) * 1_000)
            let committed = i % 5 != 0
            let end = wal.transactionEnd(
                time: time, committed: committed, extraData: Int(seed >> 26), origin: i % 7 == 0,
                topLevelXID: i % 11 == 0, longData: i % 13 == 0
            ).end
            ends.append(TransactionEnd(endLSN: end, time: time, committed: committed))
        }
        return (wal, ends)
    }

    static func scan(_ wal: TestWALWriter, pieces: [Int]? = nil, from: Int = 0) -> (TransactionEndScanner, [TransactionEnd]) {
        var scanner = TransactionEndScanner(fromPage: wal.start.advanced(by: UInt64(from)), segmentSize: wal.segmentSize)
        var found: [TransactionEnd] = []
        wal.bytes.withUnsafeBytes { raw in
            var index = from
            var piece = 0
            while index < raw.count {
                let length = min(pieces.map { $0[piece % $0.count] } ?? raw.count, raw.count - index)
                found += scanner.consume(UnsafeRawBufferPointer(rebasing: raw[index..<index + length]))
                index += length
                piece += 1
            }
        }
        return (scanner, found)
    }

    @Test func findsEveryCommitAndAbortWithItsTimeAndEnd() {
        let (wal, ends) = Self.sampleWAL()
        #expect(wal.bytes.count > 20 * Int(WALPage.size))
        let (scanner, found) = Self.scan(wal)
        #expect(scanner.stopped == nil)
        #expect(found == ends)
        #expect(scanner.position == wal.position)
    }

    @Test func piecesOfAnySizeFindTheSame() {
        let (wal, ends) = Self.sampleWAL()
        for pieces in [[1], [7, 1, 23], [24, 25, 8191], [4096], [40_000, 3]] {
            let (scanner, found) = Self.scan(wal, pieces: pieces)
            #expect(scanner.stopped == nil, "pieces \(pieces)")
            #expect(found == ends, "pieces \(pieces)")
        }
    }

    @Test func aRecordHeaderSplitAcrossPagesIsRead() {
        var wal = TestWALWriter(start: LSN(0x10_0000))
        // Fill the first page so the commit's 24-byte header starts 8 bytes before the page's end.
        let room = Int(WALPage.size) - 40 - 24 - 8
        wal.other(bodyLength: room)
        #expect(wal.position.rawValue % WALPage.size == WALPage.size - 8)
        let time = PostgresTimestamp(rawValue: 42)
        let end = wal.transactionEnd(time: time).end
        #expect(Self.scan(wal).1 == [TransactionEnd(endLSN: end, time: time, committed: true)])
        #expect(Self.scan(wal, pieces: [8, 3]).1 == [TransactionEnd(endLSN: end, time: time, committed: true)])
    }

    @Test func aScanStartingInsideARecordSkipsItsTail() {
        let (wal, ends) = Self.sampleWAL()
        // Each later page start; the records ending after it are found, and nothing before.
        for page in stride(from: Int(WALPage.size), to: wal.bytes.count, by: 5 * Int(WALPage.size)) {
            let pageLSN = wal.start.advanced(by: UInt64(page))
            let (scanner, found) = Self.scan(wal, pieces: [3000], from: page)
            #expect(scanner.stopped == nil)
            let expected = ends.filter { $0.endLSN > pageLSN }
            // A transaction end whose record began before the page is a tail the scan cannot read.
            #expect(found == expected || found == Array(expected.dropFirst()), "from page \(pageLSN)")
        }
    }

    @Test func theLastRecordSaysWhetherAPrimaryStoppedCleanly() {
        var wal = Self.sampleWAL().wal
        let online = wal.checkpoint(online: true)
        var (scanner, _) = Self.scan(wal)
        #expect(scanner.lastRecord == WALRecordMark(start: online.start, end: online.end, isShutdownCheckpoint: false))
        let shutdown = wal.checkpoint()
        (scanner, _) = Self.scan(wal, pieces: [1, 7, 333])
        #expect(scanner.lastRecord == WALRecordMark(start: shutdown.start, end: shutdown.end, isShutdownCheckpoint: true))
        #expect(scanner.position == shutdown.end)
        // WAL written after the shutdown checkpoint (the primary was started again) leaves a plain record last.
        wal.other(bodyLength: 40)
        (scanner, _) = Self.scan(wal)
        #expect(scanner.lastRecord?.isShutdownCheckpoint == false)
    }

    @Test func aWALSwitchSkipsToTheNextSegment() {
        var wal = TestWALWriter(start: TestWAL.size.startLSN(ofSegment: 5))
        let first = wal.transactionEnd(time: PostgresTimestamp(rawValue: 1))
        wal.walSwitch()
        #expect(wal.segmentSize.offset(of: wal.position) == 0)
        wal.other(bodyLength: 100)
        let second = wal.transactionEnd(time: PostgresTimestamp(rawValue: 2))
        let (scanner, found) = Self.scan(wal, pieces: [65536])
        #expect(scanner.stopped == nil)
        #expect(found.map(\.endLSN) == [first.end, second.end])
    }

    /// A switch record that ends exactly at the segment's end leaves nothing to skip: the next segment is read.
    @Test func aWALSwitchEndingAtTheSegmentsEndSkipsNothing() {
        let lastPage = TestWAL.size.startLSN(ofSegment: 6).rawValue - WALPage.size
        var wal = TestWALWriter(start: LSN(lastPage))
        wal.other(bodyLength: Int(WALPage.size) - 24 - 24 - 24)
        wal.walSwitch()
        #expect(wal.position == TestWAL.size.startLSN(ofSegment: 6))
        let commit = wal.transactionEnd(time: PostgresTimestamp(rawValue: 3))
        let (scanner, found) = Self.scan(wal, pieces: [100])
        #expect(scanner.stopped == nil)
        #expect(found.map(\.endLSN) == [commit.end])
    }

    @Test func theEndOfWALStopsTheScanAndSaysWhere() {
        var wal = TestWALWriter(start: LSN(0x20_0000))
        let end = wal.transactionEnd(time: PostgresTimestamp(rawValue: 5)).end
        wal.endOfWAL()
        wal.endOfWAL()  // a whole page of zeros: not a page header
        let (scanner, found) = Self.scan(wal)
        #expect(found.map(\.endLSN) == [end])
        #expect(scanner.stopped == "no WAL record at \(end) (length 0)")
    }

    @Test func aPageFromElsewhereStopsTheScan() {
        var wal = TestWALWriter(start: LSN(0x20_0000))
        wal.other(bodyLength: 9000)
        var bytes = wal.bytes
        // The second page's address field names another page: a stale page, not WAL continuing this one.
        withUnsafeBytes(of: UInt64(0x20_0000 + 3 * 8192).littleEndian) {
            for (i, b) in $0.enumerated() { bytes[8192 + 8 + i] = b }
        }
        var scanner = TransactionEndScanner(fromPage: wal.start, segmentSize: wal.segmentSize)
        _ = bytes.withUnsafeBytes { scanner.consume($0) }
        #expect(scanner.stopped == "no WAL page at 0/202000")
    }

    @Test func aRecordThatDoesNotLinkToThePreviousOneStopsTheScan() {
        var wal = TestWALWriter(start: LSN(0x20_0000))
        wal.other(bodyLength: 50)
        let stray = wal.append(resourceManager: 1, info: 0, body: [255, 8, 1, 0, 0, 0, 0, 0, 0, 0], previous: LSN(0x1234))
        let (scanner, found) = Self.scan(wal)
        #expect(found.isEmpty)
        #expect(scanner.stopped == "the record at \(stray.start) does not follow the one at 0/200028")
    }

    @Test func aRecordPostgreSQLAbandonedAtAPageEndIsSkipped() {
        var wal = TestWALWriter(start: LSN(0x20_0000))
        let first = wal.transactionEnd(time: PostgresTimestamp(rawValue: 1))
        // A record cut at the page's end (the primary crashed before writing the rest; recovery wrote a
        // new page that does not continue it).
        var cut = wal
        cut.other(bodyLength: 12_000)
        var bytes = Array(cut.bytes[0..<Int(WALPage.size)])
        var after = TestWALWriter(start: LSN(0x20_0000 + 8192))
        let second = after.transactionEnd(time: PostgresTimestamp(rawValue: 2))
        bytes += after.bytes
        var scanner = TransactionEndScanner(fromPage: wal.start, segmentSize: wal.segmentSize)
        let found = bytes.withUnsafeBytes { scanner.consume($0) }
        #expect(scanner.stopped == nil)
        #expect(found.map(\.endLSN) == [first.end, second.end])
    }

    @Test func transactionTimeReadsEveryHeaderForm() {
        let time = PostgresTimestamp(rawValue: 0x0102_0304_0506_0708)
        var wal = TestWALWriter(start: LSN(0x20_0000))
        for (origin, top, long) in [(false, false, false), (true, false, false), (false, true, true), (true, true, true)] {
            wal.transactionEnd(time: time, origin: origin, topLevelXID: top, longData: long)
        }
        #expect(Self.scan(wal).1.map(\.time) == [time, time, time, time])
        #expect(TransactionEndScanner.transactionTime([0, 1, 2]) == nil)  // a block reference: not this layout
        #expect(TransactionEndScanner.transactionTime([255, 8, 1, 2]) == nil)  // cut short
    }
}

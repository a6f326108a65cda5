import WALCore

/// Lays out WAL records the way PostgreSQL 15 does: page headers (long on a segment's first page), records
/// aligned to 8, a record's header and body split across pages with the next page saying how much is left.
/// Record bodies are what the test gives; CRCs are not computed (readers here do not check them).
public struct TestWALWriter {
    public let segmentSize: WALSegmentSize
    public let start: LSN
    public private(set) var bytes: [UInt8] = []
    public private(set) var lastRecord: LSN = .invalid
    public var timeline: TimeLineID = 1

    public init(start: LSN, segmentSize: WALSegmentSize = TestWAL.size) {
        precondition(start.rawValue % WALPage.size == 0)
        self.start = start
        self.segmentSize = segmentSize
    }

    public var position: LSN { start.advanced(by: UInt64(bytes.count)) }

    /// Appends a record; returns where it starts and where it ends aligned (what a standby reports after
    /// replaying it).
    @discardableResult
    public mutating func append(
        resourceManager: UInt8, info: UInt8, body: [UInt8], previous: LSN? = nil
    ) -> (
        start: LSN, end: LSN
    ) {
        var record: [UInt8] = []
        func le<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { record.append(contentsOf: $0) } }
        le(UInt32(24 + body.count))
        le(UInt32(1234))  // xl_xid
        le((previous ?? lastRecord).rawValue)
        record.append(info)
        record.append(resourceManager)
        le(UInt16(0))
        le(UInt32(0))  // xl_crc
        record += body
        if position.rawValue % WALPage.size == 0 { pageHeader(remaining: 0) }
        let recordStart = position
        var written = 0
        while written < record.count {
            if position.rawValue % WALPage.size == 0 { pageHeader(remaining: record.count - written) }
            let room = Int(WALPage.size - position.rawValue % WALPage.size)
            let step = min(room, record.count - written)
            bytes += record[written..<written + step]
            written += step
        }
        bytes += [UInt8](repeating: 0, count: Int((8 - position.rawValue % 8) % 8))
        lastRecord = recordStart
        return (recordStart, position)
    }

    /// A commit (or abort) record whose main data starts with `time`, as `xl_xact_commit` does; `before`
    /// block ids (253 origin, 252 top-level xid) come first, and `longData` uses the 4-byte length form.
    @discardableResult
    public mutating func transactionEnd(
        time: PostgresTimestamp, committed: Bool = true, extraData: Int = 12, origin: Bool = false,
        topLevelXID: Bool = false, longData: Bool = false
    ) -> (start: LSN, end: LSN) {
        var body: [UInt8] = []
        if origin { body += [253, 1, 0] }
        if topLevelXID { body += [252, 9, 0, 0, 0] }
        let length = 8 + extraData
        if longData {
            body.append(254)
            withUnsafeBytes(of: UInt32(length).littleEndian) { body.append(contentsOf: $0) }
        } else {
            body += [255, UInt8(length)]
        }
        withUnsafeBytes(of: time.rawValue.littleEndian) { body.append(contentsOf: $0) }
        body += [UInt8](repeating: 0xAB, count: extraData)
        return append(resourceManager: 1, info: committed ? 0x00 : 0x20, body: body)
    }

    /// Any other record: a heap insert's shape (a block reference, then data).
    @discardableResult
    public mutating func other(bodyLength: Int) -> (start: LSN, end: LSN) {
        var body: [UInt8] = [0, 0x20]
        body += [UInt8](repeating: 0x5A, count: max(0, bodyLength - 2))
        return append(resourceManager: 10, info: 0x00, body: body)
    }

    /// An XLOG_CHECKPOINT_SHUTDOWN record (or, with `online`, XLOG_CHECKPOINT_ONLINE): what a clean stop writes last.
    @discardableResult
    public mutating func checkpoint(online: Bool = false) -> (start: LSN, end: LSN) {
        append(resourceManager: 0, info: online ? 0x10 : 0x00, body: [255, 88] + [UInt8](repeating: 0x11, count: 88))
    }

    /// An XLOG_SWITCH record, then the rest of the segment as PostgreSQL leaves it: page headers and zeros.
    public mutating func walSwitch() {
        append(resourceManager: 0, info: 0x40, body: [])
        while segmentSize.offset(of: position) != 0 {
            if position.rawValue % WALPage.size == 0 { pageHeader(remaining: 0) }
            bytes += [UInt8](repeating: 0, count: Int(WALPage.size - position.rawValue % WALPage.size))
        }
    }

    /// Zeros up to the end of the page: where WAL ends.
    public mutating func endOfWAL() {
        bytes += [UInt8](repeating: 0, count: Int(WALPage.size - position.rawValue % WALPage.size))
    }

    private mutating func pageHeader(remaining: Int) {
        var header: [UInt8] = []
        func le<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { header.append(contentsOf: $0) } }
        let long = segmentSize.offset(of: position) == 0
        le(WALPage.magic)
        le(UInt16((remaining > 0 ? 1 : 0) | (long ? 2 : 0)))
        le(timeline)
        le(position.rawValue)
        le(UInt32(remaining))
        le(UInt32(0))
        if long {
            le(UInt64(TestWAL.sysid))
            le(UInt32(segmentSize.bytes))
            le(UInt32(WALPage.size))
        }
        bytes += header
    }
}

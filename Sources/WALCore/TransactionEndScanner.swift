/// The end of a transaction in WAL: a commit or abort record, with the time the primary wrote into it. That
/// time is what PostgreSQL's `pg_last_xact_replay_timestamp()` shows once a standby has replayed the record.
public struct TransactionEnd: Hashable, Sendable {
    /// Where the record ends (aligned, as a standby reports its replay position): replayed once a standby
    /// reports this position or a later one.
    public var endLSN: LSN
    public var time: PostgresTimestamp
    public var committed: Bool

    public init(endLSN: LSN, time: PostgresTimestamp, committed: Bool) {
        self.endLSN = endLSN
        self.time = time
        self.committed = committed
    }
}

/// Where a record lies in WAL, and whether it is a shutdown checkpoint (what a cleanly stopped primary wrote last).
public struct WALRecordMark: Hashable, Sendable {
    public var start: LSN
    /// Aligned to 8, as the primary's flush position and a standby's replay position report it.
    public var end: LSN
    public var isShutdownCheckpoint: Bool

    public init(start: LSN, end: LSN, isShutdownCheckpoint: Bool) {
        self.start = start
        self.end = end
        self.isShutdownCheckpoint = isShutdownCheckpoint
    }
}

/// Finds the commit and abort records in a stream of WAL bytes fed in order, in pieces of any size. It reads
/// page headers and record headers (PostgreSQL 15's layout: `XLogPageHeaderData`, `XLogRecord`) and skips
/// record bodies by their length, reading the body only of transaction ends. It stops, and says why, at
/// anything that is not WAL continuing the WAL before it: a page whose address is not where it lies (the zeros
/// past the end of WAL included), or a record whose header does not link to the previous record.
public struct TransactionEndScanner: Sendable {
    public let segmentSize: WALSegmentSize
    /// The next byte to be fed.
    public private(set) var position: LSN
    /// Why the scan ended; nil while it goes on.
    public private(set) var stopped: String?
    /// The last record read whole: a clean shutdown leaves a shutdown checkpoint last, which is how the DR site
    /// proves it holds everything a stopped primary wrote.
    public private(set) var lastRecord: WALRecordMark?

    private var pageHeader: [UInt8] = []
    private var phase: Phase = .firstPage
    /// Start of the last record read, to check the next one's back link; unknown before the first record.
    private var previousRecord: LSN?

    private enum Phase: Sendable {
        /// Before the first page header: it says whether the page starts inside a record.
        case firstPage
        /// The tail of a record that began before the scan did.
        case continuation(remaining: Int)
        case recordHeader(collected: [UInt8], start: LSN)
        case recordBody(RecordBody)
        /// Bytes that align the next record to 8.
        case padding(remaining: Int)
        /// After a WAL switch record: the rest of the segment holds no records.
        case segmentTail
    }

    private struct RecordBody: Sendable {
        var start: LSN
        var remaining: Int
        var kind: Kind
        /// The first bytes of a transaction end's body: its block headers and the start of its main data.
        var collected: [UInt8] = []
    }

    private enum Kind: Sendable, Equatable {
        case other, walSwitch, shutdownCheckpoint
        case transactionEnd(committed: Bool)
    }

    static let recordHeaderLength = 24
    static let continuationFlag: UInt16 = 0x0001
    static let xactResourceManager: UInt8 = 1
    static let xlogResourceManager: UInt8 = 0
    /// Enough of an `xl_xact_commit`/`xl_xact_abort` record's body for its time: an origin block id (3 bytes),
    /// a top-level xid (5), the main data's header (at most 5) and `xact_time` (8).
    static let bodyBytesNeeded = 21

    /// A scan from `start`, which must be the start of a page.
    public init(fromPage start: LSN, segmentSize: WALSegmentSize) {
        precondition(start.rawValue % WALPage.size == 0, "a scan starts at a page boundary")
        self.segmentSize = segmentSize
        position = start
    }

    /// Reads `bytes`, the WAL from `position` on, and returns the transaction ends whose records they complete.
    public mutating func consume(_ bytes: UnsafeRawBufferPointer) -> [TransactionEnd] {
        var found: [TransactionEnd] = []
        var index = 0
        while index < bytes.count, stopped == nil {
            if case .segmentTail = phase {
                let step = min(Int(segmentSize.bytes - segmentSize.offset(of: position)), bytes.count - index)
                advance(step, &index)
                if segmentSize.offset(of: position) == 0 { phase = .firstPage }
                continue
            }
            if position.rawValue % WALPage.size == 0 || !pageHeader.isEmpty {
                let length = WALPage.headerLength(at: pageStart, segmentSize: segmentSize)
                let step = min(length - pageHeader.count, bytes.count - index)
                pageHeader.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<index + step]))
                advance(step, &index)
                if pageHeader.count == length { readPageHeader() }
                continue
            }
            let available = min(Int(WALPage.size - position.rawValue % WALPage.size), bytes.count - index)
            switch phase {
            case .firstPage, .segmentTail:
                preconditionFailure("handled above")
            case .continuation(let remaining):
                let step = min(remaining, available)
                advance(step, &index)
                phase = remaining > step ? .continuation(remaining: remaining - step) : afterRecord
            case .padding(let remaining):
                let step = min(remaining, available)
                advance(step, &index)
                phase = remaining > step ? .padding(remaining: remaining - step) : nextRecord
            case .recordHeader(var collected, var start):
                if collected.isEmpty { start = position }
                let step = min(Self.recordHeaderLength - collected.count, available)
                collected.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<index + step]))
                advance(step, &index)
                if collected.count == Self.recordHeaderLength {
                    readRecordHeader(collected, start: start, into: &found)
                } else {
                    phase = .recordHeader(collected: collected, start: start)
                }
            case .recordBody(var body):
                let step = min(body.remaining, available)
                if case .transactionEnd = body.kind, body.collected.count < Self.bodyBytesNeeded {
                    let keep = min(step, Self.bodyBytesNeeded - body.collected.count)
                    body.collected.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[index..<index + keep]))
                }
                advance(step, &index)
                body.remaining -= step
                if body.remaining > 0 {
                    phase = .recordBody(body)
                } else {
                    finish(body, into: &found)
                }
            }
        }
        return found
    }

    private var nextRecord: Phase { .recordHeader(collected: [], start: .invalid) }

    /// Where a record's last byte leaves the scan: the next record starts at the next multiple of 8.
    private var afterRecord: Phase {
        let padding = Int((8 - position.rawValue % 8) % 8)
        return padding > 0 ? .padding(remaining: padding) : nextRecord
    }

    private var pageStart: LSN { LSN(position.rawValue - position.rawValue % WALPage.size) }

    private mutating func advance(_ count: Int, _ index: inout Int) {
        index += count
        position = position.advanced(by: UInt64(count))
    }

    private mutating func readPageHeader() {
        let header = pageHeader.withUnsafeBytes { WALPageHeader($0) }
        let address = LSN(position.rawValue - UInt64(pageHeader.count))
        pageHeader = []
        guard let header, header.magic == WALPage.magic, header.pageAddress == address else {
            stopped = "no WAL page at \(address)"
            return
        }
        let continues = header.info & Self.continuationFlag != 0
        switch phase {
        case .firstPage, .continuation:
            // The header's count is what is left of the record, whatever the previous page said.
            phase = continues && header.remainingLength > 0 ? .continuation(remaining: Int(header.remainingLength)) : nextRecord
            if !continues { previousRecord = nil }
        case .recordHeader(let collected, _) where collected.isEmpty:
            if continues { stopped = "the page at \(address) continues a record that had ended" }
        case .recordHeader, .recordBody:
            // A page that does not continue the record in progress starts afresh: PostgreSQL wrote over a record
            // it could not finish (an aborted continuation record).
            if !continues {
                phase = nextRecord
                previousRecord = nil
            }
        case .padding, .segmentTail:
            break
        }
    }

    private mutating func readRecordHeader(_ header: [UInt8], start: LSN, into found: inout [TransactionEnd]) {
        let (totalLength, back, info, resourceManager) = header.withUnsafeBytes {
            (readLE($0, 0, as: UInt32.self), LSN(readLE($0, 8, as: UInt64.self)), $0[16], $0[17])
        }
        guard totalLength >= Self.recordHeaderLength else {
            stopped = "no WAL record at \(start) (length \(totalLength))"
            return
        }
        if let previousRecord, back != previousRecord {
            stopped = "the record at \(start) does not follow the one at \(previousRecord)"
            return
        }
        previousRecord = start
        var kind = Kind.other
        if resourceManager == Self.xactResourceManager {
            // XLOG_XACT_COMMIT, _ABORT, _COMMIT_PREPARED, _ABORT_PREPARED (XLOG_XACT_OPMASK)
            switch info & 0x70 {
            case 0x00, 0x30: kind = .transactionEnd(committed: true)
            case 0x20, 0x40: kind = .transactionEnd(committed: false)
            default: break
            }
        } else if resourceManager == Self.xlogResourceManager {
            switch info & 0xF0 {
            case 0x00: kind = .shutdownCheckpoint  // XLOG_CHECKPOINT_SHUTDOWN
            case 0x40: kind = .walSwitch  // XLOG_SWITCH
            default: break
            }
        }
        let body = RecordBody(start: start, remaining: Int(totalLength) - Self.recordHeaderLength, kind: kind)
        if body.remaining > 0 {
            phase = .recordBody(body)
        } else {
            finish(body, into: &found)
        }
    }

    /// After a record's last byte: its end aligned to 8 is where the next record starts (alignment never
    /// crosses a page: pages are multiples of 8), and what a standby reports once it replayed the record.
    private mutating func finish(_ body: RecordBody, into found: inout [TransactionEnd]) {
        let end = position.advanced(by: UInt64((8 - position.rawValue % 8) % 8))
        lastRecord = WALRecordMark(start: body.start, end: end, isShutdownCheckpoint: body.kind == .shutdownCheckpoint)
        if case .walSwitch = body.kind {
            phase = segmentSize.offset(of: position) == 0 ? .firstPage : .segmentTail
            return
        }
        if case .transactionEnd(let committed) = body.kind, let time = Self.transactionTime(body.collected) {
            found.append(TransactionEnd(endLSN: end, time: time, committed: committed))
        }
        phase = afterRecord
    }

    /// `xact_time` from the start of a transaction end's body: past the optional origin and top-level xid
    /// headers, the main data's header (short or long), then the first 8 bytes of `xl_xact_commit`/`_abort`.
    static func transactionTime(_ body: [UInt8]) -> PostgresTimestamp? {
        var at = 0
        while at < body.count {
            switch body[at] {
            case 253: at += 3  // XLR_BLOCK_ID_ORIGIN, RepOriginId
            case 252: at += 5  // XLR_BLOCK_ID_TOPLEVEL_XID, TransactionId
            case 255:
                at += 2  // XLR_BLOCK_ID_DATA_SHORT, 1-byte length
                return timestamp(body, at)
            case 254:
                at += 5  // XLR_BLOCK_ID_DATA_LONG, 4-byte length
                return timestamp(body, at)
            default: return nil  // a block reference: not a transaction end's layout
            }
        }
        return nil
    }

    private static func timestamp(_ body: [UInt8], _ at: Int) -> PostgresTimestamp? {
        guard at + 8 <= body.count else { return nil }
        return body.withUnsafeBytes { PostgresTimestamp(rawValue: readLE($0, at, as: Int64.self)) }
    }
}

/// WAL page constants of a default PostgreSQL 15 build.
public enum WALPage {
    public static let size: UInt64 = 8192
    /// `XLOG_PAGE_MAGIC` of PostgreSQL 15.
    public static let magic: UInt16 = 0xD110
    public static let shortHeaderLength = 24
    public static let longHeaderLength = 40
    static let longHeaderFlag: UInt16 = 0x0002
    static let allFlags: UInt16 = 0x000F

    /// The header length of the page starting at `pageAddress`: the first page of a segment has the long form.
    public static func headerLength(at pageAddress: LSN, segmentSize: WALSegmentSize) -> Int {
        segmentSize.offset(of: pageAddress) == 0 ? longHeaderLength : shortHeaderLength
    }
}

/// The fields of a WAL page header (`XLogPageHeaderData`, plus the long form's fields on a segment's first page).
public struct WALPageHeader: Hashable, Sendable {
    public var magic: UInt16
    public var info: UInt16
    public var timeline: TimeLineID
    public var pageAddress: LSN
    public var remainingLength: UInt32
    public var systemIdentifier: UInt64?
    public var segmentSize: UInt32?
    public var blockSize: UInt32?

    /// Reads a header from `bytes` (little-endian, as written by x86-64 and arm64 primaries).
    /// `bytes` must hold at least the short header; the long fields are read when the flag says so and bytes allow.
    public init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= WALPage.shortHeaderLength else { return nil }
        magic = readLE(bytes, 0, as: UInt16.self)
        info = readLE(bytes, 2, as: UInt16.self)
        timeline = readLE(bytes, 4, as: UInt32.self)
        pageAddress = LSN(readLE(bytes, 8, as: UInt64.self))
        remainingLength = readLE(bytes, 16, as: UInt32.self)
        if info & WALPage.longHeaderFlag != 0, bytes.count >= WALPage.longHeaderLength {
            systemIdentifier = readLE(bytes, 24, as: UInt64.self)
            segmentSize = readLE(bytes, 32, as: UInt32.self)
            blockSize = readLE(bytes, 36, as: UInt32.self)
        }
    }
}

public enum WALPageError: Error, Hashable, CustomStringConvertible {
    case badMagic(page: LSN, found: UInt16)
    case invalidFlags(page: LSN, info: UInt16)
    case wrongPageAddress(expected: LSN, found: LSN)
    case missingLongHeader(page: LSN)
    case systemIdentifierMismatch(page: LSN, expected: UInt64, found: UInt64)
    case segmentSizeMismatch(page: LSN, expected: UInt64, found: UInt32)
    case blockSizeMismatch(page: LSN, found: UInt32)
    case timelineWentBackwards(page: LSN, previous: TimeLineID, found: TimeLineID)
    case timelineAhead(page: LSN, stream: TimeLineID, found: TimeLineID)

    public var description: String {
        switch self {
        case .badMagic(let page, let found):
            "WAL page at \(page) has magic 0x\(String(found, radix: 16)), expected 0xd110 (PostgreSQL 15)"
        case .invalidFlags(let page, let info):
            "WAL page at \(page) has unknown flag bits 0x\(String(info, radix: 16))"
        case .wrongPageAddress(let expected, let found):
            "WAL page at \(expected) claims address \(found) (misplaced, recycled or stale data)"
        case .missingLongHeader(let page):
            "WAL page at \(page) starts a segment but lacks the long header"
        case .systemIdentifierMismatch(let page, let expected, let found):
            "WAL page at \(page) belongs to system \(found), not \(expected)"
        case .segmentSizeMismatch(let page, let expected, let found):
            "WAL page at \(page) says segment size \(found), expected \(expected)"
        case .blockSizeMismatch(let page, let found):
            "WAL page at \(page) says block size \(found), expected 8192"
        case .timelineWentBackwards(let page, let previous, let found):
            "WAL page at \(page) has timeline \(found) after a page of timeline \(previous)"
        case .timelineAhead(let page, let stream, let found):
            "WAL page at \(page) has timeline \(found), newer than the stream's timeline \(stream)"
        }
    }
}

/// Checks page headers the way PostgreSQL's `XLogReaderValidatePageHeader` does (without record CRCs),
/// so misplaced, foreign or corrupt bytes never reach the spool.
public struct WALPageValidator: Sendable {
    public let systemIdentifier: UInt64
    public let segmentSize: WALSegmentSize
    public let timeline: TimeLineID
    /// The timeline of the last page validated; `xlp_tli` must not go down.
    public private(set) var lastPageTimeline: TimeLineID = 0

    public init(systemIdentifier: UInt64, segmentSize: WALSegmentSize, timeline: TimeLineID) {
        self.systemIdentifier = systemIdentifier
        self.segmentSize = segmentSize
        self.timeline = timeline
    }

    /// Validates the header of the page starting at `pageAddress`. `header` must hold the full header length.
    public mutating func validate(header: UnsafeRawBufferPointer, pageAddress: LSN) throws(WALPageError) {
        precondition(header.count >= WALPage.headerLength(at: pageAddress, segmentSize: segmentSize))
        let h = WALPageHeader(header)!
        guard h.magic == WALPage.magic else { throw .badMagic(page: pageAddress, found: h.magic) }
        guard h.info & ~WALPage.allFlags == 0 else { throw .invalidFlags(page: pageAddress, info: h.info) }
        guard h.pageAddress == pageAddress else { throw .wrongPageAddress(expected: pageAddress, found: h.pageAddress) }
        if segmentSize.offset(of: pageAddress) == 0 {
            guard let sysid = h.systemIdentifier, let segSize = h.segmentSize, let blockSize = h.blockSize else {
                throw .missingLongHeader(page: pageAddress)
            }
            guard sysid == systemIdentifier else {
                throw .systemIdentifierMismatch(page: pageAddress, expected: systemIdentifier, found: sysid)
            }
            guard UInt64(segSize) == segmentSize.bytes else {
                throw .segmentSizeMismatch(page: pageAddress, expected: segmentSize.bytes, found: segSize)
            }
            guard UInt64(blockSize) == WALPage.size else { throw .blockSizeMismatch(page: pageAddress, found: blockSize) }
        }
        guard h.timeline >= lastPageTimeline else {
            throw .timelineWentBackwards(page: pageAddress, previous: lastPageTimeline, found: h.timeline)
        }
        guard h.timeline <= timeline else { throw .timelineAhead(page: pageAddress, stream: timeline, found: h.timeline) }
        lastPageTimeline = h.timeline
    }
}

@inline(__always)
func readLE<T: FixedWidthInteger>(_ bytes: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
    T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
}

/// Validates a segment as its bytes arrive, page header by page header. After a WAL switch PostgreSQL 15
/// zero-fills the rest of the segment (pages without headers); an all-zero header is accepted as the start
/// of that fill, and from then on every byte of the segment must be zero.
public struct WALSegmentValidator: Sendable {
    public private(set) var pages: WALPageValidator
    public let segmentStart: LSN
    /// Offset where the zero fill began, once seen.
    public private(set) var zeroFillStart: Int?

    public init(systemIdentifier: UInt64, segmentSize: WALSegmentSize, timeline: TimeLineID, segmentStart: LSN) {
        pages = WALPageValidator(systemIdentifier: systemIdentifier, segmentSize: segmentSize, timeline: timeline)
        self.segmentStart = segmentStart
    }

    public enum Failure: Error, Hashable, CustomStringConvertible {
        case page(WALPageError)
        case dataAfterZeroFill(at: LSN)

        public var description: String {
            switch self {
            case .page(let error): error.description
            case .dataAfterZeroFill(let lsn): "non-zero WAL at \(lsn) after the segment's end-of-WAL zero fill"
            }
        }
    }

    /// Checks `segment[previousLength...]`, given that `segment[..<previousLength]` was accepted before.
    /// On failure the validator is unchanged.
    public mutating func validate(segment: UnsafeRawBufferPointer, previousLength: Int) throws(Failure) {
        try validate(window: segment, windowStart: 0, previousLength: previousLength)
    }

    /// The same for a window of the segment: `window` holds the segment's bytes from `windowStart` to the end
    /// of what has arrived. `windowStart` must be at or before the start of the page holding `previousLength`
    /// while that page's header is not wholly before `previousLength`, and at or before `previousLength`
    /// otherwise. So a writer keeps at most a page header's bytes, and validates new bytes where they lie.
    public mutating func validate(window: UnsafeRawBufferPointer, windowStart: Int, previousLength: Int) throws(Failure) {
        let page = previousLength / Int(WALPage.size) * Int(WALPage.size)
        let headerEnd = page + WALPage.headerLength(at: segmentStart.advanced(by: UInt64(page)), segmentSize: pages.segmentSize)
        precondition(
            windowStart <= (headerEnd > previousLength ? page : previousLength),
            "the window must hold the current page's header unless it was accepted before")
        var next = self
        try next.check(window, windowStart, previousLength)
        self = next
    }

    private mutating func check(_ window: UnsafeRawBufferPointer, _ base: Int, _ previousLength: Int) throws(Failure) {
        let pageSize = Int(WALPage.size)
        let end = base + window.count
        var page = previousLength / pageSize * pageSize
        while zeroFillStart == nil {
            let address = segmentStart.advanced(by: UInt64(page))
            let headerLength = WALPage.headerLength(at: address, segmentSize: pages.segmentSize)
            if page + headerLength > end { break }
            if page + headerLength > previousLength {
                let header = UnsafeRawBufferPointer(rebasing: window[(page - base)..<(page - base + headerLength)])
                if page > 0 && header.allSatisfy({ $0 == 0 }) {
                    zeroFillStart = page
                    break
                }
                do { try pages.validate(header: header, pageAddress: address) } catch { throw .page(error) }
            }
            page += pageSize
        }
        if let fill = zeroFillStart {
            let from = max(fill, previousLength)
            if from < end, let index = window[(from - base)...].firstIndex(where: { $0 != 0 }) {
                throw .dataAfterZeroFill(at: segmentStart.advanced(by: UInt64(base + index)))
            }
        }
    }
}

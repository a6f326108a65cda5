/// The WAL segment size of a cluster (`initdb --wal-segsize`): a power of two from 1 MiB to 1 GiB.
public struct WALSegmentSize: Hashable, Sendable, CustomStringConvertible {
    public let bytes: UInt64

    public static let `default` = WALSegmentSize(unchecked: 16 * 1024 * 1024)

    public init?(bytes: UInt64) {
        guard bytes >= 1 << 20, bytes <= 1 << 30, bytes & (bytes - 1) == 0 else { return nil }
        self.bytes = bytes
    }

    private init(unchecked bytes: UInt64) { self.bytes = bytes }

    /// Parses PostgreSQL's `SHOW wal_segment_size` answer, e.g. `16MB` or `1GB`.
    public init?(showValue text: String) {
        let units: [(String, UInt64)] = [("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10), ("B", 1)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            guard let number = UInt64(text.dropLast(suffix.count)) else { return nil }
            self.init(bytes: number * factor)
            return
        }
        return nil
    }

    public var description: String { "\(bytes >> 20)MB" }

    /// `XLogSegmentsPerXLogId`: how many segments share one value of the name's middle part.
    var segmentsPerXLogID: UInt64 { 0x1_0000_0000 / bytes }

    public func segmentNumber(of lsn: LSN) -> UInt64 { lsn.rawValue / bytes }
    public func offset(of lsn: LSN) -> UInt64 { lsn.rawValue % bytes }
    public func segmentStart(of lsn: LSN) -> LSN { LSN(lsn.rawValue - lsn.rawValue % bytes) }
    public func startLSN(ofSegment number: UInt64) -> LSN { LSN(number * bytes) }
}

/// A WAL segment file name, `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline and segment number in uppercase hex.
public struct SegmentName: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let timeline: TimeLineID
    public let number: UInt64
    public let segmentSize: WALSegmentSize

    public init(timeline: TimeLineID, number: UInt64, segmentSize: WALSegmentSize) {
        self.timeline = timeline
        self.number = number
        self.segmentSize = segmentSize
    }

    public init(timeline: TimeLineID, containing lsn: LSN, segmentSize: WALSegmentSize) {
        self.init(timeline: timeline, number: segmentSize.segmentNumber(of: lsn), segmentSize: segmentSize)
    }

    /// Parses a 24-hex-digit name; nil for anything else (`.partial`, `.history` and such are not segment names).
    public init?(_ text: some StringProtocol, segmentSize: WALSegmentSize) {
        guard text.count == 24, text.allSatisfy({ $0.isHexDigit && !$0.isLowercase }) else { return nil }
        let chars = Array(text)
        guard let tli = UInt32(String(chars[0..<8]), radix: 16),
            let high = UInt64(String(chars[8..<16]), radix: 16),
            let low = UInt64(String(chars[16..<24]), radix: 16),
            tli != 0, low < segmentSize.segmentsPerXLogID
        else { return nil }
        self.init(timeline: tli, number: high * segmentSize.segmentsPerXLogID + low, segmentSize: segmentSize)
    }

    public var description: String {
        hex8(UInt64(timeline)) + hex8(number / segmentSize.segmentsPerXLogID)
            + hex8(number % segmentSize.segmentsPerXLogID)
    }

    public var startLSN: LSN { segmentSize.startLSN(ofSegment: number) }
    public var endLSN: LSN { segmentSize.startLSN(ofSegment: number + 1) }

    public func next() -> SegmentName {
        SegmentName(timeline: timeline, number: number + 1, segmentSize: segmentSize)
    }

    public static func < (lhs: SegmentName, rhs: SegmentName) -> Bool {
        (lhs.number, lhs.timeline) < (rhs.number, rhs.timeline)
    }
}

/// `TTTTTTTT.history`, the file naming a timeline's ancestry.
public func historyFileName(timeline: TimeLineID) -> String { hex8(UInt64(timeline)) + ".history" }

/// Parses `TTTTTTTT.history`; nil otherwise.
public func timeline(ofHistoryFileName name: String) -> TimeLineID? {
    guard name.hasSuffix(".history"), name.count == 16 else { return nil }
    let hex = name.prefix(8)
    guard hex.allSatisfy({ $0.isHexDigit && !$0.isLowercase }), let tli = UInt32(hex, radix: 16), tli > 1 else {
        return nil
    }
    return tli
}

func hex8(_ value: UInt64) -> String {
    let digits = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

import WALCore

/// How the spool's WAL ends: its end, and the last record there. A primary stopped cleanly writes a shutdown
/// checkpoint last; a spool ending exactly with it holds everything that primary wrote.
public struct SpoolTail: Sendable, Equatable {
    public var timeline: TimeLineID
    public var end: LSN
    /// The last record read whole before `end`; nil when the tail holds none (an empty spool).
    public var lastRecord: WALRecordMark?

    public init(timeline: TimeLineID, end: LSN, lastRecord: WALRecordMark?) {
        self.timeline = timeline
        self.end = end
        self.lastRecord = lastRecord
    }

    /// The spool ends right after a shutdown checkpoint: the primary that wrote it stopped cleanly and nothing
    /// it wrote is missing here.
    public var endsWithCleanShutdown: Bool {
        guard let lastRecord else { return false }
        return lastRecord.isShutdownCheckpoint && lastRecord.end == end
    }
}

extension SpoolReader {
    /// Reads the last segment (and the one before, which a record may have begun in) up to the spool's end.
    public func tail() throws -> SpoolTail {
        let (timeline, end) = try end()
        guard end.isValid, end.rawValue > 0 else { return SpoolTail(timeline: timeline, end: end, lastRecord: nil) }
        let lastSegment = segmentSize.segmentStart(of: LSN(end.rawValue - 1))
        var from = lastSegment
        var wal: [UInt8] = []
        if lastSegment.rawValue >= segmentSize.bytes {
            let previous = LSN(lastSegment.rawValue - segmentSize.bytes)
            // Only a whole segment: a shorter one (the old timeline's tail at a fork) does not run on into the last.
            if let bytes = try segmentWAL(SegmentName(timeline: timeline, containing: previous, segmentSize: segmentSize)),
                bytes.count == Int(segmentSize.bytes)
            {
                wal = bytes
                from = previous
            }
        }
        guard let last = try segmentWAL(SegmentName(timeline: timeline, containing: lastSegment, segmentSize: segmentSize))
        else { return SpoolTail(timeline: timeline, end: end, lastRecord: nil) }
        wal += last
        let length = Int(end.bytesAfter(from))
        var scanner = TransactionEndScanner(fromPage: from, segmentSize: segmentSize)
        wal.withUnsafeBytes { _ = scanner.consume(UnsafeRawBufferPointer(rebasing: $0[0..<min(length, $0.count)])) }
        return SpoolTail(timeline: timeline, end: end, lastRecord: scanner.lastRecord)
    }

    /// A segment's WAL from a completed file or a journal, whichever the spool has.
    private func segmentWAL(_ segment: SegmentName) throws -> [UInt8]? {
        if let journal = try journalWAL(of: segment) { return journal }
        guard FileIO.exists(walDirectory + "/\(segment).lz4") else { return nil }
        return try contents(of: segment.description)?.bytes
    }
}

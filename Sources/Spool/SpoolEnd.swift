import WALCore

/// Where a spool's WAL ends, and on which timeline: the one answer recovery, `SpoolReader`, the standby
/// endpoint (through recovery's position) and `restore-wal` share.
///
/// The spool ends on the highest timeline that holds WAL: it moves to a child timeline only with the child's
/// history file stored and its own WAL up to the fork, so a higher timeline is always the one followed last,
/// however far an older timeline's segment numbers reach (after a failover to a partner that lagged, the old
/// timeline's tail beyond the fork is kept aside at higher numbers). On that timeline it ends in the segment
/// with the highest number; a completed `.lz4` wins over a journal of the same segment (a crash between the
/// rename and the journal's removal leaves both).
public struct SpoolEnd: Equatable, Sendable {
    public var segment: SegmentName
    /// The segment is in progress: its WAL is in the journal (`NAME.partial`), which says how far it goes.
    public var inJournal: Bool

    public var timeline: TimeLineID { segment.timeline }

    /// From the names in a system's `wal/` directory; nil when it holds no WAL.
    public init?(fileNames: [String], segmentSize: WALSegmentSize) {
        func segments(_ suffix: String) -> [SegmentName] {
            fileNames.compactMap { name in
                guard name.hasSuffix(suffix), name.count == 24 + suffix.count else { return nil }
                return SegmentName(name.prefix(24), segmentSize: segmentSize)
            }
        }
        self.init(completed: segments(".lz4"), journals: segments(".partial"))
    }

    /// From the completed segments (`NAME.lz4`) and the journals (`NAME.partial`) a spool holds.
    init?(completed: [SegmentName], journals: [SegmentName]) {
        let candidates =
            completed.map { SpoolEnd(segment: $0, inJournal: false) }
            + journals.map { SpoolEnd(segment: $0, inJournal: true) }
        guard let best = candidates.max(by: { $1.isBeyond($0) }) else { return nil }
        self = best
    }

    init(segment: SegmentName, inJournal: Bool) {
        self.segment = segment
        self.inJournal = inJournal
    }

    private func isBeyond(_ other: SpoolEnd) -> Bool {
        if timeline != other.timeline { return timeline > other.timeline }
        if segment.number != other.segment.number { return segment.number > other.segment.number }
        return other.inJournal && !inJournal
    }
}

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
        var best: SpoolEnd?
        for name in fileNames {
            let inJournal: Bool
            if name.hasSuffix(".partial") {
                inJournal = true
            } else if name.hasSuffix(".lz4") {
                inJournal = false
            } else {
                continue
            }
            guard name.count == 24 + (inJournal ? 8 : 4),
                let segment = SegmentName(name.prefix(24), segmentSize: segmentSize)
            else { continue }
            let candidate = SpoolEnd(segment: segment, inJournal: inJournal)
            if best.map({ candidate.isBeyond($0) }) ?? true { best = candidate }
        }
        guard let best else { return nil }
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

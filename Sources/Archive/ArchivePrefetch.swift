import WALCore

/// What `walship restore-wal --archive` fetches ahead of replay and what its cache drops: replay from the bucket
/// would otherwise wait one round trip per segment. Pure: the caller reads the cache and the history files.
public enum ArchivePrefetch {
    /// The segments to fetch beside `requested`: the next `count` on its timeline, stopping before the segment that
    /// holds the switch point to a newer timeline (PostgreSQL reads that segment, and all after it, under the new
    /// timeline's name), and never past the end of the segment numbers.
    /// `history` is the newest history file PostgreSQL has restored (empty while there is none).
    public static func names(
        after requested: SegmentName, count: Int, history: [TimelineHistoryEntry]
    ) -> [SegmentName] {
        guard count > 0 else { return [] }
        let switchSegment = history.first { $0.parent == requested.timeline }.map {
            requested.segmentSize.segmentNumber(of: $0.switchPoint)
        }
        var names: [SegmentName] = []
        var next = requested
        for _ in 0..<count {
            guard next.number < UInt64.max / requested.segmentSize.bytes - 1 else { break }
            next = next.next()
            if let switchSegment, next.number >= switchSegment { break }
            names.append(next)
        }
        return names
    }

    /// The cache entries (file names) PostgreSQL no longer needs once it asks for `requested`: segments before it
    /// (replay has moved past them), beyond the prefetch window (left by a larger window), on an older timeline
    /// (replay has switched away from it), and anything that is not a segment name (a stray file). What stays is
    /// at most `window` segments per timeline still followed, so the cache is bounded. Dot files are files being written: the caller's.
    public static func evictions(cached: [String], requested: SegmentName, window: Int) -> [String] {
        cached.filter { name in
            guard !name.hasPrefix(".") else { return false }
            guard let segment = SegmentName(name, segmentSize: requested.segmentSize) else { return true }
            return segment.number <= requested.number || segment.number > requested.number + UInt64(max(0, window))
                || segment.timeline < requested.timeline
        }
    }
}

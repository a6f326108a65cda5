import WALCore

/// The last transaction a standby has replayed, and when the primary ended it: found by reading the spool's WAL
/// up to the position the standby reports. Standbys report positions, not times, so this is how the DR site
/// learns the commit time `pg_last_xact_replay_timestamp()` would show on the standby. Each call reads only the
/// WAL after the previous call's position, at most `readPerCall` of it; a standby far ahead of the last scan (or
/// behind it) starts a new scan a segment before its position. Not thread-safe: the caller serialises calls.
public final class ReplayedTransactions {
    private let spool: SystemSpool
    private let reader: WALRangeReader
    private var scanner: TransactionEndScanner?
    /// The newest transaction end at or before the last position asked about.
    private var replayed: TransactionEnd?
    /// Ends the scan has read past that position: a later position may reach them.
    private var ahead: [TransactionEnd] = []
    private var history: (timeline: TimeLineID, entries: [TimelineHistoryEntry])?

    /// How far behind a position the scan may be before it gives up continuity and starts over near it.
    static let maximumGap: UInt64 = 256 << 20
    /// The most WAL one call reads: a standby catching up is followed over several calls.
    static let readPerCall = 16 << 20
    static let readSize = 1 << 20

    public init(spool: SystemSpool) {
        self.spool = spool
        reader = WALRangeReader(spool: spool)
    }

    /// The last transaction end at or before `position`, the furthest a standby has replayed; nil when none
    /// was found in the WAL scanned (which starts a segment before the first position asked about).
    public func lastTransaction(replayedUpTo position: LSN) -> TransactionEnd? {
        guard position.isValid else { return nil }
        if let scanner, scanner.position > position || position.bytesAfter(scanner.position) > Self.maximumGap {
            self.scanner = nil
        }
        if scanner == nil { start(near: position) }
        var read = 0
        while var scanning = scanner, scanning.position < position, scanning.stopped == nil, read < Self.readPerCall {
            let from = scanning.position
            let piece: [UInt8]
            do {
                piece = try reader.read(
                    timeline: timeline(of: from), from: from, durableEnd: position, maxBytes: Self.readSize)
            } catch {
                break  // removed by retention, or not readable now: what was found stands
            }
            guard !piece.isEmpty else { break }
            read += piece.count
            let ends = piece.withUnsafeBytes { scanning.consume($0) }
            scanner = scanning
            ahead.append(contentsOf: ends)
        }
        while let next = ahead.first, next.endLSN <= position {
            replayed = next
            ahead.removeFirst()
        }
        return replayed
    }

    /// A new scan from the start of the segment before `position`'s, when the spool still has it.
    private func start(near position: LSN) {
        replayed = nil
        ahead = []
        let segmentStart = spool.segmentSize.segmentStart(of: position)
        var from = segmentStart
        if segmentStart.rawValue >= spool.segmentSize.bytes {
            let previous = LSN(segmentStart.rawValue - spool.segmentSize.bytes)
            let name = SegmentName(timeline: timeline(of: previous), containing: previous, segmentSize: spool.segmentSize)
            if FileIO.exists(spool.walDirectory + "/\(name).lz4") || FileIO.exists(spool.walDirectory + "/\(name).partial") {
                from = previous
            }
        }
        scanner = TransactionEndScanner(fromPage: from, segmentSize: spool.segmentSize)
    }

    /// The timeline whose segment holds `position`: the newest timeline's own from the segment its parent
    /// left it in (PostgreSQL copies that segment's beginning into the child's first segment), else the
    /// ancestor's, as its history file says.
    private func timeline(of position: LSN) -> TimeLineID {
        let current = spool.position.timeline
        if history?.timeline != current {
            let path = spool.walDirectory + "/" + historyFileName(timeline: current)
            let entries =
                (try? FileIO.readWholeFile(path, maxBytes: 1 << 20)).flatMap {
                    try? parseTimelineHistory(String(decoding: $0, as: UTF8.self))
                } ?? []
            history = (current, entries)
        }
        let segment = spool.segmentSize.segmentNumber(of: position)
        for entry in history?.entries ?? [] where segment < spool.segmentSize.segmentNumber(of: entry.switchPoint) {
            return entry.parent
        }
        return current
    }
}

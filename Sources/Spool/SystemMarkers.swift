import Foundation
import WALCore

/// `ROOT/<system>/primary.json`: what the receiver last knew of the primary and of its own
/// acknowledgements. Written about once a second (not on the WAL path), read by `walship promote` and
/// `walship drill` to measure RPO after the primary is gone.
public struct PrimaryProgressRecord: Codable, Sendable, Equatable {
    /// The primary's end of WAL as last reported (WAL frames and keepalives).
    public var primaryLSN: String?
    /// The primary's clock at that report.
    public var primaryTime: Date?
    public var timeline: UInt32
    /// The durable position the receiver last acknowledged: the sender can have told the primary no more.
    public var acknowledgedLSN: String?
    public var acknowledgedAt: Date?
    public var senderName: String?
    public var synchronous: Bool?
    public var updatedAt: Date
    /// The receiver's clock when the primary was last heard: a frame of the stream link, or the sender's own last
    /// contact as its verdict reported it. What `walship promote` times the link's silence from when the receiver is
    /// down.
    public var primaryLastHeardAt: Date?
    /// The receiver's `--link-timeout`, in seconds: the silence after which a primary counts as lost.
    public var linkTimeoutSeconds: Double?

    public init(
        primaryLSN: String?, primaryTime: Date?, timeline: UInt32, acknowledgedLSN: String?, acknowledgedAt: Date?,
        senderName: String?, synchronous: Bool?, updatedAt: Date, primaryLastHeardAt: Date? = nil,
        linkTimeoutSeconds: Double? = nil
    ) {
        self.primaryLastHeardAt = primaryLastHeardAt
        self.linkTimeoutSeconds = linkTimeoutSeconds
        self.primaryLSN = primaryLSN
        self.primaryTime = primaryTime
        self.timeline = timeline
        self.acknowledgedLSN = acknowledgedLSN
        self.acknowledgedAt = acknowledgedAt
        self.senderName = senderName
        self.synchronous = synchronous
        self.updatedAt = updatedAt
    }

    static func path(_ systemDirectory: String) -> String { systemDirectory + "/primary.json" }

    /// This record, with what a receiver started afresh has not learnt yet taken from `earlier` (the file it found):
    /// a restart after the primary was lost must not wipe the last report and acknowledgement that promote and
    /// drill measure from. Positions are carried only on the same timeline, each with its own time.
    public func carryingOver(_ earlier: PrimaryProgressRecord?) -> PrimaryProgressRecord {
        guard let earlier else { return self }
        var record = self
        if earlier.timeline == timeline {
            if primaryLSN == nil && primaryTime == nil {
                record.primaryLSN = earlier.primaryLSN
                record.primaryTime = earlier.primaryTime
            }
            if acknowledgedLSN == nil && acknowledgedAt == nil {
                record.acknowledgedLSN = earlier.acknowledgedLSN
                record.acknowledgedAt = earlier.acknowledgedAt
            }
        }
        record.senderName = senderName ?? earlier.senderName
        record.synchronous = synchronous ?? earlier.synchronous
        record.primaryLastHeardAt = primaryLastHeardAt ?? earlier.primaryLastHeardAt
        return record
    }

    public static func load(systemDirectory: String, io: FileIO = .posix) throws -> PrimaryProgressRecord? {
        try loadJSON(path(systemDirectory), io: io)
    }

    public func save(systemDirectory: String, io: FileIO = .posix) throws {
        try saveJSON(self, to: Self.path(systemDirectory), directory: systemDirectory, io: io)
    }
}

/// `ROOT/<system>/FENCED`: the DR replica of this system was promoted. The receiver refuses WAL from the
/// old primary (which must not extend the old timeline at the DR site) until the file is removed after
/// re-seeding, or `walship receive --force` is given. Once the promotion is done the record also holds the
/// promoted timeline's history, and WAL proven to descend from that timeline (the new primary's) passes.
public struct FenceRecord: Codable, Sendable, Equatable {
    public var promotedAt: Date
    public var promotedTimeline: UInt32?
    public var replayedLSN: String?
    /// Who promoted: "walship promote" and the data directory.
    public var by: String
    /// The timeline the replica left, and where the promoted timeline begins on it (the promoted timeline's
    /// history file's last line), for the reader; `timelineHistory` is what the receiver checks.
    public var parentTimeline: UInt32?
    public var switchPoint: String?
    /// The promoted timeline's history file, as PostgreSQL wrote it.
    public var timelineHistory: String?

    public init(
        promotedAt: Date, promotedTimeline: UInt32?, replayedLSN: String?, by: String, parentTimeline: UInt32? = nil,
        switchPoint: String? = nil, timelineHistory: String? = nil
    ) {
        self.promotedAt = promotedAt
        self.promotedTimeline = promotedTimeline
        self.replayedLSN = replayedLSN
        self.by = by
        self.parentTimeline = parentTimeline
        self.switchPoint = switchPoint
        self.timelineHistory = timelineHistory
    }

    /// The promoted timeline's lineage, when the record holds it whole and consistent; nil (refuse everything)
    /// for a record written before the promotion finished, or by an older walship.
    public var lineage: PromotedLineage? {
        guard let promotedTimeline, let timelineHistory,
            let entries = try? parseTimelineHistory(timelineHistory),
            let lineage = PromotedLineage(timeline: promotedTimeline, history: entries)
        else { return nil }
        if let parentTimeline, parentTimeline != lineage.fencedTimeline { return nil }
        if let switchPoint, LSN(switchPoint) != lineage.switchPoint { return nil }
        return lineage
    }

    /// Records the promoted timeline and its history file (`TTTTTTTT.history` of `timeline`); the record is
    /// left as it was when the file is not the history of `timeline`.
    public mutating func recordPromotion(timeline: UInt32, historyFile: String) throws {
        let entries = try parseTimelineHistory(historyFile)
        guard let lineage = PromotedLineage(timeline: timeline, history: entries) else {
            throw SpoolError(.corrupt, "the history file of timeline \(timeline) names no older timeline")
        }
        promotedTimeline = timeline
        parentTimeline = lineage.fencedTimeline
        switchPoint = lineage.switchPoint.description
        timelineHistory = historyFile
    }

    public static func path(_ systemDirectory: String) -> String { systemDirectory + "/FENCED" }

    public static func exists(systemDirectory: String) -> Bool { FileIO.exists(path(systemDirectory)) }

    public static func load(systemDirectory: String) throws -> FenceRecord? {
        try loadJSON(path(systemDirectory))
    }

    public func save(systemDirectory: String) throws {
        try saveJSON(self, to: Self.path(systemDirectory), directory: systemDirectory)
    }
}

/// `ROOT/receiver.json`: where the receiver serves standbys, so `walship promote` can tell a walship
/// replica from any other standby.
public struct ReceiverRecord: Codable, Sendable, Equatable {
    public var listen: String
    public var standbyListen: String?
    public var pid: Int32
    public var startedAt: Date

    public init(listen: String, standbyListen: String?, pid: Int32, startedAt: Date) {
        self.listen = listen
        self.standbyListen = standbyListen
        self.pid = pid
        self.startedAt = startedAt
    }

    static func path(_ root: String) -> String { root + "/receiver.json" }

    public static func load(root: String) throws -> ReceiverRecord? { try loadJSON(path(root)) }

    public func save(root: String) throws { try saveJSON(self, to: Self.path(root), directory: root) }
}

func loadJSON<T: Decodable>(_ path: String, io: FileIO = .posix) throws -> T? {
    guard io.exists(path) else { return nil }
    let bytes = try io.readWholeFile(path, maxBytes: 1 << 16)
    do { return try JSONDecoder.walship.decode(T.self, from: Data(bytes)) } catch {
        throw SpoolError(.corrupt, "\(path) is damaged: \(error)")
    }
}

/// Mode 0644: `FENCED` is written by `walship promote`, often as root, and must stay readable by a receiver
/// running as the PostgreSQL OS user; the spool directory's 0750 keeps others out all the same.
func saveJSON<T: Encodable>(_ value: T, to path: String, directory: String, io: FileIO = .posix) throws {
    let data = try JSONEncoder.walship.encode(value)
    try Array(data).withUnsafeBytes { try io.writeAtomically($0, to: path, directory: directory, mode: 0o644) }
}

extension SpoolReader {
    /// The end of the WAL the spool holds on its newest timeline, including the in-progress segment:
    /// everything a standby fed from this spool can replay.
    public func end() throws -> (timeline: TimeLineID, lsn: LSN) {
        guard let end = SpoolEnd(fileNames: try FileIO.listDirectory(walDirectory), segmentSize: segmentSize) else {
            return (try newestTimeline(), .invalid)
        }
        guard end.inJournal else { return (end.timeline, end.segment.endLSN) }
        let wal = try PartialSegment.read(path: walDirectory + "/\(end.segment).partial").wal
        return (end.timeline, end.segment.startLSN.advanced(by: UInt64(wal.count)))
    }

    /// The system's directory in the spool.
    public var systemDirectory: String { String(walDirectory.dropLast("/wal".count)) }
}

extension Spool {
    /// Bytes the spool's files take on disk (a walk of the tree: call it now and then, not per request).
    public func diskUsage() -> UInt64 {
        let total = io.fs.diskUsage(root)
        measuredUsage.withLock { $0 = total }
        return total
    }
}

import Foundation
import WALCore

/// One line of `ROOT/<system>/audit.log` about the replication mode: either a sender's report of how the primary
/// treats the DR link (`event` "mode"), or a link starting (`event` "link", which says what the sender promised and
/// whether it reports its mode at all). A promotion report reads these to say what it can prove; nothing else
/// knows whether the primary waited for the DR site.
public struct ModeHistoryEntry: Codable, Sendable, Equatable {
    public enum Event: String, Codable, Sendable {
        case mode, link
    }

    public var event: Event
    /// Nil for a link from a sender that reports its mode itself (its first mode entry follows).
    public var mode: ReplicationMode?
    /// When it took effect: the primary's clock for a mode report, the receiver's for a link.
    public var at: Date
    /// The primary's WAL position when it took effect, when known.
    public var lsn: String?
    public var timeline: UInt32?
    /// `pg_stat_replication.sync_state` as the sender read it.
    public var syncState: String?
    /// The primary's default `synchronous_commit`.
    public var synchronousCommit: String?
    /// The sender's `--sync`.
    public var synchronousRequested: Bool?
    /// What the sender does when the DR site is away: "none", "block", "degrade-after N s"; nil when the sender
    /// does not say (ship protocol version 1).
    public var receiverLoss: String?
    /// While degraded: acknowledged WAL the DR site lacks.
    public var exposureBytes: UInt64?
    public var protocolVersion: UInt16?
    public var sender: String?
    public var detail: String?
    /// When the receiver wrote the line.
    public var recordedAt: Date

    public init(
        event: Event, mode: ReplicationMode?, at: Date, lsn: String? = nil, timeline: UInt32? = nil,
        syncState: String? = nil, synchronousCommit: String? = nil, synchronousRequested: Bool? = nil,
        receiverLoss: String? = nil, exposureBytes: UInt64? = nil, protocolVersion: UInt16? = nil,
        sender: String? = nil, detail: String? = nil, recordedAt: Date
    ) {
        self.event = event
        self.mode = mode
        self.at = at
        self.lsn = lsn
        self.timeline = timeline
        self.syncState = syncState
        self.synchronousCommit = synchronousCommit
        self.synchronousRequested = synchronousRequested
        self.receiverLoss = receiverLoss
        self.exposureBytes = exposureBytes
        self.protocolVersion = protocolVersion
        self.sender = sender
        self.detail = detail
        self.recordedAt = recordedAt
    }
}

/// Where the mode history stands: the newest mode and since when it has held, and the newest link.
public struct CurrentMode: Sendable, Equatable {
    public private(set) var latest: ModeHistoryEntry?
    /// When the mode of `latest` began: the first of the entries in a row that had it.
    public private(set) var since: Date?
    public private(set) var link: ModeHistoryEntry?

    public init() {}

    public init(_ entries: [ModeHistoryEntry]) {
        for entry in entries { add(entry) }
    }

    public var mode: ReplicationMode? { latest?.mode }

    public mutating func add(_ entry: ModeHistoryEntry) {
        if entry.event == .link { link = entry }
        guard let mode = entry.mode else { return }
        if latest?.mode != mode { since = entry.at }
        latest = entry
    }
}

/// The mode entries of a system's audit log, oldest first.
public enum ModeHistory {
    public static func path(systemDirectory: String) -> String { systemDirectory + "/audit.log" }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    static func line(_ entry: ModeHistoryEntry) throws -> [UInt8] {
        Array(try encoder.encode(entry)) + [UInt8(ascii: "\n")]
    }

    /// Every mode and link entry in `text`. A line that is not one (another event, or the torn tail of a line a
    /// crash interrupted before its fsync, which was never relied on) is skipped.
    public static func entries(in text: String) -> [ModeHistoryEntry] {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return text.split(separator: "\n").compactMap { line in
            try? decoder.decode(ModeHistoryEntry.self, from: Data(line.utf8))
        }
    }

    /// The system's entries, oldest first; empty when it has no audit log yet.
    public static func load(systemDirectory: String) throws -> [ModeHistoryEntry] {
        let path = path(systemDirectory: systemDirectory)
        guard FileIO.exists(path) else { return [] }
        let bytes = try FileIO.readWholeFile(path, maxBytes: 256 << 20)
        return entries(in: String(decoding: bytes, as: UTF8.self))
    }
}

extension SystemSpool {
    /// Appends `entry` to the system's audit log and makes it durable before returning. Runs on the system's
    /// spool thread, like its WAL: the fsync must not hold up another system's link.
    public func record(_ entry: ModeHistoryEntry) throws {
        try io.appendDurably(try ModeHistory.line(entry), to: ModeHistory.path(systemDirectory: directory))
    }
}

extension ModeHistory {
    /// Appends an operator's event (not a mode or link entry: a switchover the peer asked for) to the audit log of
    /// `system` in the spool at `root`, or to the spool's own audit log when the system is not known, durably. One
    /// O_APPEND write of a whole line, so it may run beside the receiver's own appends.
    public static func recordEvent(_ fields: [String: String], system: String?, root: String) throws {
        var fields = fields
        fields["recordedAt"] = ISO8601DateFormatter().string(from: Date())
        let line = try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys, .withoutEscapingSlashes])
        let directory = system.map { root + "/" + $0 } ?? root
        let path = FileIO.posix.exists(directory) ? path(systemDirectory: directory) : root + "/audit.log"
        let created = !FileIO.posix.exists(path)
        try FileIO.posix.appendDurably(Array(line) + [UInt8(ascii: "\n")], to: path)
        // Written by root (an operator's command), a new log still belongs to the spool's owner, who appends next.
        var owner = stat()
        if created, geteuid() == 0, stat(parentDirectory(of: path), &owner) == 0 {
            _ = chown(path, owner.st_uid, owner.st_gid)
        }
    }
}

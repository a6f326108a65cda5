import Foundation

/// What `GET /status` returns, for the sender and the receiver alike (docs/monitoring.md documents every
/// field). Built from redacted values only: no passwords, keys or conninfo secrets.
public struct StatusDocument: Codable, Sendable, Equatable {
    /// Bumped when a field changes meaning or disappears; new fields do not bump it.
    public var schemaVersion = 1
    /// "sender" or "receiver".
    public var role: String
    public var version: String
    public var host: String
    public var generatedAt: Date
    public var process: ProcessStatus
    /// What the process is doing, e.g. "streaming", "retrying", "listening".
    public var state: String
    public var stateSince: Date
    public var lastError: String?
    /// Overall verdict, the same one `walship status` turns into its exit code.
    public var health: Health
    /// Conditions currently firing (see docs/monitoring.md for the list).
    public var alerts: [ActiveAlert]
    public var systems: [SystemStatus]
    /// Receiver only: the spool's file system.
    public var spool: SpoolUsage?
    /// Sender only.
    public var sender: SenderDetails?
    /// Receiver only.
    public var receiver: ReceiverDetails?
    /// The TLS certificates this process uses (read at its start), with their expiry. Absent without TLS.
    public var certificates: [CertificateStatus]?

    public init(
        role: String, version: String, host: String, generatedAt: Date, process: ProcessStatus, state: String,
        stateSince: Date, lastError: String? = nil, health: Health = Health(), alerts: [ActiveAlert] = [],
        systems: [SystemStatus] = [], spool: SpoolUsage? = nil, sender: SenderDetails? = nil,
        receiver: ReceiverDetails? = nil
    ) {
        self.role = role
        self.version = version
        self.host = host
        self.generatedAt = generatedAt
        self.process = process
        self.state = state
        self.stateSince = stateSince
        self.lastError = lastError
        self.health = health
        self.alerts = alerts
        self.systems = systems
        self.spool = spool
        self.sender = sender
        self.receiver = receiver
    }

    public struct CertificateStatus: Codable, Sendable, Equatable {
        /// "link" (--tls-cert), "link CA" (--tls-ca), "standby endpoint" (--standby-tls-cert).
        public var use: String
        public var path: String
        public var subject: String
        public var notValidAfter: Date
        public init(use: String, path: String, subject: String, notValidAfter: Date) {
            self.use = use
            self.path = path
            self.subject = subject
            self.notValidAfter = notValidAfter
        }
    }

    public struct ProcessStatus: Codable, Sendable, Equatable {
        public var pid: Int32
        public var startedAt: Date
        public var residentMemoryBytes: UInt64?
        public init(pid: Int32, startedAt: Date, residentMemoryBytes: UInt64?) {
            self.pid = pid
            self.startedAt = startedAt
            self.residentMemoryBytes = residentMemoryBytes
        }
    }

    public struct Health: Codable, Sendable, Equatable {
        /// "ok", "warning", "critical" or "unknown".
        public var status: String
        public var reasons: [String]
        public init(status: String = "ok", reasons: [String] = []) {
            self.status = status
            self.reasons = reasons
        }
    }

    public struct ActiveAlert: Codable, Sendable, Equatable {
        public var condition: String
        public var severity: String
        public var system: String?
        public var since: Date
        public var message: String
        public init(condition: String, severity: String, system: String?, since: Date, message: String) {
            self.condition = condition
            self.severity = severity
            self.system = system
            self.since = since
            self.message = message
        }
    }

    public struct SystemStatus: Codable, Sendable, Equatable {
        public var systemIdentifier: String?
        public var timeline: UInt32?
        public var link: LinkStatus
        /// primary → sent → received → durable → replayed, in that order; a stage this process cannot see
        /// has no LSN.
        public var chain: [Stage]
        /// Seconds the primary's clock is ahead of ours (negative: behind), from the newest WAL timestamp.
        /// Lag in seconds is computed in the primary's clock, so skew does not distort it.
        public var clockSkewSeconds: Double?
        /// Set once the DR replica of this system was promoted: the receiver refuses the old primary's WAL.
        public var fence: Fence?
        public var standbys: [Standby]
        /// Recent lag of the furthest stage this process sees (replayed if any standby reports, else durable).
        public var history: [LagPoint]
        /// Set while this system's spool takes and acknowledges no WAL: a failed fsync stopped it, or it lacks
        /// WAL it had acknowledged and was not started. What happened, with a hint.
        public var spoolFailure: String?
        /// How the primary treats the DR link, from the mode history in the spool.
        public var mode: ModeStatus?
        /// Receiver only: whether promoting the DR replica is safe as far as the DR site can tell, and why
        /// (`PromotionReadiness`); what `walship promote` asks through the control socket.
        public var promotion: ReadinessReport?
        /// Receiver only: when the primary ended the last transaction the furthest standby has replayed (its
        /// commit or abort record's time, in the primary's clock: what `pg_last_xact_replay_timestamp()` shows
        /// on that standby), and where that record ends. Read from the spool's WAL.
        public var lastReplayedCommitTime: Date?
        public var lastReplayedCommitLSN: String?
        /// Receiver only: the newest complete base backup in the spool (what a restore would start from), or
        /// nil when there is none; the `backup_age` alert and `walship backup --if-older-than` judge its age.
        public var newestBackup: NewestBackup?
        /// Receiver with `--archive` only: what of this system's spool is not in the object store yet, and the
        /// archiver's last error.
        public var archive: ArchiveStatus?

        public init(
            systemIdentifier: String?, timeline: UInt32?, link: LinkStatus, chain: [Stage],
            clockSkewSeconds: Double? = nil, fence: Fence? = nil, standbys: [Standby] = [], history: [LagPoint] = []
        ) {
            self.systemIdentifier = systemIdentifier
            self.timeline = timeline
            self.link = link
            self.chain = chain
            self.clockSkewSeconds = clockSkewSeconds
            self.fence = fence
            self.standbys = standbys
            self.history = history
        }

        public func stage(_ name: StageName) -> Stage? { chain.first { $0.name == name.rawValue } }

        /// The furthest stage with a position: what a disaster would leave at the DR site right now.
        public var lastStage: Stage? {
            for name in [StageName.replayed, .durable] {
                if let stage = stage(name), stage.lsn != nil { return stage }
            }
            return nil
        }
    }

    public enum StageName: String, Codable, Sendable, CaseIterable {
        case primary, sent, received, durable, replayed
    }

    public struct Stage: Codable, Sendable, Equatable {
        public var name: String
        public var lsn: String?
        public var bytesBehind: UInt64?
        public var secondsBehind: Double?
        public init(name: String, lsn: String?, bytesBehind: UInt64?, secondsBehind: Double?) {
            self.name = name
            self.lsn = lsn
            self.bytesBehind = bytesBehind
            self.secondsBehind = secondsBehind
        }
    }

    public struct LinkStatus: Codable, Sendable, Equatable {
        public var connected: Bool
        public var peer: String?
        public var senderName: String?
        public var synchronous: Bool?
        public var connectedAt: Date?
        /// Since when the link is down (nil while connected, or when it never came up in this process).
        public var disconnectedSince: Date?
        /// Seconds since the last frame from the other end (link) and from the primary (WAL or keepalive).
        public var lastMessageAgeSeconds: Double?
        public var lastPrimaryMessageAgeSeconds: Double?
        public init(
            connected: Bool, peer: String? = nil, senderName: String? = nil, synchronous: Bool? = nil,
            connectedAt: Date? = nil, disconnectedSince: Date? = nil, lastMessageAgeSeconds: Double? = nil,
            lastPrimaryMessageAgeSeconds: Double? = nil
        ) {
            self.connected = connected
            self.peer = peer
            self.senderName = senderName
            self.synchronous = synchronous
            self.connectedAt = connectedAt
            self.disconnectedSince = disconnectedSince
            self.lastMessageAgeSeconds = lastMessageAgeSeconds
            self.lastPrimaryMessageAgeSeconds = lastPrimaryMessageAgeSeconds
        }
    }

    /// The system's FENCED record as the status shows it. The promoted timeline's history text stays in the record:
    /// it grows by a line per timeline the system ever had, and its last line is what the fields here already say.
    public struct Fence: Codable, Sendable, Equatable {
        public var promotedAt: Date
        public var promotedTimeline: UInt32?
        public var replayedLSN: String?
        /// When the old primary's sender was last turned away.
        public var lastRefusedAt: Date?
        /// The timeline the DR replica left, and where the promoted timeline begins on it.
        public var parentTimeline: UInt32?
        public var switchPoint: String?
        /// Whether the record holds the promoted timeline's history whole, so that WAL and base backups proven to
        /// descend from it (the new primary's) pass the fence; false: every link of the system is refused, the new
        /// primary's too.
        /// Nil from a receiver older than this field.
        public var lineageRecorded: Bool?

        public init(
            promotedAt: Date, promotedTimeline: UInt32?, replayedLSN: String?, lastRefusedAt: Date? = nil,
            parentTimeline: UInt32? = nil, switchPoint: String? = nil, lineageRecorded: Bool? = nil
        ) {
            self.promotedAt = promotedAt
            self.promotedTimeline = promotedTimeline
            self.replayedLSN = replayedLSN
            self.lastRefusedAt = lastRefusedAt
            self.parentTimeline = parentTimeline
            self.switchPoint = switchPoint
            self.lineageRecorded = lineageRecorded
        }

        /// The fence in words, after "FENCED: " in `walship status`.
        public var summary: String {
            var text = "the DR replica was promoted at \(formatISO8601(promotedAt))"
            if let promotedTimeline {
                text += " to timeline \(promotedTimeline)"
                if let parentTimeline, let switchPoint {
                    text += " (from timeline \(parentTimeline) at \(switchPoint))"
                }
            }
            text += "; the old primary's WAL is refused"
            switch lineageRecorded {
            case true?: text += "; WAL and backups proven to descend from the promoted timeline pass"
            case false?: text += ", and the new primary's too: the fence records no promoted timeline history"
            case nil: break
            }
            return text
        }
    }

    /// The archive tier for one system (docs/archive.md): the lag is what the spool holds and the store has not
    /// confirmed (size and checksum read back), in objects, bytes and the age of the oldest.
    public struct ArchiveStatus: Codable, Sendable, Equatable {
        /// `s3://BUCKET/PREFIX/<system id>/`.
        public var destination: String
        /// Completed segments and history files not yet confirmed in the store.
        public var lagSegments: Int
        public var lagBytes: UInt64
        /// Seconds since the oldest of them was completed in the spool; nil when none waits.
        public var lagSeconds: Double?
        /// Objects confirmed in the store (found there at start, or uploaded since).
        public var archivedObjects: Int
        public var lastArchived: String?
        public var lastArchivedAt: Date?
        /// The last failure (upload, read-back, listing), kept after later successes for the record.
        public var lastError: String?
        public var lastErrorAt: Date?
        /// Set while the store has failed every attempt since then (cleared by the next success).
        public var failingSince: Date?
        public var consecutiveFailures: Int
        /// True once `consecutiveFailures` reached the archiver's threshold: `archive_failing` fires.
        public var failing: Bool
        /// When the next attempt is due after a failure (backoff); nil when not waiting.
        public var retryAt: Date?
        /// The keyring key new objects are encrypted with (`--encryption-keyring`); nil: not encrypted.
        public var encryptionKeyID: String?
        /// With `--archive-retain-days`/`--archive-retain-backups`: objects retention deleted since the receiver
        /// started, and deletes the store refused (object lock, a bucket policy); nil without retention.
        public var retentionDeletedObjects: Int?
        public var retentionRefusedObjects: Int?
        /// Of the deleted objects, those the bucket kept as older versions behind a delete marker (versioning, object
        /// lock): gone from listings and restores, their data still stored.
        public var retentionDeleteMarkers: Int?
        public var retentionLastRunAt: Date?
        /// Why the last retention pass stopped short (a listing or a record that could not be read); nil when it ran.
        public var retentionLastError: String?

        public init(
            destination: String, lagSegments: Int, lagBytes: UInt64, lagSeconds: Double?, archivedObjects: Int,
            lastArchived: String? = nil, lastArchivedAt: Date? = nil, lastError: String? = nil, lastErrorAt: Date? = nil,
            failingSince: Date? = nil, consecutiveFailures: Int = 0, failing: Bool = false, retryAt: Date? = nil
        ) {
            self.destination = destination
            self.lagSegments = lagSegments
            self.lagBytes = lagBytes
            self.lagSeconds = lagSeconds
            self.archivedObjects = archivedObjects
            self.lastArchived = lastArchived
            self.lastArchivedAt = lastArchivedAt
            self.lastError = lastError
            self.lastErrorAt = lastErrorAt
            self.failingSince = failingSince
            self.consecutiveFailures = consecutiveFailures
            self.failing = failing
            self.retryAt = retryAt
        }
    }

    public struct NewestBackup: Codable, Sendable, Equatable {
        public var id: String
        /// When the receiver stored it, after its data ended (its `backup.json` createdAt).
        public var takenAt: Date
        public var stopLSN: String

        public init(id: String, takenAt: Date, stopLSN: String) {
            self.id = id
            self.takenAt = takenAt
            self.stopLSN = stopLSN
        }
    }

    public struct Standby: Codable, Sendable, Equatable {
        public var name: String
        public var connected: Bool
        public var replayedLSN: String
        public var updatedAt: Date
        public init(name: String, connected: Bool, replayedLSN: String, updatedAt: Date) {
            self.name = name
            self.connected = connected
            self.replayedLSN = replayedLSN
            self.updatedAt = updatedAt
        }
    }

    public struct LagPoint: Codable, Sendable, Equatable {
        public var at: Date
        public var bytes: UInt64
        public var seconds: Double
        public init(at: Date, bytes: UInt64, seconds: Double) {
            self.at = at
            self.bytes = bytes
            self.seconds = seconds
        }
    }

    public struct SpoolUsage: Codable, Sendable, Equatable {
        public var path: String
        public var totalBytes: UInt64?
        public var freeBytes: UInt64?
        public var freePercent: Double?
        /// Bytes the spool's files take (WAL, backups, journals).
        public var usedBytes: UInt64?
        public init(path: String, totalBytes: UInt64?, freeBytes: UInt64?, usedBytes: UInt64?) {
            self.path = path
            self.totalBytes = totalBytes
            self.freeBytes = freeBytes
            self.usedBytes = usedBytes
            if let totalBytes, let freeBytes, totalBytes > 0 {
                self.freePercent = (Double(freeBytes) / Double(totalBytes) * 1000).rounded() / 10
            }
        }
    }

    /// The replication mode and since when: whether a commit the primary acknowledged is durable at the DR site.
    public struct ModeStatus: Codable, Sendable, Equatable {
        /// sync, quorum, potential, async, degraded or unknown (`ReplicationMode`).
        public var mode: String
        public var since: Date
        /// The sender runs with `--sync`.
        public var synchronousRequested: Bool?
        /// `pg_stat_replication.sync_state` as read.
        public var syncState: String?
        public var receiverLoss: String?
        /// Set while `--sync` is asked for and the primary has not treated the link as synchronous: since when.
        public var notHonouredSince: Date?
        public var detail: String?

        public init(
            mode: String, since: Date, synchronousRequested: Bool? = nil, syncState: String? = nil,
            receiverLoss: String? = nil, notHonouredSince: Date? = nil, detail: String? = nil
        ) {
            self.mode = mode
            self.since = since
            self.synchronousRequested = synchronousRequested
            self.syncState = syncState
            self.receiverLoss = receiverLoss
            self.notHonouredSince = notHonouredSince
            self.detail = detail
        }
    }

    public struct SenderDetails: Codable, Sendable, Equatable {
        /// The primary's conninfo with any password removed.
        public var source: String
        public var receiver: String
        public var synchronous: Bool
        public var applicationName: String
        public var walBytesSent: UInt64
        /// WAL frames those bytes went in (a backlog travels in frames of up to 1 MiB); absent from older senders.
        public var walFramesSent: UInt64?
        public var wireBytesSent: UInt64
        /// WAL bytes per byte on the wire (LZ4 and framing).
        public var compressionRatio: Double?
        /// `auto`, `fast` or `high` (--compression); absent from older senders.
        public var compression: String?
        /// WAL frames compressed with high effort (LZ4HC): under `auto`, those sent while a slow link was the bottleneck.
        public var walFramesHighCompression: UInt64?
        public var slot: Slot
        /// `block` or `degrade-after=DURATION` (--on-receiver-loss).
        public var receiverLossPolicy: String?
        /// Commits are being acknowledged from the sender's local buffer: the DR site is unreachable.
        public var degraded: Bool?
        public var degradedSince: Date?
        /// WAL acknowledged to the primary that the DR site does not have on disk yet; nil when there is none.
        public var rpoExposure: RPOExposure?
        /// How the primary treats this sender, as read from `pg_stat_replication`.
        public var mode: ModeStatus?
        public init(
            source: String, receiver: String, synchronous: Bool, applicationName: String, walBytesSent: UInt64,
            walFramesSent: UInt64? = nil, wireBytesSent: UInt64, compression: String? = nil,
            walFramesHighCompression: UInt64? = nil, slot: Slot, receiverLossPolicy: String? = nil, degraded: Bool? = nil,
            degradedSince: Date? = nil, rpoExposure: RPOExposure? = nil, mode: ModeStatus? = nil
        ) {
            self.mode = mode
            self.compression = compression
            self.walFramesHighCompression = walFramesHighCompression
            self.receiverLossPolicy = receiverLossPolicy
            self.degraded = degraded
            self.degradedSince = degradedSince
            self.rpoExposure = rpoExposure
            self.source = source
            self.receiver = receiver
            self.synchronous = synchronous
            self.applicationName = applicationName
            self.walBytesSent = walBytesSent
            self.walFramesSent = walFramesSent
            self.wireBytesSent = wireBytesSent
            self.compressionRatio = wireBytesSent > 0 ? (Double(walBytesSent) / Double(wireBytesSent) * 100).rounded() / 100 : nil
            self.slot = slot
        }
    }

    /// What a disaster at the primary site would lose right now although the primary reported it committed.
    public struct RPOExposure: Codable, Sendable, Equatable {
        public var bytes: UInt64
        /// The primary's time between the two positions (nil until the sender has timestamps for both).
        public var seconds: Double?
        /// End of the WAL acknowledged to the primary (from the local buffer).
        public var acknowledgedLSN: String
        /// End of the WAL durable at the DR site.
        public var offsiteDurableLSN: String
        public init(bytes: UInt64, seconds: Double?, acknowledgedLSN: String, offsiteDurableLSN: String) {
            self.bytes = bytes
            self.seconds = seconds
            self.acknowledgedLSN = acknowledgedLSN
            self.offsiteDurableLSN = offsiteDurableLSN
        }
    }

    public struct Slot: Codable, Sendable, Equatable {
        public var name: String
        /// `pg_replication_slots.wal_status`: reserved, extended, unreserved or lost.
        public var walStatus: String?
        public var restartLSN: String?
        /// WAL the primary keeps for this slot (its current LSN − restart_lsn).
        public var retainedBytes: Int64?
        /// Bytes that can still be written before the slot is in danger of invalidation (nil: no limit).
        public var safeWALSizeBytes: Int64?
        public var active: Bool?
        public var checkedAt: Date?
        public init(
            name: String, walStatus: String? = nil, restartLSN: String? = nil, retainedBytes: Int64? = nil,
            safeWALSizeBytes: Int64? = nil, active: Bool? = nil, checkedAt: Date? = nil
        ) {
            self.name = name
            self.walStatus = walStatus
            self.restartLSN = restartLSN
            self.retainedBytes = retainedBytes
            self.safeWALSizeBytes = safeWALSizeBytes
            self.active = active
            self.checkedAt = checkedAt
        }
    }

    public struct ReceiverDetails: Codable, Sendable, Equatable {
        public var listen: String
        public var standbyListen: String?
        public init(listen: String, standbyListen: String?) {
            self.listen = listen
            self.standbyListen = standbyListen
        }
    }
}

extension StatusDocument {
    /// The JSON encoding used on the wire and in reports: ISO 8601 dates, sorted keys.
    public static func encoder(pretty: Bool = true) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatISO8601(date))
        }
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = parseISO8601(text) else {
                throw DecodingError.dataCorrupted(
                    .init(codingPath: decoder.codingPath, debugDescription: "not an ISO 8601 date: \(text)"))
            }
            return date
        }
        return decoder
    }
}

/// ISO 8601 with milliseconds in UTC, e.g. 2026-11-23T10:15:02.120Z.
public func formatISO8601(_ date: Date) -> String {
    date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
}

public func parseISO8601(_ text: String) -> Date? {
    (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text)) ?? (try? Date.ISO8601FormatStyle().parse(text))
}

/// The release, as `walship --version` and every status document report it.
public let walshipVersion = "0.1.0"

/// What `walship --version` prints: the release, the ship protocol version this walship speaks (what decides
/// which sender and receiver can talk, docs/runbook.md "Upgrading") and the build it came from: `build` is what
/// the Makefile passed in WALSHIP_BUILD (commit and date); empty or "unknown" from a plain `swift build`.
/// The first two words stay `walship VERSION`, for scripts.
public func versionText(protocolVersion: UInt16, build: String) -> String {
    let build = build.trimmingCharacters(in: .whitespaces)
    return "walship \(walshipVersion) (ship protocol \(protocolVersion), built \(build.isEmpty ? "unknown" : build))"
}

/// A standby the receiver's endpoint has served since it started, as its control socket tells `walship standby
/// forget`: the name its spool record is kept under (its slot, else its application_name), and whether it is
/// connected now.
public struct StandbyPresence: Codable, Sendable, Equatable {
    public var name: String
    public var applicationName: String
    public var connected: Bool

    public init(name: String, applicationName: String, connected: Bool) {
        self.name = name
        self.applicationName = applicationName
        self.connected = connected
    }
}

import Foundation

/// One condition as the monitor sees it right now, e.g. "lag_seconds for system 7301…: 42 s > 30 s".
public struct AlertObservation: Sendable, Equatable {
    public var condition: String
    public var system: String?
    public var firing: Bool
    public var severity: AlertSeverity
    public var message: String
    public var value: Double?
    public var threshold: Double?

    public init(
        condition: String, system: String? = nil, firing: Bool, severity: AlertSeverity = .warning,
        message: String, value: Double? = nil, threshold: Double? = nil
    ) {
        self.condition = condition
        self.system = system
        self.firing = firing
        self.severity = severity
        self.message = message
        self.value = value
        self.threshold = threshold
    }

    var key: AlertKey { AlertKey(condition: condition, system: system) }
}

public enum AlertSeverity: String, Codable, Sendable, Comparable {
    case info, warning, critical
    var rank: Int {
        switch self {
        case .info: 0
        case .warning: 1
        case .critical: 2
        }
    }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

struct AlertKey: Hashable, Sendable {
    var condition: String
    var system: String?
}

/// What reaches `--alert-command` (on stdin) and `--alert-webhook` (POST body), as JSON.
public struct AlertEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        /// A condition began (sent once per incident).
        case firing
        /// It ended and stayed clear for the recovery period.
        case resolved
        /// A drill or backup finished well / badly.
        case success, failure
    }

    public var source = "walship"
    public var event: Kind
    public var condition: String
    public var severity: AlertSeverity
    public var role: String
    public var host: String
    public var system: String?
    public var message: String
    public var value: Double?
    public var threshold: Double?
    public var startedAt: Date
    public var at: Date
    /// For resolved events: how long the incident lasted.
    public var durationSeconds: Double?
    /// For drills and backups: where the evidence report is, its figures.
    public var details: [String: String]?

    public init(
        event: Kind, condition: String, severity: AlertSeverity, role: String, host: String, system: String?,
        message: String, value: Double? = nil, threshold: Double? = nil, startedAt: Date, at: Date,
        durationSeconds: Double? = nil, details: [String: String]? = nil
    ) {
        self.event = event
        self.condition = condition
        self.severity = severity
        self.role = role
        self.host = host
        self.system = system
        self.message = message
        self.value = value
        self.threshold = threshold
        self.startedAt = startedAt
        self.at = at
        self.durationSeconds = durationSeconds
        self.details = details
    }
}

/// Decides when to notify: once when a condition starts, once when it has been clear for `recoverAfter`
/// seconds. A condition that flaps around its threshold stays one incident instead of a flood.
public struct AlertStateMachine: Sendable {
    struct Incident: Sendable {
        var observation: AlertObservation
        var startedAt: Date
        var clearSince: Date?
    }

    public let role: String
    public let host: String
    public let recoverAfter: Double
    private var incidents: [AlertKey: Incident] = [:]

    public init(role: String, host: String, recoverAfterSeconds: Double = 30) {
        self.role = role
        self.host = host
        self.recoverAfter = recoverAfterSeconds
    }

    /// Feeds one round of observations; returns the notifications to send. Conditions absent from the
    /// round count as clear.
    public mutating func evaluate(_ observations: [AlertObservation], now: Date) -> [AlertEvent] {
        var events: [AlertEvent] = []
        var seen = Set<AlertKey>()
        for observation in observations where observation.firing {
            seen.insert(observation.key)
            if var incident = incidents[observation.key] {
                incident.clearSince = nil
                // Keep the latest figures for the status page; escalation to critical is news worth sending.
                let escalated = observation.severity > incident.observation.severity
                incident.observation = observation
                incidents[observation.key] = incident
                if escalated { events.append(event(.firing, observation, startedAt: incident.startedAt, now: now)) }
            } else {
                incidents[observation.key] = Incident(observation: observation, startedAt: now)
                events.append(event(.firing, observation, startedAt: now, now: now))
            }
        }
        for (key, var incident) in incidents where !seen.contains(key) {
            let clearSince = incident.clearSince ?? now
            if now.timeIntervalSince(clearSince) >= recoverAfter {
                incidents[key] = nil
                var resolved = event(.resolved, incident.observation, startedAt: incident.startedAt, now: now)
                resolved.durationSeconds = (now.timeIntervalSince(incident.startedAt) * 10).rounded() / 10
                if let clear = observations.first(where: { $0.key == key }) {
                    resolved.message = clear.message
                    resolved.value = clear.value
                }
                events.append(resolved)
            } else {
                incident.clearSince = clearSince
                incidents[key] = incident
            }
        }
        return events
    }

    /// Incidents open now (including those clearing but not yet resolved).
    public var active: [StatusDocument.ActiveAlert] {
        incidents.values.sorted { ($0.startedAt, $0.observation.condition) < ($1.startedAt, $1.observation.condition) }.map {
            StatusDocument.ActiveAlert(
                condition: $0.observation.condition, severity: $0.observation.severity.rawValue,
                system: $0.observation.system, since: $0.startedAt, message: $0.observation.message)
        }
    }

    private func event(_ kind: AlertEvent.Kind, _ o: AlertObservation, startedAt: Date, now: Date) -> AlertEvent {
        AlertEvent(
            event: kind, condition: o.condition, severity: o.severity, role: role, host: host, system: o.system,
            message: o.message, value: o.value, threshold: o.threshold, startedAt: startedAt, at: now)
    }
}

/// Thresholds from the command line; nil means "not watched".
public struct AlertThresholds: Sendable, Equatable {
    public var lagSeconds: Double?
    public var lagBytes: UInt64?
    public var disconnectSeconds: Double?
    public var spoolFreePercent: Double?
    public var memoryMB: Double?
    public var slotRetainedBytes: Int64?
    /// Days before a certificate of this process expires that `certificate_expiry` fires.
    public var certificateDays: Double?
    /// With `--sync`: seconds the primary may treat the sender as not synchronous before `sync_not_honoured`.
    public var syncNotHonouredSeconds: Double?
    /// Receiver: `backup_age` fires when a system's newest complete base backup is older than this many
    /// seconds, or when it has none this long after the receiver started.
    public var backupAgeSeconds: Double?
    /// Receiver with `--archive`: `archive_lag_seconds` fires when the oldest segment not yet in the object store
    /// was completed longer ago than this.
    public var archiveLagSeconds: Double?

    public init(
        lagSeconds: Double? = nil, lagBytes: UInt64? = nil, disconnectSeconds: Double? = nil,
        spoolFreePercent: Double? = nil, memoryMB: Double? = nil, slotRetainedBytes: Int64? = nil,
        certificateDays: Double? = nil, syncNotHonouredSeconds: Double? = nil, backupAgeSeconds: Double? = nil,
        archiveLagSeconds: Double? = nil
    ) {
        self.archiveLagSeconds = archiveLagSeconds
        self.syncNotHonouredSeconds = syncNotHonouredSeconds
        self.backupAgeSeconds = backupAgeSeconds
        self.lagSeconds = lagSeconds
        self.lagBytes = lagBytes
        self.disconnectSeconds = disconnectSeconds
        self.spoolFreePercent = spoolFreePercent
        self.memoryMB = memoryMB
        self.slotRetainedBytes = slotRetainedBytes
        self.certificateDays = certificateDays
    }
}

/// Which conditions each process raises, so nothing fires twice: the receiver watches lag, the sender's
/// link and the spool; the sender watches the primary's side (slot retention, wal_status, the receiver
/// being unreachable). Both watch their own memory.
public enum AlertRules {
    public static func observe(
        _ status: StatusDocument, thresholds t: AlertThresholds, now: Date,
        extra: [AlertObservation] = []
    ) -> [AlertObservation] {
        var out: [AlertObservation] = []
        if let limit = t.memoryMB, let rss = status.process.residentMemoryBytes {
            let mb = Double(rss) / 1_048_576
            out.append(
                .init(
                    condition: "memory", firing: mb > limit,
                    message: "walship \(status.role) uses \(format(mb)) MB of memory (alert above \(format(limit)) MB)",
                    value: mb, threshold: limit))
        }
        // The certificate that expires first: once one has, a link or the standby endpoint stops working.
        if let days = t.certificateDays, let first = status.certificates?.min(by: { $0.notValidAfter < $1.notValidAfter }) {
            let left = first.notValidAfter.timeIntervalSince(now) / 86400
            let expired = left <= 0
            out.append(
                .init(
                    condition: "certificate_expiry", firing: left < days, severity: left < 7 ? .critical : .warning,
                    message: left >= days
                        ? "the TLS certificates are valid for \(format(left)) more days"
                        : "the \(first.use) certificate \(first.path) (\(first.subject)) \(expired ? "expired" : "expires") at \(formatISO8601(first.notValidAfter))"
                            + (expired ? "" : ", in \(format(left)) days")
                            + " (hint: walship certs renew, then restart each end in turn; docs/security.md)",
                    value: left, threshold: days))
        }
        switch status.role {
        case "receiver":
            for system in status.systems {
                let id = system.systemIdentifier
                if let limit = t.lagSeconds, let stage = system.lastStage, let s = stage.secondsBehind {
                    out.append(
                        .init(
                            condition: "lag_seconds", system: id, firing: s > limit,
                            message:
                                "the DR site's \(stage.name) WAL is \(format(s)) s behind the primary (alert above \(format(limit)) s)",
                            value: s, threshold: limit))
                }
                if let limit = t.lagBytes, let stage = system.lastStage, let b = stage.bytesBehind {
                    out.append(
                        .init(
                            condition: "lag_bytes", system: id, firing: b > limit,
                            message:
                                "the DR site's \(stage.name) WAL is \(formatBytes(b)) behind the primary (alert above \(formatBytes(limit)))",
                            value: Double(b), threshold: Double(limit)))
                }
                if let fence = system.fence {
                    let refusedRecently = fence.lastRefusedAt.map { now.timeIntervalSince($0) < 120 } ?? false
                    out.append(
                        .init(
                            condition: "fenced_primary_refused", system: id, firing: refusedRecently, severity: .critical,
                            message: refusedRecently
                                ? "the old primary tried to ship WAL after the DR replica was promoted; it was refused (fence set \(formatISO8601(fence.promotedAt)))"
                                : "the old primary has stopped trying to ship WAL"))
                }
                // Always watched: a spool that acknowledges nothing more blocks every synchronous commit.
                out.append(
                    .init(
                        condition: "spool_failure", system: id, firing: system.spoolFailure != nil, severity: .critical,
                        message: system.spoolFailure.map { "this system's spool takes no WAL: \($0)" }
                            ?? "this system's spool takes WAL again"))
                // A fenced system's old primary may not ship backups; a spool that refused to open has nothing to judge.
                if let limit = t.backupAgeSeconds, system.fence == nil, system.timeline != nil {
                    out.append(backupAge(system, limit: limit, startedAt: status.process.startedAt, now: now))
                }
                if let archive = system.archive {
                    out += archiveObservations(archive, system: id, lagLimit: t.archiveLagSeconds)
                }
                if let limit = t.disconnectSeconds, system.fence == nil {
                    let down = system.link.connected ? 0 : system.link.disconnectedSince.map { now.timeIntervalSince($0) } ?? 0
                    out.append(
                        .init(
                            condition: "sender_disconnected", system: id, firing: down > limit, severity: .critical,
                            message: system.link.connected
                                ? "the sender is connected again"
                                : "no sender has been connected for \(format(down)) s (alert after \(format(limit)) s); the DR site is not receiving WAL",
                            value: down, threshold: limit))
                }
            }
            if let limit = t.spoolFreePercent, let free = status.spool?.freePercent {
                out.append(
                    .init(
                        condition: "spool_free", firing: free < limit, severity: .critical,
                        message: "the spool's file system has \(format(free)) % free (alert below \(format(limit)) %)",
                        value: free, threshold: limit))
            }
        case "sender":
            if let slot = status.sender?.slot {
                if let limit = t.slotRetainedBytes, let retained = slot.retainedBytes {
                    out.append(
                        .init(
                            condition: "slot_retained_bytes", firing: retained > limit, severity: .critical,
                            message:
                                "the primary holds \(formatBytes(UInt64(max(0, retained)))) of WAL for slot \(slot.name) (alert above \(formatBytes(UInt64(limit)))); a full pg_wal stops the primary",
                            value: Double(retained), threshold: Double(limit)))
                }
                if let walStatus = slot.walStatus {
                    let bad = ["extended", "unreserved", "lost"].contains(walStatus)
                    out.append(
                        .init(
                            condition: "slot_wal_status", firing: bad, severity: walStatus == "extended" ? .warning : .critical,
                            message: "slot \(slot.name) wal_status is \(walStatus)"
                                + (bad ? " (the primary retains more WAL than max_wal_size for the DR site)" : "")))
                }
            }
            if let details = status.sender, details.degraded != nil {
                // Always watched under degrade-after: acknowledging without the DR site is never routine.
                let exposure = details.rpoExposure
                out.append(
                    .init(
                        condition: "rpo_exposure", firing: exposure != nil, severity: .critical,
                        message: exposure.map { e in
                            "commits are acknowledged without the DR site (\(details.receiverLossPolicy ?? "degrade-after")): \(formatBytes(e.bytes))\(e.seconds.map { " / \(format($0)) s" } ?? "") of acknowledged WAL is not offsite"
                        } ?? "every acknowledged commit is at the DR site again; synchronous acknowledgement restored",
                        value: exposure.map { Double($0.bytes) }, threshold: 0))
            }
            if let grace = t.syncNotHonouredSeconds, let mode = status.sender?.mode {
                let seconds = mode.notHonouredSince.map { now.timeIntervalSince($0) } ?? 0
                out.append(
                    .init(
                        condition: "sync_not_honoured", firing: seconds > grace, severity: .critical,
                        message: mode.notHonouredSince == nil
                            ? "the primary treats the sender as synchronous again: commits wait for the DR site"
                            : "--sync is set but for \(format(seconds)) s the primary has not waited for the DR site (sync_state \(mode.syncState ?? "unknown"), mode \(mode.mode)): \(mode.detail ?? "") (alert after \(format(grace)) s)",
                        value: seconds, threshold: grace))
            }
            // A sender beside a standby (--standby-wait) owes the receiver nothing until it is promoted.
            if let limit = t.disconnectSeconds, let system = status.systems.first, status.state != "waiting for promotion" {
                let down = system.link.connected ? 0 : system.link.disconnectedSince.map { now.timeIntervalSince($0) } ?? 0
                out.append(
                    .init(
                        condition: "receiver_unreachable", firing: down > limit, severity: .critical,
                        message: system.link.connected
                            ? "the receiver is reachable again"
                            : "the receiver has been unreachable for \(format(down)) s (alert after \(format(limit)) s)\(status.lastError.map { ": \($0)" } ?? "")",
                        value: down, threshold: limit))
            }
        default:
            break
        }
        return out + extra
    }
}

extension AlertRules {
    /// `archive_failing` (always watched with `--archive`: a store that refuses everything leaves the DR host's disk
    /// the only copy) and `archive_lag_seconds`.
    static func archiveObservations(
        _ archive: StatusDocument.ArchiveStatus, system: String?, lagLimit: Double?
    ) -> [AlertObservation] {
        var out = [
            AlertObservation(
                condition: "archive_failing", system: system, firing: archive.failing, severity: .critical,
                message: archive.failing
                    ? "the object store has refused the last \(archive.consecutiveFailures) attempts\(archive.failingSince.map { " since \(formatISO8601($0))" } ?? ""): \(archive.lastError ?? "unknown error") (hint: check the store, the credentials and the bucket; docs/archive.md)"
                    : "the object store takes the archive's uploads again",
                value: Double(archive.consecutiveFailures))
        ]
        if let limit = lagLimit {
            let age = archive.lagSeconds ?? 0
            out.append(
                AlertObservation(
                    condition: "archive_lag_seconds", system: system, firing: age > limit,
                    message: age > limit
                        ? "the oldest segment not yet in the object store was completed \(formatDuration(age)) ago (\(archive.lagSegments) objects, \(formatBytes(archive.lagBytes)) waiting; alert above \(formatDuration(limit)))"
                        : "the archive is \(archive.lagSegments) objects (\(formatBytes(archive.lagBytes))) behind the spool",
                    value: age, threshold: limit))
        }
        return out
    }

    /// `backup_age`: a restore starts from the newest complete base backup and replays all WAL since, so an old
    /// one means a long recovery and a spool that keeps every segment since (retention keeps what it needs).
    static func backupAge(
        _ system: StatusDocument.SystemStatus, limit: Double, startedAt: Date, now: Date
    ) -> AlertObservation {
        let hint = "(hint: walship backup, or enable walship-backup.timer; docs/runbook.md, \"Scheduled base backups\")"
        guard let newest = system.newestBackup else {
            let waited = now.timeIntervalSince(startedAt)
            return AlertObservation(
                condition: "backup_age", system: system.systemIdentifier, firing: waited > limit,
                message: waited > limit
                    ? "no complete base backup of this system in the spool, \(formatDuration(waited)) after the receiver started (alert after \(formatDuration(limit))) \(hint)"
                    : "no complete base backup of this system yet (alert \(formatDuration(limit)) after the receiver started)",
                value: nil, threshold: limit)
        }
        let age = now.timeIntervalSince(newest.takenAt)
        return AlertObservation(
            condition: "backup_age", system: system.systemIdentifier, firing: age > limit,
            message: age > limit
                ? "the newest complete base backup, \(newest.id), is \(formatDuration(age)) old (alert above \(formatDuration(limit))) \(hint)"
                : "the newest complete base backup, \(newest.id), is \(formatDuration(age)) old",
            value: age, threshold: limit)
    }
}

func format(_ value: Double) -> String {
    value >= 100 ? String(Int(value.rounded())) : String(format: "%.1f", value)
}

/// 1.5 MB, 320.0 kB, 12 B: binary multiples with pg_size_pretty's unit names.
public func formatBytes(_ bytes: UInt64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f", value) + " " + units[unit]
}

import Foundation
import Prometheus
import StatusModel
import Synchronization
import WALCore

/// Publishes a status document as Prometheus metrics (`GET /metrics`). Values are refreshed from the status at each
/// scrape, so the metrics and `/status` never disagree. Every family carries its `# HELP` and `# TYPE` lines
/// (`MetricFamily`): `promtool check metrics` flags a series without help.
public final class MetricsPublisher: Sendable {
    private let registry = PrometheusCollectorRegistry()
    /// Last published totals, so counters advance by the difference.
    private let totals = Mutex<[String: Double]>([:])
    /// The gauge series of the last scrape. One that is not published again (an alert that cleared, a lag
    /// that became unknown) is removed, so it does not go on showing its last value.
    private let lastGauges = Mutex<Set<GaugeSeries>>([])

    public init() {}

    /// The Prometheus text exposition of `status`.
    public func render(_ status: StatusDocument) -> String {
        publish(status)
        return registry.emitToString()
    }

    func publish(_ s: StatusDocument) {
        var gauges: [GaugeSeries: Double] = [:]
        func gauge(_ family: MetricFamily, _ labels: [String: String], _ value: Double) {
            gauges[GaugeSeries(family: family, labels: labels)] = value
        }
        gauge(.up, ["role": s.role], 1)
        gauge(.startTime, ["role": s.role], s.process.startedAt.timeIntervalSince1970)
        if let rss = s.process.residentMemoryBytes { gauge(.residentMemory, ["role": s.role], Double(rss)) }
        gauge(.healthStatus, ["role": s.role], Double(HealthCheck.Code(label: s.health.status).rawValue))
        for certificate in s.certificates ?? [] {
            gauge(
                .certificateExpiry, ["use": certificate.use, "path": certificate.path],
                certificate.notValidAfter.timeIntervalSince1970)
        }
        for alert in s.alerts {
            gauge(.alertActive, ["condition": alert.condition, "system": alert.system ?? ""], 1)
        }
        for system in s.systems {
            let id = system.systemIdentifier ?? "unknown"
            gauge(.linkConnected, ["system": id], system.link.connected ? 1 : 0)
            if let age = system.link.lastMessageAgeSeconds { gauge(.linkLastMessageAge, ["system": id], age) }
            if let age = system.link.lastPrimaryMessageAgeSeconds { gauge(.primaryLastMessageAge, ["system": id], age) }
            if let timeline = system.timeline { gauge(.timeline, ["system": id], Double(timeline)) }
            if let skew = system.clockSkewSeconds { gauge(.clockSkew, ["system": id], skew) }
            gauge(.fenced, ["system": id], system.fence == nil ? 0 : 1)
            gauge(.standbysConnected, ["system": id], Double(system.standbys.filter(\.connected).count))
            if let backup = system.newestBackup { gauge(.newestBackup, ["system": id], backup.takenAt.timeIntervalSince1970) }
            if let archive = system.archive {
                gauge(.archiveLagSegments, ["system": id], Double(archive.lagSegments))
                gauge(.archiveLagBytes, ["system": id], Double(archive.lagBytes))
                gauge(.archiveLagSeconds, ["system": id], archive.lagSeconds ?? 0)
                gauge(.archiveFailing, ["system": id], archive.failing ? 1 : 0)
                gauge(.archivedObjects, ["system": id], Double(archive.archivedObjects))
                if let deleted = archive.retentionDeletedObjects {
                    gauge(.archiveRetentionDeleted, ["system": id], Double(deleted))
                    gauge(.archiveRetentionRefused, ["system": id], Double(archive.retentionRefusedObjects ?? 0))
                    gauge(.archiveRetentionDeleteMarkers, ["system": id], Double(archive.retentionDeleteMarkers ?? 0))
                }
            }
            // One series per mode, 1 for the current one (as walship_slot_wal_status), and since when it holds.
            if let mode = system.mode ?? s.sender?.mode {
                for name in ["sync", "quorum", "potential", "async", "degraded", "unknown"] {
                    gauge(.replicationMode, ["system": id, "mode": name], mode.mode == name ? 1 : 0)
                }
                gauge(.replicationModeSince, ["system": id], mode.since.timeIntervalSince1970)
                gauge(.syncNotHonoured, ["system": id], mode.notHonouredSince == nil ? 0 : 1)
            }
            for stage in system.chain {
                let labels = ["system": id, "stage": stage.name]
                if let lsn = stage.lsn.flatMap({ LSN($0) }) { gauge(.walPosition, labels, Double(lsn.rawValue)) }
                if let bytes = stage.bytesBehind { gauge(.lagBytes, labels, Double(bytes)) }
                if let seconds = stage.secondsBehind { gauge(.lagSeconds, labels, seconds) }
            }
        }
        if let spool = s.spool {
            if let free = spool.freeBytes { gauge(.spoolFree, [:], Double(free)) }
            if let total = spool.totalBytes { gauge(.spoolSize, [:], Double(total)) }
            if let used = spool.usedBytes { gauge(.spoolUsed, [:], Double(used)) }
        }
        if let sender = s.sender {
            let id = s.systems.first?.systemIdentifier ?? "unknown"
            total(.walSent, ["system": id], Double(sender.walBytesSent))
            total(.wireSent, ["system": id], Double(sender.wireBytesSent))
            if let high = sender.walFramesHighCompression { total(.highCompressionFrames, ["system": id], Double(high)) }
            let slot = ["slot": sender.slot.name]
            if let retained = sender.slot.retainedBytes { gauge(.slotRetained, slot, Double(retained)) }
            if let safe = sender.slot.safeWALSizeBytes { gauge(.slotSafeWALSize, slot, Double(safe)) }
            for state in ["reserved", "extended", "unreserved", "lost"] {
                gauge(.slotWALStatus, ["slot": sender.slot.name, "wal_status": state], sender.slot.walStatus == state ? 1 : 0)
            }
            if let degraded = sender.degraded {
                gauge(.degraded, ["system": id], degraded ? 1 : 0)
                gauge(.rpoExposureBytes, ["system": id], Double(sender.rpoExposure?.bytes ?? 0))
                gauge(.rpoExposureSeconds, ["system": id], sender.rpoExposure.map { $0.seconds ?? 0 } ?? 0)
            }
        }
        let gone = lastGauges.withLock { last in
            defer { last = Set(gauges.keys) }
            return last.subtracting(gauges.keys)
        }
        for series in gone { registry.unregisterGauge(prometheusGauge(series)) }
        for (series, value) in gauges { prometheusGauge(series).set(value) }
    }

    private func prometheusGauge(_ series: GaugeSeries) -> Prometheus.Gauge {
        registry.makeGauge(descriptor: series.family.descriptor, labels: series.dimensions)
    }

    private func total(_ family: MetricFamily, _ labels: [String: String], _ value: Double) {
        let dimensions = labels.sorted { $0.key < $1.key }
        let key = family.name + dimensions.description
        let delta = totals.withLock { totals -> Double in
            let last = totals[key] ?? 0
            totals[key] = max(last, value)
            return max(0, value - last)
        }
        registry.makeCounter(descriptor: family.descriptor, labels: dimensions).increment(by: delta)
    }
}

/// One metric family of `/metrics`: its name (with its unit), type and the one line of help Prometheus shows.
/// docs/monitoring.md lists the same families.
struct MetricFamily: Hashable, Sendable {
    enum Kind: String, Sendable { case gauge, counter }

    let name: String
    let kind: Kind
    let help: String

    static func gauge(_ name: String, _ help: String) -> MetricFamily { MetricFamily(name: name, kind: .gauge, help: help) }
    static func counter(_ name: String, _ help: String) -> MetricFamily { MetricFamily(name: name, kind: .counter, help: help) }

    var descriptor: MetricNameDescriptor { MetricNameDescriptor(metricName: name, unitName: "", helpText: help) }

    // Both processes.
    static let up = gauge("walship_up", "1 while the walship process serves metrics.")
    static let startTime = gauge("walship_start_time_seconds", "When the process started, Unix time.")
    static let residentMemory = gauge("walship_resident_memory_bytes", "Resident memory of the process.")
    static let healthStatus = gauge(
        "walship_health_status", "Health as walship status reports it: 0 ok, 1 warning, 2 critical, 3 unknown.")
    static let certificateExpiry = gauge(
        "walship_tls_certificate_expiry_timestamp_seconds", "When each TLS certificate the process uses expires, Unix time.")
    static let alertActive = gauge("walship_alert_active", "1 for each alert firing, by condition and system.")
    static let linkConnected = gauge("walship_link_connected", "1 while the ship link is up.")
    static let linkLastMessageAge = gauge(
        "walship_link_last_message_age_seconds", "Seconds since the last frame from the other end of the ship link.")
    static let primaryLastMessageAge = gauge(
        "walship_primary_last_message_age_seconds", "Seconds since the last WAL or keepalive from the primary.")
    static let timeline = gauge("walship_timeline", "The timeline being shipped.")
    static let clockSkew = gauge("walship_clock_skew_seconds", "The primary's clock minus the local clock, in seconds.")
    static let fenced = gauge(
        "walship_fenced", "1 once the DR replica of the system was promoted: the old primary's WAL is refused.")
    static let standbysConnected = gauge("walship_standbys_connected", "DR standbys streaming from the receiver.")
    static let replicationMode = gauge(
        "walship_replication_mode", "1 for the current replication mode of the DR link, 0 for the other modes.")
    static let replicationModeSince = gauge(
        "walship_replication_mode_since_timestamp_seconds", "When the current replication mode began, Unix time.")
    static let syncNotHonoured = gauge(
        "walship_sync_not_honoured", "1 while --sync is asked for and the primary does not wait for the DR site.")
    static let walPosition = gauge("walship_wal_position_bytes", "The stage's WAL position (LSN) as a number of bytes.")
    static let lagBytes = gauge("walship_lag_bytes", "Bytes of WAL the stage is behind the primary.")
    static let lagSeconds = gauge("walship_lag_seconds", "Seconds the stage is behind the primary, in the primary's clock.")
    // The receiver's spool.
    static let newestBackup = gauge(
        "walship_newest_backup_timestamp_seconds", "When the newest complete base backup of the system was taken, Unix time.")
    static let spoolFree = gauge(
        "walship_spool_free_bytes", "Free space for the spool: its file system's, or what --spool-max-bytes leaves.")
    static let spoolSize = gauge("walship_spool_size_bytes", "Size of the spool's file system, or --spool-max-bytes when set.")
    static let spoolUsed = gauge("walship_spool_used_bytes", "Bytes the spool's files take: WAL, base backups, journals.")
    // The receiver's archive tier (--archive).
    static let archiveLagSegments = gauge(
        "walship_archive_lag_segments", "Completed segments and history files the object store has not confirmed yet.")
    static let archiveLagBytes = gauge("walship_archive_lag_bytes", "Bytes of the spool the object store has not confirmed yet.")
    static let archiveLagSeconds = gauge(
        "walship_archive_lag_seconds", "Age of the oldest completed file not yet in the object store; 0 when none waits.")
    static let archiveFailing = gauge(
        "walship_archive_failing", "1 while the object store has refused the archiver's last attempts (archive_failing).")
    static let archivedObjects = gauge(
        "walship_archived_objects", "Files of the spool confirmed in the object store since the receiver started.")
    static let archiveRetentionDeleted = gauge(
        "walship_archive_retention_deleted_objects",
        "Objects the archive's retention deleted from the object store since the receiver started.")
    static let archiveRetentionRefused = gauge(
        "walship_archive_retention_refused_objects",
        "Deletes of the archive's retention the object store refused (object lock, a bucket policy) since the receiver started.")
    static let archiveRetentionDeleteMarkers = gauge(
        "walship_archive_retention_delete_marker_objects",
        "Objects the archive's retention deleted that the bucket keeps as older versions behind a delete marker (versioning, object lock)."
    )
    // The sender.
    static let walSent = counter("walship_wal_sent_bytes_total", "WAL bytes shipped to the receiver.")
    static let wireSent = counter(
        "walship_wire_sent_bytes_total", "Bytes sent on the ship link for the WAL shipped, after compression and framing.")
    static let highCompressionFrames = counter(
        "walship_wal_frames_high_compression_total", "WAL frames compressed with LZ4HC (--compression).")
    static let slotRetained = gauge("walship_slot_retained_bytes", "WAL the primary keeps for the replication slot.")
    static let slotSafeWALSize = gauge(
        "walship_slot_safe_wal_size_bytes", "WAL that can still be written before the replication slot is at risk.")
    static let slotWALStatus = gauge(
        "walship_slot_wal_status", "1 for the replication slot's current wal_status, 0 for the others.")
    static let degraded = gauge(
        "walship_degraded", "1 while commits are acknowledged from the sender's local buffer (--on-receiver-loss degrade-after).")
    static let rpoExposureBytes = gauge(
        "walship_rpo_exposure_bytes", "Bytes of WAL acknowledged to the primary that the DR site does not have on disk yet.")
    static let rpoExposureSeconds = gauge(
        "walship_rpo_exposure_seconds", "Seconds of the primary's WAL acknowledged that the DR site does not have on disk yet.")

    /// Every family, for the tests and docs/monitoring.md.
    static let all: [MetricFamily] = [
        up, startTime, residentMemory, healthStatus, certificateExpiry, alertActive, linkConnected, linkLastMessageAge,
        primaryLastMessageAge, timeline, clockSkew, fenced, standbysConnected, replicationMode, replicationModeSince,
        syncNotHonoured, walPosition, lagBytes, lagSeconds, newestBackup, spoolFree, spoolSize, spoolUsed,
        archiveLagSegments, archiveLagBytes, archiveLagSeconds, archiveFailing, archivedObjects, archiveRetentionDeleted,
        archiveRetentionRefused, archiveRetentionDeleteMarkers, walSent, wireSent,
        highCompressionFrames, slotRetained, slotSafeWALSize, slotWALStatus, degraded, rpoExposureBytes, rpoExposureSeconds,
    ]
}

/// One gauge time series: a metric family and its labels.
struct GaugeSeries: Hashable {
    let family: MetricFamily
    let dimensions: [(String, String)]

    init(family: MetricFamily, labels: [String: String]) {
        self.family = family
        dimensions = labels.sorted { $0.key < $1.key }
    }

    static func == (a: GaugeSeries, b: GaugeSeries) -> Bool {
        a.family == b.family && a.dimensions.elementsEqual(b.dimensions) { $0 == $1 }
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        for (key, value) in dimensions {
            hasher.combine(key)
            hasher.combine(value)
        }
    }
}

import CoreMetrics
import Foundation
import Prometheus
import StatusModel
import Synchronization
import WALCore

/// Publishes a status document as Prometheus metrics (`GET /metrics`) through swift-metrics. Values are
/// refreshed from the status at each scrape, so the metrics and `/status` never disagree.
public final class MetricsPublisher: Sendable {
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    /// Last published totals, so counters advance by the difference.
    private let totals = Mutex<[String: Double]>([:])
    /// The gauge series of the last scrape. One that is not published again (an alert that cleared, a lag
    /// that became unknown) is removed, so it does not go on showing its last value.
    private let lastGauges = Mutex<Set<GaugeSeries>>([])

    public init() {
        factory = PrometheusMetricsFactory(registry: registry)
    }

    /// The Prometheus text exposition of `status`.
    public func render(_ status: StatusDocument) -> String {
        publish(status)
        return registry.emitToString()
    }

    func publish(_ s: StatusDocument) {
        var gauges: [GaugeSeries: Double] = [:]
        func gauge(_ name: String, _ labels: [String: String], _ value: Double) {
            gauges[GaugeSeries(name: name, labels: labels)] = value
        }
        gauge("walship_up", ["role": s.role], 1)
        gauge("walship_start_time_seconds", ["role": s.role], s.process.startedAt.timeIntervalSince1970)
        if let rss = s.process.residentMemoryBytes { gauge("walship_resident_memory_bytes", ["role": s.role], Double(rss)) }
        gauge("walship_health_status", ["role": s.role], Double(HealthCheck.Code(label: s.health.status).rawValue))
        for certificate in s.certificates ?? [] {
            gauge(
                "walship_tls_certificate_expiry_timestamp_seconds", ["use": certificate.use, "path": certificate.path],
                certificate.notValidAfter.timeIntervalSince1970)
        }
        for alert in s.alerts {
            gauge("walship_alert_active", ["condition": alert.condition, "system": alert.system ?? ""], 1)
        }
        for system in s.systems {
            let id = system.systemIdentifier ?? "unknown"
            gauge("walship_link_connected", ["system": id], system.link.connected ? 1 : 0)
            if let age = system.link.lastMessageAgeSeconds { gauge("walship_link_last_message_age_seconds", ["system": id], age) }
            if let age = system.link.lastPrimaryMessageAgeSeconds {
                gauge("walship_primary_last_message_age_seconds", ["system": id], age)
            }
            if let timeline = system.timeline { gauge("walship_timeline", ["system": id], Double(timeline)) }
            if let skew = system.clockSkewSeconds { gauge("walship_clock_skew_seconds", ["system": id], skew) }
            gauge("walship_fenced", ["system": id], system.fence == nil ? 0 : 1)
            gauge("walship_standbys_connected", ["system": id], Double(system.standbys.filter(\.connected).count))
            // One series per mode, 1 for the current one (as walship_slot_wal_status), and since when it holds.
            if let mode = system.mode ?? s.sender?.mode {
                for name in ["sync", "quorum", "potential", "async", "degraded", "unknown"] {
                    gauge("walship_replication_mode", ["system": id, "mode": name], mode.mode == name ? 1 : 0)
                }
                gauge("walship_replication_mode_since_timestamp_seconds", ["system": id], mode.since.timeIntervalSince1970)
                gauge("walship_sync_not_honoured", ["system": id], mode.notHonouredSince == nil ? 0 : 1)
            }
            for stage in system.chain {
                let labels = ["system": id, "stage": stage.name]
                if let lsn = stage.lsn.flatMap({ LSN($0) }) { gauge("walship_wal_position_bytes", labels, Double(lsn.rawValue)) }
                if let bytes = stage.bytesBehind { gauge("walship_lag_bytes", labels, Double(bytes)) }
                if let seconds = stage.secondsBehind { gauge("walship_lag_seconds", labels, seconds) }
            }
        }
        if let spool = s.spool {
            if let free = spool.freeBytes { gauge("walship_spool_free_bytes", [:], Double(free)) }
            if let total = spool.totalBytes { gauge("walship_spool_size_bytes", [:], Double(total)) }
            if let used = spool.usedBytes { gauge("walship_spool_used_bytes", [:], Double(used)) }
        }
        if let sender = s.sender {
            let id = s.systems.first?.systemIdentifier ?? "unknown"
            total("walship_wal_sent_bytes_total", ["system": id], Double(sender.walBytesSent))
            total("walship_wire_sent_bytes_total", ["system": id], Double(sender.wireBytesSent))
            if let high = sender.walFramesHighCompression {
                total("walship_wal_frames_high_compression_total", ["system": id], Double(high))
            }
            let slot = ["slot": sender.slot.name]
            if let retained = sender.slot.retainedBytes { gauge("walship_slot_retained_bytes", slot, Double(retained)) }
            if let safe = sender.slot.safeWALSizeBytes { gauge("walship_slot_safe_wal_size_bytes", slot, Double(safe)) }
            for state in ["reserved", "extended", "unreserved", "lost"] {
                gauge(
                    "walship_slot_wal_status", ["slot": sender.slot.name, "wal_status": state],
                    sender.slot.walStatus == state ? 1 : 0)
            }
            if let degraded = sender.degraded {
                gauge("walship_degraded", ["system": id], degraded ? 1 : 0)
                gauge("walship_rpo_exposure_bytes", ["system": id], Double(sender.rpoExposure?.bytes ?? 0))
                gauge("walship_rpo_exposure_seconds", ["system": id], sender.rpoExposure.map { $0.seconds ?? 0 } ?? 0)
            }
        }
        let gone = lastGauges.withLock { last in
            defer { last = Set(gauges.keys) }
            return last.subtracting(gauges.keys)
        }
        for series in gone { Gauge(label: series.name, dimensions: series.dimensions, factory: factory).destroy() }
        for (series, value) in gauges { Gauge(label: series.name, dimensions: series.dimensions, factory: factory).record(value) }
    }

    private func total(_ name: String, _ labels: [String: String], _ value: Double) {
        let key = name + labels.sorted { $0.key < $1.key }.description
        let delta = totals.withLock { totals -> Double in
            let last = totals[key] ?? 0
            totals[key] = max(last, value)
            return max(0, value - last)
        }
        FloatingPointCounter(label: name, dimensions: labels.sorted { $0.key < $1.key }, factory: factory).increment(by: delta)
    }
}

/// One gauge time series: a metric name and its labels.
struct GaugeSeries: Hashable {
    let name: String
    let dimensions: [(String, String)]

    init(name: String, labels: [String: String]) {
        self.name = name
        dimensions = labels.sorted { $0.key < $1.key }
    }

    static func == (a: GaugeSeries, b: GaugeSeries) -> Bool {
        a.name == b.name && a.dimensions.elementsEqual(b.dimensions) { $0 == $1 }
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(name)
        for (key, value) in dimensions {
            hasher.combine(key)
            hasher.combine(value)
        }
    }
}

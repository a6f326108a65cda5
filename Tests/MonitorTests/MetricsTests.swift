import Foundation
import StatusModel
import StatusTestSupport
import Testing

@testable import Monitor

@Suite struct MetricsTests {
    @Test func metricsNameUnitsAndLabels() {
        let text = MetricsPublisher().render(sampleReceiver(durableBehindBytes: 1_048_576, seconds: 1.5))
        #expect(text.contains(#"walship_lag_bytes{stage="durable",system="7301"} 1048576"#))
        #expect(text.contains(#"walship_lag_seconds{stage="durable",system="7301"} 1.5"#))
        #expect(text.contains(#"walship_link_connected{system="7301"} 1"#))
        #expect(text.contains("walship_spool_free_bytes 250"))
        #expect(text.contains("# TYPE walship_lag_bytes gauge"))
        // Every metric carries the walship_ prefix.
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.hasPrefix("walship_"))
        }
    }

    @Test func seriesThatAreNoLongerPublishedDisappear() {
        let metrics = MetricsPublisher()
        let alert = StatusDocument.ActiveAlert(
            condition: "lag", severity: "warning", system: "7301", since: Date(), message: "behind")
        let firing = metrics.render(sampleReceiver(durableBehindBytes: 1 << 20, seconds: 1.5, alerts: [alert]))
        #expect(firing.contains(#"walship_alert_active{condition="lag",system="7301"} 1"#), "\(firing)")
        #expect(firing.contains(#"walship_lag_seconds{stage="durable",system="7301"} 1.5"#))
        var calm = sampleReceiver()
        calm.systems[0].chain[3] = .init(name: "durable", lsn: nil, bytesBehind: nil, secondsBehind: nil)
        let cleared = metrics.render(calm)
        #expect(!cleared.contains("walship_alert_active{"), "a cleared alert must not stay at 1: \(cleared)")
        #expect(!cleared.contains(#"walship_lag_seconds{stage="durable""#), "an unknown lag must not repeat the last value")
        #expect(cleared.contains(#"walship_lag_seconds{stage="received",system="7301"} 0"#))
        #expect(cleared.contains(#"walship_link_connected{system="7301"} 1"#))
        // And back again.
        #expect(
            metrics.render(sampleReceiver(alerts: [alert])).contains(#"walship_alert_active{condition="lag",system="7301"} 1"#))
    }

    @Test func theReplicationModeIsOneSeriesPerModeWithTheCurrentOneAtOne() {
        var status = sampleReceiver()
        status.systems[0].mode = .init(
            mode: "async", since: Date(timeIntervalSince1970: 1_800_000_000), synchronousRequested: true,
            notHonouredSince: Date(timeIntervalSince1970: 1_800_000_000))
        let text = MetricsPublisher().render(status)
        #expect(text.contains(#"walship_replication_mode{mode="async",system="7301"} 1"#), "\(text)")
        #expect(text.contains(#"walship_replication_mode{mode="sync",system="7301"} 0"#))
        #expect(text.contains(#"walship_replication_mode_since_timestamp_seconds{system="7301"} 1800000000"#))
        #expect(text.contains(#"walship_sync_not_honoured{system="7301"} 1"#))
    }

    /// Moved from `certificateExpiryWarnsThenEscalates` (StatusModelTests), with the status it had there.
    @Test func certificateExpiryIsAMetric() {
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        var status = sampleReceiver()
        status.certificates = [
            .init(use: "link", path: "/certs/0.crt", subject: "CN=dr", notValidAfter: now.addingTimeInterval(-86400))
        ]
        let text = MetricsPublisher().render(status)
        #expect(text.contains("walship_tls_certificate_expiry_timestamp_seconds{"), "\(text)")
        #expect(text.contains("use=\"link\""))
    }
}

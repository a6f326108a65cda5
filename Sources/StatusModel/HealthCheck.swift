import Foundation

/// Thresholds `walship status` judges lag by (Nagios style: warning, then critical = far behind).
public struct StatusThresholds: Sendable, Equatable {
    public var warningLagSeconds: Double
    public var criticalLagSeconds: Double
    public var warningLagBytes: UInt64
    public var criticalLagBytes: UInt64

    public init(
        warningLagSeconds: Double = 60, criticalLagSeconds: Double = 600,
        warningLagBytes: UInt64 = 64 << 20, criticalLagBytes: UInt64 = 1 << 30
    ) {
        self.warningLagSeconds = warningLagSeconds
        self.criticalLagSeconds = criticalLagSeconds
        self.warningLagBytes = warningLagBytes
        self.criticalLagBytes = criticalLagBytes
    }
}

/// Turns a status document into a verdict with the Nagios plugin exit codes, so `walship status` works
/// from cron and from any monitoring system.
public enum HealthCheck {
    public enum Code: Int32, Sendable, Comparable {
        case ok = 0, warning = 1, critical = 2, unknown = 3

        public var label: String {
            switch self {
            case .ok: "OK"
            case .warning: "WARNING"
            case .critical: "CRITICAL"
            case .unknown: "UNKNOWN"
            }
        }

        public init(label: String) {
            switch label.lowercased() {
            case "ok": self = .ok
            case "warning": self = .warning
            case "critical": self = .critical
            default: self = .unknown
            }
        }

        /// UNKNOWN ranks below CRITICAL but above WARNING: not knowing is worse than lagging.
        private var severity: Int {
            switch self {
            case .ok: 0
            case .warning: 1
            case .unknown: 2
            case .critical: 3
            }
        }

        public static func < (a: Self, b: Self) -> Bool { a.severity < b.severity }
    }

    public struct Verdict: Sendable, Equatable {
        public var code: Code
        public var reasons: [String]
        /// `CODE: first reason` (or a short all-clear), the Nagios status line.
        public var summary: String
    }

    public static func evaluate(_ status: StatusDocument, thresholds: StatusThresholds, now: Date) -> Verdict {
        var findings: [(Code, String)] = []
        for alert in status.alerts {
            findings.append((alert.severity == "critical" ? .critical : .warning, alert.message))
        }
        switch status.role {
        case "sender":
            // Beside a standby (--standby-wait) waiting is the sender's normal state.
            if status.state != "streaming", status.state != "waiting for promotion" {
                findings.append((.critical, "the sender is \(status.state)" + (status.lastError.map { ": \($0)" } ?? "")))
            }
            if status.sender?.slot.walStatus == "lost" {
                findings.append((.critical, "the replication slot was invalidated; the DR site must be re-seeded"))
            }
            if let mode = status.sender?.mode, let since = mode.notHonouredSince {
                findings.append(
                    (
                        .warning,
                        "--sync is set but the primary has not treated the sender as synchronous since \(formatISO8601(since)) (mode \(mode.mode)): commits do not wait for the DR site"
                    ))
            }
        case "receiver":
            if status.systems.isEmpty {
                findings.append((.unknown, "no source system has shipped to this receiver yet"))
            }
        default:
            findings.append((.unknown, "unexpected role \"\(status.role)\" in the status"))
        }
        // A sender beside a standby ships nothing yet: there is no lag to judge.
        for system in status.systems where status.state != "waiting for promotion" {
            let name = status.systems.count > 1 ? "system \(system.systemIdentifier ?? "?"): " : ""
            if let fence = system.fence {
                findings.append(
                    (
                        .warning,
                        name
                            + "the DR replica was promoted at \(formatISO8601(fence.promotedAt)); WAL from the old primary is refused"
                    ))
                continue
            }
            if status.role == "receiver", let mode = system.mode, let since = mode.notHonouredSince {
                findings.append(
                    (
                        .warning,
                        name
                            + "the sender runs with --sync but reported mode \(mode.mode) since \(formatISO8601(since)): commits do not wait for the DR site"
                    ))
            }
            if status.role == "receiver", !system.link.connected {
                let since = system.link.disconnectedSince.map { " for \(format(now.timeIntervalSince($0))) s" } ?? ""
                findings.append((.critical, name + "no sender connected\(since)"))
            }
            guard let stage = system.lastStage else {
                findings.append((.unknown, name + "no lag known yet"))
                continue
            }
            if let s = stage.secondsBehind {
                if s > thresholds.criticalLagSeconds {
                    findings.append(
                        (
                            .critical,
                            name
                                + "\(stage.name) is \(format(s)) s behind the primary (critical above \(format(thresholds.criticalLagSeconds)) s)"
                        ))
                } else if s > thresholds.warningLagSeconds {
                    findings.append(
                        (
                            .warning,
                            name
                                + "\(stage.name) is \(format(s)) s behind the primary (warning above \(format(thresholds.warningLagSeconds)) s)"
                        ))
                }
            }
            if let b = stage.bytesBehind {
                if b > thresholds.criticalLagBytes {
                    findings.append(
                        (
                            .critical,
                            name
                                + "\(stage.name) is \(formatBytes(b)) behind the primary (critical above \(formatBytes(thresholds.criticalLagBytes)))"
                        ))
                } else if b > thresholds.warningLagBytes {
                    findings.append(
                        (
                            .warning,
                            name
                                + "\(stage.name) is \(formatBytes(b)) behind the primary (warning above \(formatBytes(thresholds.warningLagBytes)))"
                        ))
                }
            }
        }
        let code = findings.map(\.0).max() ?? .ok
        let reasons = findings.sorted { $0.0 > $1.0 }.map(\.1)
        let summary: String
        if let first = reasons.first {
            summary = "\(code.label): \(first)" + (reasons.count > 1 ? " (+\(reasons.count - 1) more)" : "")
        } else {
            let lag = status.systems.compactMap(\.lastStage).map { stage in
                "\(stage.name) \(stage.bytesBehind.map(formatBytes) ?? "?") / \(stage.secondsBehind.map { format($0) + " s" } ?? "?") behind"
            }
            summary = "OK: walship \(status.role) \(status.state)" + (lag.isEmpty ? "" : ", " + lag.joined(separator: "; "))
        }
        return Verdict(code: code, reasons: reasons, summary: summary)
    }

    /// A verdict for when the status cannot be read at all.
    public static func unreadable(_ why: String) -> Verdict {
        Verdict(code: .unknown, reasons: [why], summary: "UNKNOWN: \(why)")
    }
}

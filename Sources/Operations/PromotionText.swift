import Foundation
import Monitor
import StatusModel

extension PromotionReport {
    /// One line for a notice: what was promoted and its figures, or why it was not.
    public func headline(failure: String?) -> String {
        if kind == "drill" {
            return failure.map { "disaster-recovery drill failed: \($0)" }
                ?? "disaster-recovery drill passed: RPO \(rpo.map { "\(formatBytes($0.bytes)) / \($0.seconds) s" } ?? "?"), RTO \(rtoSeconds.map { "\($0) s" } ?? "?")"
        }
        if let failure { return "promotion of \(standbyName) \(outcome): \(failure)" }
        return
            "promoted \(standbyName) to timeline \(promotedTimeline.map(String.init) ?? "?"): RPO \(rpo.map { "\(formatBytes($0.bytes)) / \($0.seconds) s" } ?? "not measured"), RTO \(rtoSeconds.map { "\($0) s" } ?? "?")"
    }

    /// The standby in a headline: its data directory, or its connection when it has none here.
    var standbyName: String { dataDirectory ?? standby.map { "the standby at \($0)" } ?? "the standby" }

    /// What `walship promote` and `walship drill` print at the end: outcome, figures, failed checks.
    public var summary: String {
        var lines = ["", "== \(kind == "drill" ? "drill" : "promotion") \(outcome)"]
        if let tli = promotedTimeline { lines.append("promoted timeline:        \(tli)") }
        if let lsn = lastReplayedLSN {
            lines.append(
                "last replayed:            \(lsn), last commit \(lastReplayedCommitTime.map(formatISO8601) ?? "none replayed")")
        }
        if let rpo {
            lines.append(
                "RPO (acknowledged lost):  \(formatBytes(rpo.bytes)), \(rpo.seconds) s\(everyAcknowledgedCommitPresent == true ? "  (every acknowledged commit is present)" : rpo.bytes == 0 ? "  (of what the receiver acknowledged)" : "")"
            )
        } else if outcome == "promoted" {
            lines.append("RPO:                      not measured (no spool information)")
        }
        if let tail = unacknowledgedTail {
            lines.append(
                "unacknowledged tail:      \(formatBytes(tail.bytes)), \(tail.seconds) s  (written by the old primary, never confirmed)"
            )
        }
        if let mode = modeAtLoss { lines.append("mode at the loss:         \(mode)") }
        if let loss, everyAcknowledgedCommitPresent != true { lines.append("acknowledged commits:     \(loss)") }
        if let rto = rtoSeconds { lines.append("RTO (to first write):     \(rto) s") }
        for check in checks where !check.passed { lines.append("check failed: \(check.name): \(check.detail)") }
        return lines.joined(separator: "\n")
    }
}

/// Sends the success or failure notice of `walship promote` or `walship drill` (`command`), naming the
/// report written (if any) and its RPO and RTO figures.
public func sendConclusionNotice(
    _ report: PromotionReport, command: String, success: Bool, headline: String, reportPath: String?,
    notifier: AlertNotifier
) async {
    guard notifier.hasDestination else { return }
    await StatusMonitor.notice(
        success ? .success : .failure, condition: command, role: command, system: report.systemIdentifier,
        message: headline, details: conclusionDetails(report, reportPath: reportPath), notifier: notifier)
}

/// The figures a conclusion notice carries: empty strings where there is none.
func conclusionDetails(_ report: PromotionReport, reportPath: String?) -> [String: String] {
    [
        "report": reportPath ?? "", "rpo_bytes": report.rpo.map { String($0.bytes) } ?? "",
        "rto_seconds": report.rtoSeconds.map { String($0) } ?? "",
    ]
}

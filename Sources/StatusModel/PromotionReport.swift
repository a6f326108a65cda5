import Foundation
import WALCore

/// The evidence `walship promote` and `walship drill` leave behind (JSON and Markdown): what was checked,
/// the recovery point against what the primary was told is safe, the unacknowledged tail, and the time
/// to the first accepted write.
public struct PromotionReport: Codable, Sendable, Equatable {
    /// "promote" or "drill".
    public var kind: String
    /// "promoted", or "refused" / "failed" with the reason among the checks.
    public var outcome: String
    public var host: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var systemIdentifier: String?
    public var dataDirectory: String
    /// The standby's conninfo with any password removed.
    public var standby: String?
    public var promotedTimeline: UInt32?
    public var lastReplayedLSN: String?
    /// Commit time of the last transaction replayed before promotion (the primary's clock).
    public var lastReplayedCommitTime: Date?
    /// The end of the WAL the spool held when the replica was promoted (the receiver never acknowledges beyond it).
    public var spoolEndLSN: String?
    public var lastAcknowledgedLSN: String?
    public var lastAcknowledgedAt: Date?
    public var primaryLastKnownLSN: String?
    public var primaryLastKnownAt: Date?
    public var rpo: RecoveryPoint?
    public var unacknowledgedTail: RecoveryPoint?
    public var rtoSeconds: Double?
    public var firstWriteAt: Date?
    public var checks: [Check]
    public var drill: DrillDetails?

    public init(kind: String, host: String, startedAt: Date, dataDirectory: String) {
        self.kind = kind
        self.outcome = "failed"
        self.host = host
        self.startedAt = startedAt
        self.dataDirectory = dataDirectory
        self.checks = []
    }

    public struct RecoveryPoint: Codable, Sendable, Equatable {
        public var bytes: UInt64
        public var seconds: Double
        /// How the figure was obtained, in words.
        public var basis: String

        public init(bytes: UInt64, seconds: Double, basis: String) {
            self.bytes = bytes
            self.seconds = seconds
            self.basis = basis
        }
    }

    public struct Check: Codable, Sendable, Equatable {
        public var name: String
        public var passed: Bool
        public var detail: String

        public init(name: String, passed: Bool, detail: String) {
            self.name = name
            self.passed = passed
            self.detail = detail
        }
    }

    public struct DrillDetails: Codable, Sendable, Equatable {
        public var backupID: String
        public var port: Int
        public var checkSQL: String?
        public var checkResult: [[String]]?
        public var kept: Bool
        /// The protected DR standby's replay position before and after the drill, when it was observed.
        public var drStandbyReplayBefore: String?
        public var drStandbyReplayAfter: String?

        public init(
            backupID: String, port: Int, checkSQL: String?, checkResult: [[String]]?, kept: Bool,
            drStandbyReplayBefore: String?, drStandbyReplayAfter: String?
        ) {
            self.backupID = backupID
            self.port = port
            self.checkSQL = checkSQL
            self.checkResult = checkResult
            self.kept = kept
            self.drStandbyReplayBefore = drStandbyReplayBefore
            self.drStandbyReplayAfter = drStandbyReplayAfter
        }
    }

    public mutating func check(_ name: String, _ passed: Bool, _ detail: String) {
        checks.append(Check(name: name, passed: passed, detail: detail))
    }

    /// Fills `rpo` and `unacknowledgedTail` from the positions gathered.
    ///
    /// RPO is measured against the furthest position the primary can have been told is durable: the
    /// receiver acknowledges only WAL it fsynced, so neither its last acknowledgement nor anything it held
    /// can exceed the spool's end. When replay reached that, no acknowledged commit is lost (0 bytes, 0 s).
    /// The tail is what the primary was last known to have written beyond replay: possibly committed
    /// locally, never confirmed to any client by a synchronous primary.
    public mutating func measureRecoveryPoint() {
        guard let replayed = lastReplayedLSN.flatMap({ LSN($0) }) else { return }
        let acknowledged = [lastAcknowledgedLSN, spoolEndLSN].compactMap { $0.flatMap { LSN($0) } }.max()
        if let acknowledged {
            let bytes = acknowledged.bytesAfter(replayed)
            var seconds = 0.0
            if bytes > 0, let replayedAt = lastReplayedCommitTime, let at = lastAcknowledgedAt ?? primaryLastKnownAt {
                seconds = max(0, at.timeIntervalSince(replayedAt))
            }
            rpo = RecoveryPoint(
                bytes: bytes, seconds: (seconds * 1000).rounded() / 1000,
                basis: bytes == 0
                    ? "replay reached \(acknowledged), the furthest WAL the receiver held or acknowledged: every acknowledged commit is present"
                    : "replay stopped at \(replayed), \(bytes) bytes short of \(acknowledged) (the furthest WAL the receiver held or acknowledged); seconds from the last replayed commit to the last acknowledgement"
            )
        }
        if let primary = primaryLastKnownLSN.flatMap({ LSN($0) }) {
            let bytes = primary.bytesAfter(replayed)
            var seconds = 0.0
            if bytes > 0, let replayedAt = lastReplayedCommitTime, let at = primaryLastKnownAt {
                seconds = max(0, at.timeIntervalSince(replayedAt))
            }
            unacknowledgedTail = RecoveryPoint(
                bytes: bytes, seconds: (seconds * 1000).rounded() / 1000,
                basis: "the primary's last reported end of WAL (\(primary)) minus the replayed position")
        }
    }

    public var markdown: String {
        var lines: [String] = []
        let title = kind == "drill" ? "walship disaster-recovery drill" : "walship promotion"
        lines.append("# \(title): \(outcome)")
        lines.append("")
        lines.append("| | |")
        lines.append("|---|---|")
        func row(_ name: String, _ value: String?) {
            if let value { lines.append("| \(name) | \(value.replacingOccurrences(of: "|", with: "\\|")) |") }
        }
        row("Host", host)
        row("Started", formatISO8601(startedAt))
        row("Finished", finishedAt.map(formatISO8601))
        row("System identifier", systemIdentifier)
        row("Data directory", dataDirectory)
        row("Standby", standby)
        row("Promoted timeline", promotedTimeline.map(String.init))
        row("Last replayed LSN", lastReplayedLSN)
        row("Last replayed commit", lastReplayedCommitTime.map(formatISO8601))
        row("Spool end", spoolEndLSN)
        row("Last acknowledged", lastAcknowledgedLSN.map { "\($0) at \(lastAcknowledgedAt.map(formatISO8601) ?? "?")" })
        row("Primary last known", primaryLastKnownLSN.map { "\($0) at \(primaryLastKnownAt.map(formatISO8601) ?? "?")" })
        row(
            "**RPO** (acknowledged commits lost)",
            rpo.map { "\(formatBytes($0.bytes)), \(format($0.seconds)) s" } ?? "not measured")
        row("Unacknowledged tail", unacknowledgedTail.map { "\(formatBytes($0.bytes)), \(format($0.seconds)) s" } ?? "not known")
        row("**RTO** (start to first accepted write)", rtoSeconds.map { "\(format($0)) s" })
        if let drill {
            row("Backup", drill.backupID)
            row("Throwaway copy port", String(drill.port))
            row("Check query", drill.checkSQL)
            row("Check result", drill.checkResult.map { $0.map { $0.joined(separator: ", ") }.joined(separator: "; ") })
            row("Copy kept", drill.kept ? "yes" : "no (removed)")
            row(
                "DR standby replay before / after",
                drill.drStandbyReplayBefore.map { "\($0) / \(drill.drStandbyReplayAfter ?? "?")" })
        }
        if let rpo { lines += ["", "RPO basis: \(rpo.basis)."] }
        lines += ["", "## Checks", ""]
        for check in checks { lines.append("- [\(check.passed ? "x" : " ")] **\(check.name)**: \(check.detail)") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes `<base>.json` and `<base>.md`; returns both paths.
    public func write(base: String) throws -> (json: String, markdown: String) {
        var base = base
        for suffix in [".json", ".md"] where base.hasSuffix(suffix) { base.removeLast(suffix.count) }
        let json = base + ".json", md = base + ".md"
        try StatusDocument.encoder().encode(self).write(to: URL(fileURLWithPath: json))
        try Data(markdown.utf8).write(to: URL(fileURLWithPath: md))
        return (json, md)
    }
}

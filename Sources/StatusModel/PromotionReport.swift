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
    /// The standby's data directory; nil (the key left out) for a standby promoted over SQL alone (`--standby`
    /// without `--pgdata`), which has none on this host: `standby` names it then.
    public var dataDirectory: String?
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
    /// How the primary treated the DR link at the last contact: "sync", "async", "degraded" or "unknown".
    public var modeAtLoss: String?
    /// The mode history of the last 24 hours before the promotion, oldest first.
    public var modeHistory: [ModeEpisode]?
    /// The last time the receiver heard from the primary (WAL or keepalive), and its position then.
    public var lastContactAt: Date?
    public var lastContactLSN: String?
    /// Whether the report may say that every commit the primary acknowledged is present (RPO 0): only when the
    /// primary waited for the DR site, with nothing acknowledged otherwise, from before replay's end to the loss.
    public var everyAcknowledgedCommitPresent: Bool?
    /// What can be proven about commits the primary acknowledged, in words.
    public var loss: String?

    public init(kind: String, host: String, startedAt: Date, dataDirectory: String?) {
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

    /// One entry of the mode history as the report shows it.
    public struct ModeEpisode: Codable, Sendable, Equatable {
        /// sync, quorum, potential, async, degraded or unknown.
        public var mode: String
        /// When it began (the primary's clock), and the primary's position then.
        public var at: Date
        public var lsn: String?
        public var syncState: String?
        /// The sender's rule while it held: block, degrade-after N s, none; nil when the sender did not say.
        public var receiverLoss: String?
        /// While degraded: acknowledged WAL the DR site lacked.
        public var exposureBytes: UInt64?
        public var detail: String?

        public init(
            mode: String, at: Date, lsn: String? = nil, syncState: String? = nil, receiverLoss: String? = nil,
            exposureBytes: UInt64? = nil, detail: String? = nil
        ) {
            self.mode = mode
            self.at = at
            self.lsn = lsn
            self.syncState = syncState
            self.receiverLoss = receiverLoss
            self.exposureBytes = exposureBytes
            self.detail = detail
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
        /// Seconds from the start to the copy having replayed the spool (unpacking the backup and replay).
        public var restoreSeconds: Double?
        /// Seconds from then to the first write accepted: what a real promotion of a replaying standby takes.
        public var promotionSeconds: Double?
        /// The copy's server log, kept beside the report.
        public var serverLog: String?

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
                    ? "replay reached \(acknowledged), the furthest WAL the receiver held or acknowledged"
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

    /// Judges, from the mode history, what the report may say about commits the primary acknowledged; call after
    /// `measureRecoveryPoint`. `history` holds the mode entries oldest first, each with the receiver-loss rule of the
    /// link it came on; `promotedAt` is when the promotion (or the drill's cut) happened.
    public mutating func judgeLoss(history: [ModeEpisode], promotedAt: Date) {
        modeHistory = history.filter { promotedAt.timeIntervalSince($0.at) <= 86400 }
        if let last = history.last(where: { promotedAt.timeIntervalSince($0.at) > 86400 }),
            modeHistory?.first.map({ $0.at > last.at }) ?? true
        {
            // The mode in force when the 24 hours began.
            modeHistory?.insert(last, at: 0)
        }
        // The primary's own report; an acknowledgement only says the receiver was alive (a sender may go on
        // linking, and acknowledgements go on, after its primary died). Without one, the older of the two.
        lastContactAt = primaryLastKnownAt ?? lastAcknowledgedAt
        lastContactLSN = primaryLastKnownAt != nil ? primaryLastKnownLSN : (primaryLastKnownLSN ?? lastAcknowledgedLSN)
        let contact =
            lastContactAt.map {
                "the primary was last heard at \(formatISO8601($0))\(lastContactLSN.map { " (position \($0))" } ?? "")"
            }
            ?? "when the primary was last heard is not recorded"
        let unknownAfter = "what the primary acknowledged after that is unknown"

        guard let latest = history.last else {
            modeAtLoss = "unknown"
            everyAcknowledgedCommitPresent = false
            loss =
                "no mode history is recorded for this system (a sender older than walship's mode reports, or none has connected since): whether the primary waited for the DR site is unknown, so commits it acknowledged may be missing; \(contact), and \(unknownAfter)"
            return
        }
        let silence = lastContactAt.map { promotedAt.timeIntervalSince($0) }
        switch latest.mode {
        case "sync":
            if latest.receiverLoss == "block" {
                modeAtLoss = "sync"
            } else if let rule = latest.receiverLoss, rule.hasPrefix("degrade-after"),
                let seconds = Double(rule.split(separator: " ").dropFirst().first ?? "")
            {
                // Past its delay the sender may have acknowledged from its buffer, and nobody could tell us.
                modeAtLoss = (silence ?? .infinity) > seconds ? "degraded" : "sync"
            } else {
                modeAtLoss = "unknown"
            }
        case "degraded": modeAtLoss = "degraded"
        case "quorum", "potential", "async": modeAtLoss = "async"
        default: modeAtLoss = "unknown"
        }

        // The run of sync entries the loss ended, and where it began.
        var runStart = history.count - 1
        while runStart > 0 && history[runStart - 1].mode == "sync" && history[runStart - 1].receiverLoss != nil {
            runStart -= 1
        }
        let syncSince = history[runStart]
        let replayed = lastReplayedLSN.flatMap { LSN($0) }
        let coversReplay =
            syncSince.lsn.flatMap { LSN($0) }.map { start in replayed.map { start <= $0 } ?? false } ?? false
        if modeAtLoss == "sync", coversReplay, rpo?.bytes == 0 {
            everyAcknowledgedCommitPresent = true
            loss =
                "every acknowledged commit is present: the primary waited for the DR site (sync_state sync, receiver loss \(latest.receiverLoss ?? "?")) from \(formatISO8601(syncSince.at)) (position \(syncSince.lsn ?? "?")) to the loss, and replay reached all the receiver acknowledged. This holds for commits made with synchronous_commit on or remote_apply; a session that set it to remote_write, local or off was never promised the DR site"
            return
        }
        everyAcknowledgedCommitPresent = false
        switch modeAtLoss {
        case "sync":
            loss =
                "commits the primary acknowledged may be missing: the primary waited for the DR site only from \(formatISO8601(syncSince.at)) (position \(syncSince.lsn ?? "?")), after replay's end, or replay fell short of what the receiver acknowledged; \(tailBound(contact))"
        case "degraded":
            let exposure = history.last { $0.mode == "degraded" }?.exposureBytes
            let episode =
                latest.mode == "degraded"
                ? "the sender was acknowledging commits from its local buffer since \(formatISO8601(latest.at))\(exposure.map { ", with \(formatBytes($0)) of acknowledged WAL not at the DR site when last reported" } ?? "")"
                : "the link's rule is \(latest.receiverLoss ?? "degrade-after") and it was silent for \(silence.map { format($0) + " s" } ?? "an unknown time") before the promotion, so the sender may have acknowledged commits from its local buffer"
            loss = "commits the primary acknowledged may be missing: \(episode); \(contact), and \(unknownAfter)"
        case "async":
            loss =
                "commits the primary acknowledged may be missing: the link was \(latest.mode) at the loss (\(latest.detail ?? "sync_state \(latest.syncState ?? "?")")), so commits did not wait for the DR site; \(tailBound(contact))"
        default:
            loss =
                "commits the primary acknowledged may be missing: how the primary treated the DR link at the loss is unknown (\(latest.detail ?? "no readable sync_state")); \(contact), and \(unknownAfter)"
        }
    }

    /// The bound the primary's last report gives, and what it cannot cover.
    private func tailBound(_ contact: String) -> String {
        guard let tail = unacknowledgedTail else {
            return "\(contact), and what the primary acknowledged after that is unknown"
        }
        return
            "at most \(formatBytes(tail.bytes)) (\(format(tail.seconds)) s) up to the primary's last report, measured as its last reported end of WAL minus the replayed position; \(contact), and what the primary acknowledged after that is unknown"
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
        row(
            kind == "drill" ? "**RTO** (promotion to first accepted write)" : "**RTO** (start to first accepted write)",
            rtoSeconds.map { "\(format($0)) s" })
        if let drill {
            row("Backup", drill.backupID)
            row("Throwaway copy port", String(drill.port))
            row("Check query", drill.checkSQL)
            row("Check result", drill.checkResult.map { $0.map { $0.joined(separator: ", ") }.joined(separator: "; ") })
            row("Copy kept", drill.kept ? "yes" : "no (removed)")
            row("Restore (unpack and replay)", drill.restoreSeconds.map { "\(format($0)) s" })
            row("Promotion (the RTO of a real promotion)", drill.promotionSeconds.map { "\(format($0)) s" })
            row("Server log of the copy", drill.serverLog)
            row(
                "DR standby replay before / after",
                drill.drStandbyReplayBefore.map { "\($0) / \(drill.drStandbyReplayAfter ?? "?")" })
        }
        if let rpo { lines += ["", "RPO basis: \(rpo.basis)."] }
        if let modeAtLoss {
            lines += ["", "## Acknowledged commits", ""]
            lines.append("Mode at the loss: **\(modeAtLoss)**.")
            if let loss { lines += ["", loss.prefix(1).uppercased() + loss.dropFirst() + "."] }
            if let history = modeHistory, !history.isEmpty {
                lines += ["", "Mode history (24 hours before the promotion):", ""]
                for episode in history {
                    var line = "- \(formatISO8601(episode.at)): \(episode.mode)"
                    if let lsn = episode.lsn { line += " at \(lsn)" }
                    if let rule = episode.receiverLoss { line += ", receiver loss \(rule)" }
                    if let bytes = episode.exposureBytes { line += ", exposure \(formatBytes(bytes))" }
                    if let detail = episode.detail { line += " (\(detail))" }
                    lines.append(line)
                }
            } else {
                lines += ["", "No mode history was recorded in the 24 hours before the promotion."]
            }
        }
        lines += ["", "## Checks", ""]
        for check in checks { lines.append("- [\(check.passed ? "x" : " ")] **\(check.name)**: \(check.detail)") }
        if kind == "promote" && outcome == "promoted" {
            lines += [
                "", "## Next steps", "",
                "1. Keep the old primary down: it must not take writes again (the receiver refuses its WAL; fence it at the network or power too).",
                "2. Point the applications at the new primary.",
                "3. Take a base backup of the new primary: the DR site's protection starts again from it.",
                "4. Check an `archive_command` the new primary inherited from the old one: it may write to the old site's archive.",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes `<base>.json` and `<base>.md`; returns both paths.
    public func write(base: String) throws -> (json: String, markdown: String) {
        try writeReport(self, markdown: markdown, base: base)
    }
}

/// Writes an evidence report as `base`.json (the status document's encoding) and `base`.md; a `base` given with
/// either suffix loses it. Returns both paths.
public func writeReport(_ report: some Encodable, markdown: String, base: String) throws -> (json: String, markdown: String) {
    var base = base
    for suffix in [".json", ".md"] where base.hasSuffix(suffix) { base.removeLast(suffix.count) }
    let json = base + ".json", md = base + ".md"
    try StatusDocument.encoder().encode(report).write(to: URL(fileURLWithPath: json))
    try Data(markdown.utf8).write(to: URL(fileURLWithPath: md))
    return (json, md)
}

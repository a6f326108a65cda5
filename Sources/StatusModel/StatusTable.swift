import Foundation

/// The human-readable form of a status document, for `walship status` in a terminal.
public enum StatusTable {
    /// `promotion ready: …` or `promotion not ready: …`, and whether the lost link was synchronous.
    static func promotionLine(_ report: ReadinessReport) -> String {
        var line = "promotion " + report.verdict
        if let synchronous = report.linkSynchronousWhenLost {
            line += synchronous ? " [the link was synchronous when lost]" : " [the link was NOT synchronous when lost]"
        }
        return line
    }

    /// `mode sync since … (sync_state sync, receiver loss block)`, and in capitals when --sync is not honoured.
    static func modeLine(_ mode: StatusDocument.ModeStatus, now: Date) -> String {
        var line =
            mode.notHonouredSince != nil
            ? "mode \(mode.mode.uppercased()) (SYNC REQUESTED, NOT HONOURED)" : "mode \(mode.mode)"
        line += " since \(formatISO8601(mode.since)) (\(formatDuration(now.timeIntervalSince(mode.since))))"
        var facts: [String] = []
        if let state = mode.syncState { facts.append("sync_state \(state)") }
        if let loss = mode.receiverLoss { facts.append("receiver loss \(loss)") }
        if !facts.isEmpty { line += ", " + facts.joined(separator: ", ") }
        return line
    }

    /// `archive s3://b/p/7/: 3 files (48.0 MB) behind, oldest 2m05s; 120 archived, FAILING since …: error`.
    static func archiveLine(_ archive: StatusDocument.ArchiveStatus, now: Date) -> String {
        var line = "archive \(archive.destination): "
        line +=
            archive.lagSegments == 0
            ? "up to date"
            : "\(archive.lagSegments) files (\(formatBytes(archive.lagBytes))) behind"
                + (archive.lagSeconds.map { ", oldest \(formatDuration($0))" } ?? "")
        line += "; \(archive.archivedObjects) archived"
        line += archive.encryptionKeyID.map { ", encrypted (key \($0))" } ?? ", NOT encrypted"
        if let deleted = archive.retentionDeletedObjects {
            line += "; retention deleted \(deleted)"
            if let markers = archive.retentionDeleteMarkers, markers > 0 {
                line += " (\(markers) kept by the bucket as older versions)"
            }
            if let refused = archive.retentionRefusedObjects, refused > 0 { line += ", \(refused) refused (object lock?)" }
        }
        if archive.failing {
            line += ", FAILING" + (archive.failingSince.map { " since \(formatISO8601($0))" } ?? "")
            line += ": \(archive.lastError ?? "unknown error")"
        } else if archive.consecutiveFailures > 0, let error = archive.lastError {
            line += ", retrying after: \(error)"
        }
        return line
    }

    public static func render(_ s: StatusDocument, verdict: HealthCheck.Verdict, now: Date = Date()) -> String {
        var out: [String] = []
        let memory = s.process.residentMemoryBytes.map { ", memory \(formatBytes($0))" } ?? ""
        out.append(
            "walship \(s.role) on \(s.host) (pid \(s.process.pid), up \(formatDuration(now.timeIntervalSince(s.process.startedAt)))\(memory)): \(s.state) for \(formatDuration(now.timeIntervalSince(s.stateSince)))"
        )
        if let error = s.lastError, s.state != "streaming" && s.state != "listening" { out.append("last error: \(error)") }
        if let spool = s.spool {
            var line = "spool \(spool.path):"
            if let free = spool.freeBytes, let total = spool.totalBytes {
                line += " \(formatBytes(free)) free of \(formatBytes(total))"
                if let p = spool.freePercent { line += " (\(format(p)) %)" }
            }
            if let used = spool.usedBytes { line += ", walship uses \(formatBytes(used))" }
            out.append(line)
        }
        if let sender = s.sender {
            var line = "source \(sender.source) → receiver \(sender.receiver)\(sender.synchronous ? " (synchronous)" : "")"
            if let ratio = sender.compressionRatio {
                line +=
                    ", \(formatBytes(sender.walBytesSent)) WAL sent as \(formatBytes(sender.wireBytesSent)) (\(format(ratio))×)"
            }
            out.append(line)
            var slot = "slot \(sender.slot.name): wal_status \(sender.slot.walStatus ?? "?")"
            if let retained = sender.slot.retainedBytes { slot += ", primary retains \(formatBytes(UInt64(max(0, retained))))" }
            if let safe = sender.slot.safeWALSizeBytes { slot += ", \(formatBytes(UInt64(max(0, safe)))) until invalidation" }
            out.append(slot)
            if let mode = sender.mode { out.append(modeLine(mode, now: now)) }
        }
        for system in s.systems {
            out.append("")
            var head = "system \(system.systemIdentifier ?? "?")"
            if let tli = system.timeline { head += ", timeline \(tli)" }
            let link = system.link
            if link.connected {
                head += ", link up"
                if let peer = link.peer {
                    head += " (\(link.senderName.map { "\($0)@" } ?? "")\(peer)\(link.synchronous == true ? ", sync" : ""))"
                }
                if let age = link.lastMessageAgeSeconds { head += ", last message \(format(age)) s ago" }
            } else {
                head += ", LINK DOWN"
                if let since = link.disconnectedSince { head += " for \(formatDuration(now.timeIntervalSince(since)))" }
            }
            out.append(head)
            if s.sender == nil, let mode = system.mode { out.append("  " + modeLine(mode, now: now)) }
            if let promotion = system.promotion { out.append("  " + promotionLine(promotion)) }
            if let fence = system.fence { out.append("  FENCED: " + fence.summary) }
            let rows = system.chain.map { stage in
                [
                    stage.name, stage.lsn ?? "-", stage.bytesBehind.map(formatBytes) ?? "-",
                    stage.secondsBehind.map { format($0) + " s" } ?? "-",
                ]
            }
            out.append(contentsOf: table(header: ["STAGE", "LSN", "BEHIND", "BEHIND (TIME)"], rows: rows).map { "  " + $0 })
            if let committed = system.lastReplayedCommitTime {
                out.append(
                    "  last replayed commit: \(formatISO8601(committed)) (primary's clock)\(system.lastReplayedCommitLSN.map { ", record ending at \($0)" } ?? "")"
                )
            } else if s.role == "receiver", system.stage(.replayed)?.lsn != nil {
                out.append("  last replayed commit: none found in the spool's WAL before the replayed position")
            }
            if let backup = system.newestBackup {
                out.append(
                    "  newest backup: \(backup.id), taken \(formatISO8601(backup.takenAt)) (\(formatDuration(now.timeIntervalSince(backup.takenAt))) ago), ends at \(backup.stopLSN)"
                )
            } else if s.role == "receiver", system.timeline != nil {
                out.append("  newest backup: NONE complete (hint: walship backup; a restore needs one)")
            }
            if let archive = system.archive { out.append("  " + archiveLine(archive, now: now)) }
            if let skew = system.clockSkewSeconds, abs(skew) >= 1 {
                out.append(
                    "  note: the primary's clock is \(format(abs(skew))) s \(skew > 0 ? "ahead of" : "behind") this host's; lag in seconds uses the primary's clock"
                )
            }
            for standby in system.standbys {
                out.append(
                    "  standby \(standby.name): \(standby.connected ? "connected" : "not connected"), replayed \(standby.replayedLSN)"
                )
            }
        }
        out.append("")
        if s.alerts.isEmpty {
            out.append("alerts: none")
        } else {
            out.append("alerts:")
            for alert in s.alerts {
                out.append(
                    "  \(alert.severity.uppercased()) \(alert.condition)\(alert.system.map { " [\($0)]" } ?? "") since \(formatISO8601(alert.since)): \(alert.message)"
                )
            }
        }
        out.append(verdict.summary)
        return out.joined(separator: "\n")
    }

    static func table(header: [String], rows: [[String]]) -> [String] {
        let all = [header] + rows
        let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
        return all.map { row in
            row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
    }

    /// 42s, 5m03s, 2h05m, 3d04h.
    public static func formatDuration(_ seconds: Double) -> String {
        let s = Int(max(0, seconds))
        switch s {
        case ..<60: return "\(s)s"
        case ..<3600: return String(format: "%dm%02ds", s / 60, s % 60)
        case ..<86400: return String(format: "%dh%02dm", s / 3600, s % 3600 / 60)
        default: return String(format: "%dd%02dh", s / 86400, s % 86400 / 3600)
        }
    }
}

func formatDuration(_ seconds: Double) -> String { StatusTable.formatDuration(seconds) }

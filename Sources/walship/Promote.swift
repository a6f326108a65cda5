import ArgumentParser
import Foundation
import Monitor
import Operations
import PGReplication
import Spool
import StatusModel
import WALCore

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Promote the DR replica after everything the receiver holds is replayed; report RPO and RTO.",
        discussion: """
            Waits until the standby has replayed all WAL in the spool (including the in-progress segment), fences the system at the receiver so a returning old primary cannot extend the old timeline at the DR site, promotes the standby, waits for its first accepted write, and writes an evidence report (JSON and Markdown).
            Exit status: 0 promoted; 1 refused or failed (nothing was promoted unless the output says so).
            Example:
              walship promote --pgdata /var/lib/postgresql/15/dr --spool /var/lib/walship
            """)

    @Option(help: "Data directory of the DR standby.")
    var pgdata: String

    @Option(help: "libpq connection string of the standby (default: its local socket, as the data directory's owner).")
    var standby: String?

    @Option(help: "Spool of walship receive: what the standby must replay first, the RPO figures, and the fence.")
    var spool: String?

    @Option(help: "System identifier, when the spool holds several (default: the standby's).")
    var system: UInt64?

    @Option(help: "Seconds to wait for replay to reach the end of the spool, and then for the promotion.")
    var timeout: Int = 120

    @Option(
        help:
            "Write the report to FILE.json and FILE.md (default: walship-promote-<time> in the spool's system directory, or here)."
    )
    var report: String?

    @Flag(
        help:
            "Promote even if the standby does not look like a walship replica, cannot reach all received WAL, or the fence cannot be written."
    )
    var force = false

    @OptionGroup var notice: NoticeOptions

    func validate() throws {
        guard timeout >= 1 else { throw ValidationError("--timeout must be at least 1 second") }
    }

    func run() async throws {
        let clockStart = ContinuousClock.now
        let dataDirectory = absolutePath(pgdata)
        var evidence = PromotionReport(
            kind: "promote", host: ProcessInfo.processInfo.hostName, startedAt: Date(),
            dataDirectory: dataDirectory)
        var reportBase = report.map(absolutePath)
        let notifier = notice.notifier("walship.promote")
        let session: SQLSession
        do {
            let cluster = try LocalCluster(dataDirectory: dataDirectory)
            let conninfo = try Conninfo(try standby ?? cluster.socketConninfo())
            evidence.standby = conninfo.description
            session = SQLSession(conninfo: conninfo, applicationName: "walship_promote")
            do { try await cluster.connect(session) } catch {
                throw PromoteError("cannot connect to the standby (\(conninfo)): \(error)")
            }
        } catch {
            return try await finish(&evidence, base: reportBase, failure: "\(error)", notifier: notifier)
        }
        defer { Task { await session.close() } }
        do {
            try await promote(session: session, evidence: &evidence, reportBase: &reportBase, clockStart: clockStart)
            try await finish(&evidence, base: reportBase, failure: nil, notifier: notifier)
        } catch let error as ExitCode {
            throw error
        } catch {
            try await finish(&evidence, base: reportBase, failure: "\(error)", notifier: notifier)
        }
    }

    private func promote(
        session: SQLSession, evidence: inout PromotionReport, reportBase: inout String?,
        clockStart: ContinuousClock.Instant
    ) async throws {
        let steps = PromotionSteps(session: session) { say($0) }
        let deadline = clockStart + .seconds(timeout)
        let facts = try await session.query(
            """
            SELECT pg_is_in_recovery()::text, (SELECT system_identifier FROM pg_control_system())::text,
                   current_setting('primary_conninfo'), current_setting('restore_command')
            """)[0]
        evidence.systemIdentifier = facts[1]
        guard facts[0] == "true" else {
            evidence.check(
                "standby in recovery", false, "the server is not in recovery: it was already promoted (or is a primary)")
            throw PromoteError(
                "the server of \(evidence.dataDirectory) is not a standby: it is already promoted (or a primary); nothing to do")
        }
        evidence.check("standby in recovery", true, "pg_is_in_recovery() is true")
        guard let standbySystem = facts[1].flatMap({ UInt64($0) }) else {
            throw PromoteError("cannot read the standby's system identifier")
        }

        // The spool: what must be replayed, the figures for the RPO, and where the fence goes.
        var reader: SpoolReader?
        if let spool {
            let root = absolutePath(spool)
            let chosen = try SpoolReader(root: root, system: system ?? standbySystem)
            guard chosen.systemIdentifier == standbySystem else {
                evidence.check(
                    "system matches the spool", false,
                    "standby is system \(standbySystem), the spool's is \(chosen.systemIdentifier)")
                throw PromoteError(
                    "the standby is database system \(standbySystem) but the spool holds system \(chosen.systemIdentifier): it is not a replica of this spool"
                )
            }
            evidence.check("system matches the spool", true, "system \(standbySystem)")
            reader = chosen
            if reportBase == nil { reportBase = defaultReportBase(kind: "promote", directory: chosen.systemDirectory) }
            let receiver = try? ReceiverRecord.load(root: root)
            let isWalshipReplica =
                Self.pointsAt(primaryConninfo: facts[2] ?? "", standbyListen: receiver?.standbyListen)
                || (facts[3] ?? "").contains("restore-wal")
            if !isWalshipReplica {
                evidence.check(
                    "replicates from walship", false,
                    "primary_conninfo does not name the receiver's standby endpoint (\(receiver?.standbyListen ?? "none recorded")) and restore_command does not use walship restore-wal"
                )
                guard force else {
                    throw PromoteError(
                        "the standby does not replicate from this walship receiver: its primary_conninfo does not name the standby endpoint \(receiver?.standbyListen ?? "(none recorded in the spool)") and its restore_command does not run walship restore-wal (hint: check --pgdata and --spool; --force promotes anyway)"
                    )
                }
            } else {
                evidence.check("replicates from walship", true, "primary_conninfo or restore_command leads to this spool")
            }
            if let fence = try FenceRecord.load(systemDirectory: chosen.systemDirectory) {
                evidence.check(
                    "not fenced before", false,
                    "the system was already fenced by a promotion at \(formatISO8601(fence.promotedAt))")
                guard force else {
                    throw PromoteError(
                        "this system's DR replica was already promoted at \(formatISO8601(fence.promotedAt)) (\(FenceRecord.path(chosen.systemDirectory))); promoting a second replica would fork the DR site (hint: --force if this is intended)"
                    )
                }
            }
            if let problem = Self.cannotWrite(directory: chosen.systemDirectory) {
                evidence.check("fence writable", false, problem)
                guard force else {
                    throw PromoteError(
                        "cannot write the fence into \(chosen.systemDirectory): \(problem) (hint: run walship promote as the spool's owner or root; --force promotes without fencing)"
                    )
                }
            }
        } else {
            evidence.check("spool given", false, "without --spool the RPO cannot be measured and the receiver cannot be fenced")
            say("warning: no --spool: waiting only for what the standby has received; no RPO figures, no fence")
        }
        if reportBase == nil {
            reportBase = defaultReportBase(kind: "promote", directory: FileManager.default.currentDirectoryPath)
        }

        // 1. Replay everything the receiver holds.
        let target: () async throws -> LSN = {
            if let reader { return try reader.end().lsn }
            return .invalid
        }
        say("== waiting for the standby to replay all WAL the receiver holds (\(elapsed(clockStart)))")
        // First up to the end as it is now: if the old primary still ships, chasing a moving end could
        // take forever. The fence below stops it; then the rest.
        let firstGoal = try await target()
        var (state, goal) = try await steps.waitForReplay(target: { firstGoal }, deadline: deadline)
        if reader == nil {
            // No spool: settle for what the standby itself received.
            (state, goal) = try await steps.waitForReplay(target: { try await awaitReceived(session) }, deadline: deadline)
        }
        let reached = state.replayed >= goal
        evidence.check(
            "replayed all received WAL", reached,
            reached
                ? "replayed \(state.replayed) ≥ spool end \(goal)"
                : "replayed only \(state.replayed) of \(goal) within \(timeout) s")
        if !reached {
            guard force else {
                throw PromoteError(
                    "the standby replayed up to \(state.replayed) but the spool holds WAL up to \(goal); it cannot reach the received WAL within \(timeout) s. Not promoted. (hint: is walship receive running with --standby-listen, and the standby connected to it? see its log; --force promotes anyway, losing the difference)"
                )
            }
            say("warning: promoting with \(formatBytes(goal.bytesAfter(state.replayed))) of received WAL not replayed (--force)")
        }

        // 2. Fence first: from now on the receiver refuses the old primary, so the spool stops growing.
        if let reader {
            do {
                try FenceRecord(
                    promotedAt: Date(), promotedTimeline: nil, replayedLSN: state.replayed.description,
                    by: "walship promote --pgdata \(evidence.dataDirectory)"
                ).save(systemDirectory: reader.systemDirectory)
                evidence.check("fence written", true, FenceRecord.path(reader.systemDirectory))
            } catch {
                evidence.check("fence written", false, "\(error)")
                say("warning: could not fence the system: \(error)")
            }
            // Anything that landed between the wait and the fence is replayed too.
            (state, goal) = try await steps.waitForReplay(target: target, deadline: min(deadline, .now + .seconds(10)))
        }
        evidence.lastReplayedLSN = state.replayed.description
        evidence.lastReplayedCommitTime = state.lastCommit
        evidence.spoolEndLSN = reader == nil ? nil : goal.description
        if let reader { recordPrimaryProgress(into: &evidence, systemDirectory: reader.systemDirectory) }

        // 3. Promote and wait for the first accepted write.
        say("== promoting (\(elapsed(clockStart)))")
        let (timeline, firstWriteAt) = try await steps.promote(deadline: deadline + .seconds(30), evidence: &evidence)
        let rto = roundedSeconds(ContinuousClock.now - clockStart)
        evidence.promotedTimeline = timeline
        evidence.firstWriteAt = firstWriteAt
        evidence.rtoSeconds = rto
        evidence.check("promoted", true, "pg_promote returned true; timeline \(timeline.map(String.init) ?? "?")")
        evidence.check("accepts writes", true, "a transaction ID was assigned and committed at \(formatISO8601(firstWriteAt))")
        if let reader, var fence = try? FenceRecord.load(systemDirectory: reader.systemDirectory) {
            fence.promotedTimeline = timeline
            try? fence.save(systemDirectory: reader.systemDirectory)
        }
        evidence.measureRecoveryPoint()
        evidence.outcome = "promoted"
    }

    /// Ends the command: writes the report, prints the summary, sends the notice, sets the exit status.
    private func finish(_ evidence: inout PromotionReport, base: String?, failure: String?, notifier: AlertNotifier) async throws
    {
        evidence.finishedAt = Date()
        if let failure {
            evidence.outcome =
                evidence.outcome == "promoted" ? "promoted" : (evidence.checks.contains { !$0.passed } ? "refused" : "failed")
            evidence.check("completed", false, failure)
        }
        try await conclude(
            evidence, command: "promote",
            base: base ?? defaultReportBase(kind: "promote", directory: FileManager.default.currentDirectoryPath),
            success: evidence.outcome == "promoted", failure: failure,
            headline: Self.headline(evidence, failure: failure), notifier: notifier)
    }

    static func headline(_ r: PromotionReport, failure: String?) -> String {
        if let failure { return "promotion of \(r.dataDirectory) \(r.outcome): \(failure)" }
        return
            "promoted \(r.dataDirectory) to timeline \(r.promotedTimeline.map(String.init) ?? "?"): RPO \(r.rpo.map { "\(formatBytes($0.bytes)) / \($0.seconds) s" } ?? "not measured"), RTO \(r.rtoSeconds.map { "\($0) s" } ?? "?")"
    }

    static func summary(_ r: PromotionReport) -> String {
        var lines = ["", "== \(r.kind == "drill" ? "drill" : "promotion") \(r.outcome)"]
        if let tli = r.promotedTimeline { lines.append("promoted timeline:        \(tli)") }
        if let lsn = r.lastReplayedLSN {
            lines.append(
                "last replayed:            \(lsn), last commit \(r.lastReplayedCommitTime.map(formatISO8601) ?? "none replayed")")
        }
        if let rpo = r.rpo {
            lines.append(
                "RPO (acknowledged lost):  \(formatBytes(rpo.bytes)), \(rpo.seconds) s\(rpo.bytes == 0 ? "  (every acknowledged commit is present)" : "")"
            )
        } else if r.outcome == "promoted" {
            lines.append("RPO:                      not measured (no spool information)")
        }
        if let tail = r.unacknowledgedTail {
            lines.append(
                "unacknowledged tail:      \(formatBytes(tail.bytes)), \(tail.seconds) s  (written by the old primary, never confirmed)"
            )
        }
        if let rto = r.rtoSeconds { lines.append("RTO (to first write):     \(rto) s") }
        for check in r.checks where !check.passed { lines.append("check failed: \(check.name): \(check.detail)") }
        return lines.joined(separator: "\n")
    }

    /// Whether a primary_conninfo names the receiver's standby endpoint (host and port).
    static func pointsAt(primaryConninfo: String, standbyListen: String?) -> Bool {
        guard let standbyListen, let endpoint = parseHostPort(standbyListen),
            let conninfo = try? Conninfo(primaryConninfo)
        else { return false }
        return conninfo.reaches(host: endpoint.host, port: endpoint.port, localNames: [ProcessInfo.processInfo.hostName])
    }

    static func cannotWrite(directory: String) -> String? {
        let probe = directory + "/.walship-promote-probe"
        guard FileManager.default.createFile(atPath: probe, contents: Data()) else {
            return "no write permission in \(directory)"
        }
        unlink(probe)
        return nil
    }
}

/// What the standby's WAL receiver has received (its own view, when no spool is given).
private func awaitReceived(_ session: SQLSession) async throws -> LSN {
    LSN(try await session.query("SELECT pg_last_wal_receive_lsn()::text")[0][0] ?? "") ?? .invalid
}

/// Seconds since `start`, for progress headings.
func elapsed(_ start: ContinuousClock.Instant) -> String {
    String(format: "%.1f s", roundedSeconds(ContinuousClock.now - start))
}

import ChildProcess
import Foundation
import PGReplication
import Spool
import StatusModel
import WALCore

/// What `walship switchover` was asked to do at this site. Which half it performs follows from the local server:
/// a primary is demoted, a standby promoted (`SwitchoverRole`).
public struct SwitchoverRequest: Sendable {
    /// This site's server.
    public var dataDirectory: String
    /// This site's walship receive spool: the standby's WAL when promoting, the demoted primary's restore_command.
    public var spool: String
    /// primary_conninfo of this site's server once demoted: this site's walship receive --standby-listen.
    public var primaryConninfo: String?
    /// host:port of this site's walship send --status-listen: whether the peer holds the last WAL (demote), and
    /// when the sender streams again (promote).
    public var senderStatus: String?
    /// This site's sender's application_name: its row in pg_stat_replication, and synchronous_standby_names.
    public var applicationName: String
    /// This site's sender's slot: created on the standby before its promotion, dropped once its primary is demoted.
    public var slot: String
    /// The demoted primary's shutdown checkpoint, as the demoting site printed it: the spool must end with it.
    public var shutdownCheckpoint: LSN?
    public var allowAsync: Bool
    /// The most WAL the peer may lack before the primary is stopped.
    public var maxLag: UInt64
    public var timeout: Int
    public var report: String?
    public var dryRun: Bool
    public var bindir: String
    public var walshipPath: String?
    /// How the next command should name the configuration, for the printed next step ("--config FILE").
    public var nextCommandArguments: String
    /// The half the peer asked for (`walship switchover --peer-control`): refused when this site's server would
    /// take the other one.
    public var expectedRole: SwitchoverRole?

    public init(
        dataDirectory: String, spool: String, primaryConninfo: String?, senderStatus: String?, applicationName: String,
        slot: String, shutdownCheckpoint: LSN?, allowAsync: Bool, maxLag: UInt64, timeout: Int, report: String?,
        dryRun: Bool, bindir: String, walshipPath: String?, nextCommandArguments: String,
        expectedRole: SwitchoverRole? = nil
    ) {
        self.dataDirectory = dataDirectory
        self.spool = spool
        self.primaryConninfo = primaryConninfo
        self.senderStatus = senderStatus
        self.applicationName = applicationName
        self.slot = slot
        self.shutdownCheckpoint = shutdownCheckpoint
        self.allowAsync = allowAsync
        self.maxLag = maxLag
        self.timeout = timeout
        self.report = report
        self.dryRun = dryRun
        self.bindir = bindir
        self.walshipPath = walshipPath
        self.nextCommandArguments = nextCommandArguments
        self.expectedRole = expectedRole
    }
}

/// The evidence one site's half of a switchover leaves (JSON and Markdown).
public struct SwitchoverReport: Codable, Sendable, Equatable {
    public var kind = "switchover"
    public var role: SwitchoverRole?
    /// "demoted", "promoted", "would switch over" (dry run), "refused" (a check failed, nothing changed) or
    /// "failed" (`failure` says where, and what was put back).
    public var outcome = "failed"
    public var failure: String?
    public var host: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var dataDirectory: String
    public var systemIdentifier: String?
    public var checks: [Check] = []
    public var steps: [OperationStep] = []
    /// Where the demoted primary's shutdown checkpoint starts: its last record, which the promoted standby replayed.
    public var shutdownCheckpointLSN: String?
    /// Demote: the timeline the primary stopped on. Promote: the new primary's timeline.
    public var timeline: UInt32?
    /// When the primary stopped taking writes: the start of its stop (demote), or the last time this site heard
    /// from it before its shutdown (promote, the receiver's clock).
    public var writesRefusedFrom: Date?
    /// Promote: the first write the new primary accepted, and the write outage from `writesRefusedFrom` to it.
    public var firstWriteAt: Date?
    public var writeOutageSeconds: Double?
    /// No step copies a data directory or takes a base backup: the demoted primary follows from its own end.
    public var bytesCopied: UInt64 = 0
    /// How the new primary treats the link to the peer at the end: "sync", "async", or why it is not known.
    public var modeAtEnd: String?
    public var promotion: PromotionReport?
    public var nextSteps: [String] = []

    public struct Check: Codable, Sendable, Equatable {
        /// "ok", "WARN" or "FAIL".
        public var level: String
        public var name: String
        public var detail: String
    }

    public init(host: String, startedAt: Date, dataDirectory: String) {
        self.host = host
        self.startedAt = startedAt
        self.dataDirectory = dataDirectory
    }

    public var markdown: String {
        var out = ["# walship switchover (\(role?.rawValue ?? "?")): \(outcome)", ""]
        if let failure { out += ["**\(outcome == "refused" ? "Refused" : "Failed"):** \(failure)", ""] }
        func row(_ name: String, _ value: String?) { out.append("| \(name) | \(value ?? "-") |") }
        out += ["| | |", "|---|---|"]
        row("Host", host)
        row("Data directory", dataDirectory)
        row("System", systemIdentifier)
        row("Timeline", timeline.map(String.init))
        row("Shutdown checkpoint of the old primary", shutdownCheckpointLSN)
        row("Writes refused from", writesRefusedFrom.map(formatISO8601))
        row("First write accepted", firstWriteAt.map(formatISO8601))
        row("Write outage", writeOutageSeconds.map { String(format: "%.3f s", $0) })
        row("Bytes copied", formatBytes(bytesCopied))
        row("Mode at the end", modeAtEnd)
        row("Started", formatISO8601(startedAt))
        row("Finished", finishedAt.map(formatISO8601))
        if !checks.isEmpty {
            out += ["", "| Check | | Detail |", "|---|---|---|"]
            for check in checks { out.append("| \(check.name) | \(check.level) | \(check.detail) |") }
        }
        out += OperationStep.markdown(steps: steps, nextSteps: nextSteps)
        if let promotion {
            out += ["", "## The promotion", ""] + promotion.markdown.split(separator: "\n").dropFirst().map(String.init)
        }
        return out.joined(separator: "\n") + "\n"
    }

    public func write(base: String) throws -> (json: String, markdown: String) {
        try writeReport(self, markdown: markdown, base: base)
    }
}

struct SwitchoverError: Error, CustomStringConvertible {
    let description: String
    /// A check failed before anything changed.
    let refused: Bool
    init(_ description: String, refused: Bool = false) {
        self.description = description
        self.refused = refused
    }
}

/// Performs this site's half of a planned switchover: see `SwitchoverRole` and docs/switchover.md.
public func switchover(
    _ request: SwitchoverRequest, progress: @escaping (String) -> Void
) async -> (report: SwitchoverReport, reportBase: String) {
    let dataDirectory = absolutePath(request.dataDirectory)
    var run = SwitchoverRun(
        request: request, dataDirectory: dataDirectory, progress: progress,
        report: SwitchoverReport(host: ProcessInfo.processInfo.hostName, startedAt: Date(), dataDirectory: dataDirectory))
    do {
        try await run.perform()
    } catch let error as SwitchoverError {
        run.report.outcome = error.refused ? "refused" : "failed"
        run.report.failure = error.description
    } catch {
        run.report.failure = "\(error)"
    }
    run.report.finishedAt = Date()
    let base =
        request.report.map(absolutePath)
        ?? defaultReportBase(
            kind: "switchover", directory: URL(fileURLWithPath: dataDirectory).deletingLastPathComponent().path,
            at: run.report.startedAt)
    return (run.report, base)
}

/// Which half of a switchover this site's running server would take, and its system identifier: what a peer
/// checks before it asks for that half.
public func switchoverRole(dataDirectory: String) async throws -> (role: SwitchoverRole, system: UInt64) {
    let dataDirectory = absolutePath(dataDirectory)
    let cluster = try LocalCluster(dataDirectory: dataDirectory)
    guard FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") else {
        throw SwitchoverError("the server of \(dataDirectory) is not running", refused: true)
    }
    let session = SQLSession(conninfo: try Conninfo(try cluster.socketConninfo()), applicationName: "walship_switchover")
    defer { Task { await session.close() } }
    try await cluster.connect(session)
    let identity = try await session.query(
        "SELECT pg_is_in_recovery()::text, system_identifier::text FROM pg_control_system()")[0]
    guard let system = identity[1].flatMap({ UInt64($0) }) else {
        throw SwitchoverError("cannot read the system identifier of \(dataDirectory)")
    }
    return (SwitchoverPlan.role(inRecovery: identity[0] == "true"), system)
}

private struct SwitchoverRun {
    let request: SwitchoverRequest
    let dataDirectory: String
    let progress: (String) -> Void
    var report: SwitchoverReport
    var clock = StepClock()

    init(request: SwitchoverRequest, dataDirectory: String, progress: @escaping (String) -> Void, report: SwitchoverReport) {
        self.request = request
        self.dataDirectory = dataDirectory
        self.progress = progress
        self.report = report
    }

    var timeout: Duration { .seconds(request.timeout) }

    mutating func step(_ name: String, _ detail: String) {
        report.steps.append(clock.finish(name, detail))
        progress("\(name): \(detail)")
    }

    /// Records and prints the checks; refuses when one failed.
    mutating func apply(_ checks: [CheckResult]) throws {
        for check in checks {
            progress(check.line)
            let level =
                switch check.level {
                case .ok: "ok"
                case .warning: "WARN"
                case .failure: "FAIL"
                }
            report.checks.append(
                .init(level: level, name: check.name, detail: check.message + (check.hint.map { " (hint: \($0))" } ?? "")))
        }
        let failed = checks.filter { $0.level == .failure }
        if !failed.isEmpty {
            throw SwitchoverError(
                "\(failed.map(\.name).joined(separator: ", ")) failed; nothing was changed", refused: true)
        }
    }

    mutating func perform() async throws {
        let cluster: LocalCluster
        do { cluster = try LocalCluster(dataDirectory: dataDirectory) } catch {
            throw SwitchoverError("\(error)", refused: true)
        }
        guard FileManager.default.fileExists(atPath: dataDirectory + "/postmaster.pid") else {
            throw SwitchoverError(
                "the server of \(dataDirectory) is not running: a switchover starts with the primary running at one site and its standby at the other (hint: start it; after a switchover that stopped midway, see docs/switchover.md, \"Failure during a switchover\")",
                refused: true)
        }
        let session = SQLSession(conninfo: try Conninfo(try cluster.socketConninfo()), applicationName: "walship_switchover")
        defer { Task { await session.close() } }
        try await cluster.connect(session)
        let identity = try await session.query(
            "SELECT pg_is_in_recovery()::text, system_identifier::text FROM pg_control_system()")[0]
        guard let system = identity[1].flatMap({ UInt64($0) }) else {
            throw SwitchoverError("cannot read the system identifier of \(dataDirectory)")
        }
        report.systemIdentifier = String(system)
        let role = SwitchoverPlan.role(inRecovery: identity[0] == "true")
        report.role = role
        if let expected = request.expectedRole, expected != role {
            throw SwitchoverError(
                "the peer asked this site to \(expected.rawValue), but its server is \(role == .demote ? "a primary" : "a standby"): both sites run the same role, nothing was changed (hint: check both servers with SELECT pg_is_in_recovery())",
                refused: true)
        }
        progress(
            role == .demote
                ? "this site runs the primary: stopping it cleanly and making it a standby of the peer (the peer's walship switchover then promotes its standby)"
                : "this site runs the standby: promoting it once the spool proves the primary stopped with nothing missing")
        switch role {
        case .demote: try await demote(cluster, session: session, system: system)
        case .promote: try await promote(cluster, session: session, system: system)
        }
    }

    // MARK: the primary's site

    private mutating func demote(_ cluster: LocalCluster, session: SQLSession, system: UInt64) async throws {
        let rows = try await session.query(
            """
            SELECT sync_state, flush_lsn::text, replay_lsn::text FROM pg_stat_replication
            WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1
            """, [request.applicationName])
        let flushed = LSN(try await session.query("SELECT pg_current_wal_flush_lsn()::text")[0][0] ?? "") ?? .invalid
        let sender = rows.first.map {
            SwitchoverPlan.SenderRow(
                syncState: $0[0] ?? "?", durable: $0[1].flatMap { LSN($0) }, replayed: $0[2].flatMap { LSN($0) })
        }
        var checks = SwitchoverPlan.demoteChecks(
            sender: sender, flushed: flushed, applicationName: request.applicationName, allowAsync: request.allowAsync,
            maxLag: request.maxLag)
        checks.append(
            request.primaryConninfo == nil
                ? .fail(
                    "follow", "no --primary-conninfo: the stopped primary would not know where to follow the new one",
                    hint:
                        "--primary-conninfo names this site's walship receive --standby-listen, e.g. 'host=127.0.0.1 port=7010 user=replicator'"
                )
                : .ok("follow", "once stopped, this server follows \(request.primaryConninfo!)"))
        checks.append(
            FileManager.default.fileExists(atPath: request.spool)
                ? .ok("spool", "this site's spool \(request.spool) serves the demoted server's restore_command")
                : .fail("spool", "\(request.spool) does not exist", hint: "--spool is this site's walship receive --spool"))
        try apply(checks)
        if request.dryRun {
            report.outcome = "would switch over"
            progress("dry run: would stop this primary and make it a standby (nothing was changed)")
            return
        }
        step("checks", "sender \(request.applicationName) \(sender?.syncState ?? "?"), primary at \(flushed)")

        // 1. Stop cleanly: the shutdown checkpoint is the primary's last record, and its walsenders send it first.
        let owner = DrillPlan.pgCtlUser(osUser: cluster.ownerName, runningAsRoot: getuid() == 0)
        report.writesRefusedFrom = Date()
        let stopped = try await ChildProcess(
            request.bindir + "/pg_ctl", ["-D", dataDirectory, "stop", "-m", "fast", "-w", "-t", String(request.timeout)],
            user: owner, output: .captured
        ).run()
        guard stopped.succeeded else {
            let restart = await startServer(owner: owner, log: "switchover-restart.log")
            throw SwitchoverError(
                "pg_ctl stop failed (exit \(stopped.status)): \(stopped.errorTail(lines: 4)); \(restart) (hint: see the server log)"
            )
        }
        let control = try await ChildProcess(request.bindir + "/pg_controldata", [dataDirectory], output: .captured)
            .runChecked(what: "read the control file of \(dataDirectory)", hint: "is pg_controldata from PostgreSQL 15?")
        let fields = RejoinPlan.controlData(control.standardOutput)
        guard fields["Database cluster state"] == "shut down",
            let checkpoint = fields["Latest checkpoint location"].flatMap({ LSN($0) })
        else {
            let restart = await startServer(owner: owner, log: "switchover-restart.log")
            throw SwitchoverError(
                "the primary did not shut down cleanly (state \(fields["Database cluster state"] ?? "?")); \(restart)")
        }
        report.shutdownCheckpointLSN = checkpoint.description
        report.timeline = fields["Latest checkpoint's TimeLineID"].flatMap { UInt32($0) }
        step("stop", "the primary stopped cleanly; its shutdown checkpoint is at \(checkpoint)")

        // 2. The peer holds it: the sender's acknowledged position passed the checkpoint record.
        if let status = request.senderStatus {
            let deadline = ContinuousClock.now + timeout
            var durable = LSN.invalid
            while ContinuousClock.now < deadline {
                durable = await senderDurable(status) ?? durable
                if durable > checkpoint { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            guard durable > checkpoint else {
                let restart = await startServer(owner: owner, log: "switchover-restart.log")
                throw SwitchoverError(
                    "the peer site did not confirm the shutdown checkpoint \(checkpoint) within \(request.timeout) s (its durable position: \(durable)); \(restart). Nothing was promoted (hint: check the link and the peer's walship receive, then run walship switchover again)"
                )
            }
            step("durable at the peer", "the peer's spool is durable up to \(durable), past the shutdown checkpoint")
        } else {
            step(
                "durable at the peer",
                "not confirmed here (no --sender-status): the peer's walship switchover proves it from its spool before promoting"
            )
        }

        // 3. A standby of this site's receiver from now on: the new primary's timeline forks after its last record.
        let restoreCommand = restoreWALCommand(
            walship: walshipExecutable(request.walshipPath), spool: absolutePath(request.spool), system: system)
        try appendSettings(
            SwitchoverPlan.standbySettings(
                primaryConninfo: request.primaryConninfo ?? "", restoreCommand: restoreCommand, by: "walship switchover"),
            to: dataDirectory)
        let signal = dataDirectory + "/standby.signal"
        guard FileManager.default.createFile(atPath: signal, contents: nil) else {
            throw SwitchoverError(
                "could not create \(signal): the server stays stopped, and must not start without it (it would be a second primary once the peer is promoted) (hint: create it by hand, then pg_ctl start)"
            )
        }
        if getuid() == 0, cluster.owner != 0 { _ = chown(signal, cluster.owner, cluster.group) }
        let log = dataDirectory + "/switchover-start.log"
        let started = try await pgCtlStart(owner: owner, log: log)
        guard started.succeeded else {
            throw SwitchoverError(
                "could not start the demoted server as a standby (pg_ctl exit \(started.status)): \(logTail(log)) (hint: see \(log); fix what it says and start it with pg_ctl: standby.signal is in place, so it starts as a standby)"
            )
        }
        step("standby", "started as a standby of \(request.primaryConninfo ?? "?"), restore_command from \(request.spool)")

        // 4. Its outgoing slot would hold WAL back forever on a standby; the sender recreates it after a promotion.
        let standby = SQLSession(conninfo: try Conninfo(try cluster.socketConninfo()), applicationName: "walship_switchover")
        defer { Task { await standby.close() } }
        do {
            try await cluster.connect(standby)
            let dropped = try await standby.query(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1 AND NOT active AND pg_drop_replication_slot(slot_name) IS NULL",
                [request.slot])
            step("slot", dropped.isEmpty ? "no inactive slot \(request.slot) to drop" : "dropped the slot \(request.slot)")
        } catch {
            step("slot", "could not drop the slot \(request.slot): \(error) (drop it by hand: it holds WAL back on a standby)")
        }
        report.outcome = "demoted"
        let checkpointArgument = " --shutdown-checkpoint \(checkpoint)"
        report.nextSteps = [
            "at the peer site: walship switchover \(request.nextCommandArguments)\(checkpointArgument) (promotes the standby there; this server follows it)",
            "to undo before the peer is promoted: pg_ctl -D \(dataDirectory) stop, remove standby.signal, pg_ctl start (no WAL was written after the shutdown checkpoint)",
        ]
    }

    /// pg_ctl start of this site's server as its owner, waiting up to --timeout, its output in `log`.
    private func pgCtlStart(owner: String?, log: String) async throws -> ChildProcess.Result {
        try await ChildProcess(
            request.bindir + "/pg_ctl", ["-D", dataDirectory, "-l", log, "-w", "-t", String(request.timeout), "start"],
            user: owner, output: .discarded
        ).run()
    }

    /// Starts the server again as it was (after a failed stop or an unconfirmed checkpoint); says how it went.
    private func startServer(owner: String?, log: String) async -> String {
        let started = try? await pgCtlStart(owner: owner, log: dataDirectory + "/" + log)
        return started?.succeeded == true
            ? "the primary was started again"
            : "the primary could not be started again: start it by hand (pg_ctl -D \(dataDirectory) start; see \(dataDirectory)/\(log))"
    }

    /// What a server log says went wrong, on one line for an error message: its FATAL and PANIC lines, else its
    /// last lines.
    private func logTail(_ path: String, lines: Int = 4) -> String {
        let all = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n")
        let fatal = all.filter { $0.contains("FATAL:") || $0.contains("PANIC:") }
        return (fatal.isEmpty ? all : fatal).suffix(lines).joined(separator: " / ")
    }

    /// The durable position the local sender reports, or nil when its status cannot be read.
    private func senderDurable(_ status: String) async -> LSN? {
        guard let document = await statusDocument(listen: status, timeout: 2) else { return nil }
        return document.systems.first?.chain.first { $0.name == "durable" }?.lsn.flatMap { LSN($0) }
    }

    // MARK: the standby's site

    private mutating func promote(_ cluster: LocalCluster, session: SQLSession, system: UInt64) async throws {
        let paused = try await session.query("SELECT pg_is_wal_replay_paused()::text")[0][0] == "true"
        var tail: SpoolTail?
        var spoolProblem: CheckResult?
        var systemDirectory: String?
        do {
            let reader = try SpoolReader(root: absolutePath(request.spool), system: system)
            systemDirectory = reader.systemDirectory
            tail = try reader.tail()
        } catch {
            spoolProblem = .fail("spool", "\(error)", hint: "--spool is this site's walship receive --spool")
        }
        var checks = SwitchoverPlan.promoteChecks(replayPaused: paused, tail: tail, expected: request.shutdownCheckpoint)
        if let spoolProblem { checks.insert(spoolProblem, at: 0) }
        try apply(checks)
        guard let tail, let checkpoint = tail.lastRecord, let systemDirectory else { return }
        report.shutdownCheckpointLSN = checkpoint.start.description
        let readiness = ReadinessQuery.ask(systemDirectory: systemDirectory, systemIdentifier: system)
        report.writesRefusedFrom = readiness.primaryLastHeardAt
        let wasSynchronous = (try? PrimaryProgressRecord.load(systemDirectory: systemDirectory))?.synchronous == true
        if request.dryRun {
            report.outcome = "would switch over"
            progress("dry run: would promote this standby (nothing was changed)")
            return
        }
        step("checks", "the spool ends with the primary's shutdown checkpoint at \(checkpoint.start)")

        // 1. The slot this site's sender will stream from once the standby is promoted, reserved before the
        // promotion so that the WAL the peer's spool lacks (from its end on) stays.
        let created = try await session.query(
            """
            SELECT pg_create_physical_replication_slot($1, true) IS NOT NULL
            WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)
            """, [request.slot])
        step(
            "slot",
            created.isEmpty ? "the slot \(request.slot) exists" : "created the slot \(request.slot) for this site's sender")

        // 2. The promotion, as walship promote does it, with the clean shutdown as the proof the primary is gone.
        var promoteRequest = PromoteRequest(
            dataDirectory: dataDirectory, standby: nil, spool: request.spool, system: system, timeout: request.timeout,
            report: nil, force: false)
        promoteRequest.kind = "switchover"
        promoteRequest.primaryStoppedProof =
            "the primary stopped cleanly: the spool ends at \(tail.end) with its shutdown checkpoint (\(checkpoint.start))"
        let outcome = await Operations.promote(promoteRequest, progress: progress)
        var promotion = outcome.report
        if outcome.failure == nil, let replayed = promotion.lastReplayedLSN.flatMap({ LSN($0) }), replayed >= tail.end {
            promotion.everyAcknowledgedCommitPresent = true
            promotion.loss =
                "none: the old primary stopped cleanly, its last record (the shutdown checkpoint at \(checkpoint.start)) was replayed here before the promotion, and a stopped server commits nothing"
        }
        report.promotion = promotion
        guard outcome.failure == nil, promotion.outcome == "promoted" else {
            throw SwitchoverError(
                "the promotion failed: \(outcome.failure ?? promotion.outcome) (the old primary at the peer site is a standby now; to undo there: pg_ctl stop, remove standby.signal, pg_ctl start)"
            )
        }
        report.timeline = promotion.promotedTimeline
        report.firstWriteAt = promotion.firstWriteAt
        if let from = report.writesRefusedFrom, let to = promotion.firstWriteAt {
            report.writeOutageSeconds = (to.timeIntervalSince(from) * 1000).rounded() / 1000
        }
        step(
            "promote",
            "promoted on timeline \(promotion.promotedTimeline.map(String.init) ?? "?"); first write accepted at \(promotion.firstWriteAt.map(formatISO8601) ?? "?")"
        )

        // 3. Synchronous mode the other way, once this site's sender streams: no commit waits for a sender that
        // is not there yet.
        report.modeAtEnd = "async"
        let primary = SQLSession(conninfo: try Conninfo(try cluster.socketConninfo()), applicationName: "walship_switchover")
        defer { Task { await primary.close() } }
        try await cluster.connect(primary)
        let deadline = ContinuousClock.now + timeout
        var streaming = false
        while ContinuousClock.now < deadline {
            let rows = try await primary.query(
                "SELECT state FROM pg_stat_replication WHERE application_name = $1", [request.applicationName])
            if rows.contains(where: { $0.first == "streaming" }) {
                streaming = true
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        }
        guard streaming else {
            report.modeAtEnd = "unprotected: this site's sender does not stream"
            step(
                "sender",
                "no walship send with application_name \(request.applicationName) streams from the new primary within \(request.timeout) s: nothing protects it yet (is walship send running here with --standby-wait?)"
            )
            report.outcome = "promoted"
            report.nextSteps = nextStepsAfterPromotion()
            return
        }
        step("sender", "this site's sender \(request.applicationName) streams to the peer site")
        if wasSynchronous {
            let names = SwitchoverPlan.synchronousStandbyNames(request.applicationName)
            _ = try await primary.query("ALTER SYSTEM SET synchronous_standby_names = '\(escape(names))'")
            _ = try await primary.query("SELECT pg_reload_conf()")
            var state = "?"
            while ContinuousClock.now < deadline + .seconds(10) {
                state =
                    try await primary.query(
                        "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", [request.applicationName]
                    ).first?[0] ?? "?"
                if state == "sync" { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            report.modeAtEnd = state == "sync" ? "sync" : "async (sync_state \(state))"
            step("synchronous", "synchronous_standby_names = '\(names)': sync_state \(state)")
        } else {
            step("synchronous", "the old primary did not wait for this site: left asynchronous, as it was")
        }
        report.outcome = "promoted"
        report.nextSteps = nextStepsAfterPromotion()
    }

    private func nextStepsAfterPromotion() -> [String] {
        [
            "the old primary follows this server through its own site's walship receive: check with walship status there",
            "to switch back: walship switchover \(request.nextCommandArguments) here (demotes this primary), then at the peer site as it prints",
        ]
    }
}

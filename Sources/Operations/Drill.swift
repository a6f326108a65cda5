import ChildProcess
import Foundation
import PGReplication
import Spool
import StatusModel
import WALCore

/// What `walship drill` was asked to do.
public struct DrillRequest: Sendable {
    /// The spool; nil when the copy comes from the archive alone (`restore` and `walEnd` then say how).
    public var spool: String?
    public var system: UInt64?
    public var backup: String?
    public var checkSQL: String?
    /// Base path of the report; `walship-drill-<time>` in the current directory when nil.
    public var report: String?
    public var keep: Bool
    /// Where the throwaway copy goes; a new directory under /tmp when nil.
    public var workDirectory: String?
    public var timeout: Int
    public var osUser: String
    public var pgBindir: String?
    public var walshipPath: String?
    /// Restores the copy instead of the spool's backup (the archive's: `walship drill --archive`): the data
    /// directory, the recovery settings and the signal file to write.
    public var restore:
        (@Sendable (_ dataDirectory: String, _ settings: [String], _ signal: String) async throws -> RestoredDirectory)?
    /// Where the WAL the copy can replay ends, without a spool (the archive's newest segment): what the drill waits
    /// for. Given the system and the cluster's segment size.
    public var walEnd: (@Sendable (UInt64, WALSegmentSize) async throws -> LSN)?
    /// What the copy's WAL comes from, for the report: "the spool" by default.
    public var walSource = "the spool"

    public init(
        spool: String?, system: UInt64?, backup: String?, checkSQL: String?, report: String?, keep: Bool,
        workDirectory: String?, timeout: Int, osUser: String, pgBindir: String?, walshipPath: String?
    ) {
        self.spool = spool
        self.system = system
        self.backup = backup
        self.checkSQL = checkSQL
        self.report = report
        self.keep = keep
        self.workDirectory = workDirectory
        self.timeout = timeout
        self.osUser = osUser
        self.pgBindir = pgBindir
        self.walshipPath = walshipPath
    }
}

/// The decisions of a drill that depend on nothing but its inputs: where the copy goes, how it is
/// configured, how its server is run, and what is left behind.
public struct DrillPlan: Sendable, Equatable {
    /// The work directory: the copy's socket directory, holding its data directory.
    public var base: String
    public var dataDirectory: String { base + "/pgdata" }

    public init(base: String) { self.base = base }

    /// Recovery through restore_command only, on `port` of loopback: nothing the copy does can write to the
    /// spool, reach the primary, or wait for a synchronous standby.
    public func recoverySettings(port: Int) -> [String] {
        [
            "primary_conninfo = ''", "primary_slot_name = ''", "archive_mode = off", "archive_command = ''",
            "synchronous_standby_names = ''", "port = \(port)", "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = '\(escape(base))'", "cluster_name = 'walship_drill'", "hot_standby = on",
            // Poll the spool often: the drill follows the live stream's in-progress segment.
            "wal_retrieve_retry_interval = '200ms'", "logging_collector = off",
        ]
    }

    /// What happens to the copy at the end: a kept copy keeps running (and its directory), unless it never started.
    public struct Cleanup: Sendable, Equatable {
        public var stopServer: Bool
        public var removeWorkDirectory: Bool
    }

    public static func cleanup(keep: Bool, serverStarted: Bool) -> Cleanup {
        Cleanup(stopServer: serverStarted && !keep, removeWorkDirectory: !keep || !serverStarted)
    }

    /// Who runs pg_ctl: root switches to the PostgreSQL OS user; anyone else runs it as itself (nil).
    public static func pgCtlUser(osUser: String, runningAsRoot: Bool) -> String? {
        runningAsRoot && osUser != "root" ? osUser : nil
    }

    /// Where the copy's server log is kept: beside the report.
    public static func serverLogPath(reportBase: String) -> String { reportBase + ".server.log" }

    /// The PostgreSQL programs' directory when `--pg-bindir` is not given: what `pg_config --bindir` printed
    /// (`pgConfig`; nil when it is not installed or failed, and `walship rejoin` does not ask it), else
    /// PG_BINDIR, else PostgreSQL 15's Debian directory.
    public static func postgresBindir(pgConfig: String? = nil, environment: [String: String]) -> String {
        if let printed = pgConfig?.trimmingCharacters(in: .whitespacesAndNewlines), printed.hasPrefix("/"),
            !printed.contains("\n")
        {
            return printed
        }
        if let dir = environment["PG_BINDIR"], !dir.isEmpty { return dir }
        return "/usr/lib/postgresql/15/bin"
    }

    /// Where the default PostgreSQL programs' directory comes from, for the hint when pg_ctl cannot be run.
    public static let postgresBindirDefault = "pg_config --bindir, else PG_BINDIR, else /usr/lib/postgresql/15/bin"

    /// Why the drill failed: its error, else a failed sanity check; nil when it passed.
    public static func failure(error: String?, checks: [PromotionReport.Check]) -> String? {
        error ?? (checks.contains { !$0.passed } ? "a sanity check failed" : nil)
    }
}

/// How a drill ended: the report to write and where, and why it failed (nil when it passed).
public struct DrillOutcome: Sendable {
    public var report: PromotionReport
    public var reportBase: String
    public var failure: String?

    public var headline: String { report.headline(failure: failure) }
}

/// Rehearses a disaster on a throwaway copy: restore, recover to the end of the spool, promote, check,
/// clean up. `progress` gets the lines to print as they happen.
public func drill(_ request: DrillRequest, progress: @escaping (String) -> Void) async -> DrillOutcome {
    let clockStart = ContinuousClock.now
    let spoolRoot = request.spool.map(absolutePath)
    let plan = DrillPlan(base: request.workDirectory.map(absolutePath) ?? makeTemporaryDirectory())
    var report = PromotionReport(
        kind: "drill", host: ProcessInfo.processInfo.hostName, startedAt: Date(), dataDirectory: plan.dataDirectory)
    let reportBase =
        request.report.map(absolutePath) ?? defaultReportBase(kind: "drill", directory: FileManager.default.currentDirectoryPath)
    // Set as soon as the copy's server may be running, so that a drill failing after that still stops it.
    var server: DrillServer?
    var error: String?
    do {
        try await rehearse(
            request, plan: plan, spoolRoot: spoolRoot, report: &report, server: &server, clockStart: clockStart,
            progress: progress)
    } catch let caught {
        error = "\(caught)"
    }
    let failure = DrillPlan.failure(error: error, checks: report.checks)
    // The protected standby kept replaying? Its position as the receiver last recorded it.
    if let spoolRoot, let reader = try? SpoolReader(root: spoolRoot, system: request.system), var details = report.drill {
        details.drStandbyReplayAfter = drStandbyReplay(reader.systemDirectory)
        report.drill = details
    }
    let cleanup = DrillPlan.cleanup(keep: request.keep, serverStarted: server != nil)
    if let server {
        if cleanup.stopServer {
            await server.stop()
            if server.isRunning {
                progress(
                    "warning: the drill copy's server (pid \(server.postmasterPID.map(String.init) ?? "?")) did not stop: stop it with pg_ctl -D \(plan.dataDirectory) stop -m immediate"
                )
            }
        } else {
            progress(
                "the promoted copy keeps running: psql -h \(plan.base) -p \(server.port) -U \(request.osUser) postgres   (stop: pg_ctl -D \(plan.dataDirectory) stop -m fast, then rm -rf \(plan.base))"
            )
        }
    }
    // The copy's server log is evidence, above all of a failed drill: it stays beside the report.
    if let server, FileManager.default.fileExists(atPath: server.log) {
        let kept = DrillPlan.serverLogPath(reportBase: reportBase)
        try? FileManager.default.removeItem(atPath: kept)
        if (try? FileManager.default.copyItem(atPath: server.log, toPath: kept)) != nil {
            report.drill?.serverLog = kept
            progress("the drill copy's server log: \(kept)")
        }
    }
    if cleanup.removeWorkDirectory {
        try? FileManager.default.removeItem(atPath: plan.base)
    } else if server != nil {
        progress("the drill copy is kept in \(plan.base)")
    }
    report.finishedAt = Date()
    report.outcome = failure == nil ? "promoted" : "failed"
    if let failure { report.check("completed", false, failure) }
    return DrillOutcome(report: report, reportBase: reportBase, failure: failure)
}

private func rehearse(
    _ request: DrillRequest, plan: DrillPlan, spoolRoot: String?, report: inout PromotionReport,
    server started: inout DrillServer?, clockStart: ContinuousClock.Instant, progress: @escaping (String) -> Void
) async throws {
    let reader = try spoolRoot.flatMap { try SpoolReader.openIfPresent(root: $0, system: request.system) }
    if let spoolRoot, reader == nil, request.restore == nil {
        throw RestoreError("the spool \(spoolRoot) holds no WAL\(request.system.map { " of system \($0)" } ?? "") yet")
    }
    report.systemIdentifier = reader.map { String($0.systemIdentifier) }
    let standbyBefore = reader.flatMap { drStandbyReplay($0.systemDirectory) }
    let port = try freeLoopbackPort()
    let base = plan.base
    let osUser = request.osUser
    let fm = FileManager.default
    try fm.createDirectory(atPath: base, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    if getuid() == 0 { try await giveToOSUser(base, osUser: osUser, what: base) }

    progress("== restoring a throwaway copy (\(elapsed(clockStart))) into \(base) (port \(port))")
    let restored: RestoredDirectory
    if let restore = request.restore {
        restored = try await restore(plan.dataDirectory, plan.recoverySettings(port: port), "standby.signal")
    } else if let spoolRoot, let reader {
        restored = try await restoreFromBackup(
            spool: spoolRoot, system: reader.systemIdentifier, backup: request.backup, pgdata: plan.dataDirectory,
            settings: plan.recoverySettings(port: port), signal: "standby.signal", osUser: osUser,
            walshipPath: request.walshipPath)
    } else {
        throw RestoreError("a drill needs a spool or an archive to restore from")
    }
    report.systemIdentifier = String(restored.systemIdentifier)
    report.check(
        "restored", true,
        "backup \(restored.backup.id) (start \(restored.backup.startLSN)) unpacked; restore_command reads \(request.walSource) read-only"
    )
    report.drill = .init(
        backupID: restored.backup.id, port: port, checkSQL: request.checkSQL, checkResult: nil, kept: request.keep,
        drStandbyReplayBefore: standbyBefore, drStandbyReplayAfter: nil)
    // The copy must answer its owner on its own socket whatever the primary's pg_hba.conf says.
    let hba = restored.dataDirectory + "/pg_hba.conf"
    let oldHBA = (try? String(contentsOfFile: hba, encoding: .utf8)) ?? ""
    try ("local all \(osUser) peer\n" + oldHBA).write(toFile: hba, atomically: true, encoding: .utf8)
    if getuid() == 0 { try await giveToOSUser(hba, osUser: osUser, what: "pg_hba.conf") }

    let bindir: String
    if let given = request.pgBindir {
        bindir = given
    } else {
        bindir = DrillPlan.postgresBindir(pgConfig: await pgConfigBindir(), environment: ProcessInfo.processInfo.environment)
    }
    let server = DrillServer(dataDirectory: restored.dataDirectory, port: port, osUser: osUser, bindir: bindir)
    // Before the start: pg_ctl may leave a postmaster behind even when it reports a failure.
    started = server
    try await server.start()
    let cluster = try LocalCluster(dataDirectory: restored.dataDirectory)
    let session = SQLSession(
        conninfo: try Conninfo("host='\(base)' port=\(port) dbname=postgres user='\(osUser)'"),
        applicationName: "walship_drill")
    defer { Task { await session.close() } }
    try await cluster.connect(session)
    report.check("connects", true, "the copy accepts connections on port \(port)")

    progress("== recovering to the end of \(request.walSource) (\(elapsed(clockStart)))")
    let steps = PromotionSteps(session: session, report: progress)
    let deadline = clockStart + .seconds(request.timeout)
    // The live stream keeps the spool growing: recover to its end as of now (the cut), then promote, and measure
    // the RPO against what was acknowledged at the cut, read before the end so that it cannot lie beyond it.
    let goalNow: LSN
    if let reader {
        recordPrimaryProgress(into: &report, systemDirectory: reader.systemDirectory)
        goalNow = try reader.end().lsn
    } else if let walEnd = request.walEnd {
        let shown: String = (try await session.query("SHOW wal_segment_size").first?[0] ?? nil) ?? ""
        guard let segmentSize = WALSegmentSize(showValue: shown) else {
            throw PromoteError("the copy reports wal_segment_size \"\(shown)\", which walship cannot read")
        }
        goalNow = try await walEnd(restored.systemIdentifier, segmentSize)
    } else {
        throw RestoreError("a drill needs a spool or an archive to recover from")
    }
    var (state, goal) = try await steps.waitForReplay(target: { goalNow }, deadline: deadline)
    if reader == nil, state.replayed >= goal {
        // The goal is the start of the archive's newest segment: replay settles once it has read the rest of it
        // (queries of the promotion would otherwise conflict with the replay still running).
        var settled = 0
        while settled < 3, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(500))
            let now = try await steps.replayState()
            settled = now.replayed == state.replayed ? settled + 1 : 0
            state = now
        }
    }
    let reached = state.replayed >= goal
    report.check(
        "replayed \(request.walSource)", reached,
        reached
            ? "replayed \(state.replayed) ≥ the end of \(request.walSource) \(goal)"
            : "replayed only \(state.replayed) of \(goal) within \(request.timeout) s")
    guard reached else {
        throw PromoteError(
            "the copy replayed up to \(state.replayed) but \(request.walSource) holds WAL up to \(goal) (hint: see \(restored.dataDirectory)/log/ or the server log; is WAL missing from \(request.walSource)?)"
        )
    }
    report.lastReplayedLSN = state.replayed.description
    report.lastReplayedCommitTime = state.lastCommit
    // The RPO is measured against what the receiver held; the archive's end is no such measure.
    if reader != nil { report.spoolEndLSN = goal.description }
    let restoredAt = ContinuousClock.now
    report.drill?.restoreSeconds = roundedSeconds(restoredAt - clockStart)

    progress("== promoting the copy (\(elapsed(clockStart)))")
    let (timeline, firstWriteAt) = try await steps.promote(deadline: deadline + .seconds(30), evidence: &report)
    // The RTO a real promotion would have: the DR standby is already replaying, so only the promotion counts.
    report.rtoSeconds = roundedSeconds(ContinuousClock.now - restoredAt)
    report.drill?.promotionSeconds = report.rtoSeconds
    report.firstWriteAt = firstWriteAt
    report.promotedTimeline = timeline
    report.check(
        "promoted", true,
        "timeline \(timeline.map(String.init) ?? "?"), first write accepted at \(formatISO8601(firstWriteAt))")
    report.measureRecoveryPoint()
    // The receiver's record of the primary and its modes is in the spool: without one there is nothing to judge by.
    if let reader { report.judgeLoss(systemDirectory: reader.systemDirectory, promotedAt: firstWriteAt) }

    progress("== sanity checks (\(elapsed(clockStart)))")
    do {
        _ = try await session.query("CREATE TABLE walship_drill_check (checked_at timestamptz DEFAULT now())")
        _ = try await session.query("INSERT INTO walship_drill_check DEFAULT VALUES")
        let count = try await session.query("SELECT count(*) FROM walship_drill_check")
        report.check("writes", count.first?[0] == "1", "created a table, inserted and read back a row")
    } catch {
        report.check("writes", false, "\(error)")
    }
    if let checkSQL = request.checkSQL {
        do {
            let rows = try await session.query(checkSQL)
            let shown = rows.prefix(20).map { $0.map { $0 ?? "NULL" } }
            report.drill?.checkResult = Array(shown)
            report.check(
                "check query", true,
                "\(rows.count) row(s): \(shown.prefix(3).map { $0.joined(separator: ", ") }.joined(separator: "; "))")
        } catch {
            report.check("check query", false, "\(error)")
        }
    }
}

/// The throwaway server of a drill, run with pg_ctl as the PostgreSQL OS user.
struct DrillServer {
    let dataDirectory: String
    let port: Int
    let osUser: String
    let bindir: String

    var log: String { dataDirectory + "/drill.log" }

    /// The postmaster's pid from its pid file, while the file is there.
    var postmasterPID: Int32? {
        (try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8))?
            .split(separator: "\n").first.flatMap { Int32($0) }
    }

    /// Whether the postmaster still runs.
    var isRunning: Bool { postmasterPID.map { kill($0, 0) == 0 } ?? false }

    func start() async throws {
        let result: ChildProcess.Result
        do {
            result = try await pgCtl(["-D", dataDirectory, "-l", log, "-w", "-t", "120", "start"]).run()
        } catch {
            var error = error
            error.hint = error.hint ?? "--pg-bindir names the directory of pg_ctl (default: \(DrillPlan.postgresBindirDefault))"
            throw error
        }
        guard result.succeeded else {
            let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").suffix(5).joined(
                separator: "\n")
            let said = result.errorTail(lines: 3).replacingOccurrences(of: "\n", with: " ")
            throw PromoteError(
                "the drill copy did not start (pg_ctl exit \(result.status)\(said.isEmpty ? "" : ": \(said)")); \(log) ends with:\n\(tail)"
            )
        }
    }

    func stop() async {
        _ = try? await pgCtl(["-D", dataDirectory, "-m", "fast", "-w", "stop"]).run()
    }

    /// pg_ctl as the PostgreSQL OS user. Its output goes to files, never pipes: the server it starts
    /// keeps what it inherited open long after pg_ctl returns.
    private func pgCtl(_ arguments: [String]) -> ChildProcess {
        ChildProcess(
            bindir + "/pg_ctl", arguments, user: DrillPlan.pgCtlUser(osUser: osUser, runningAsRoot: getuid() == 0),
            errorOutput: .captured)
    }
}

/// What `pg_config --bindir` prints, or nil when pg_config is not installed, fails or hangs.
func pgConfigBindir() async -> String? {
    let pgConfig = ChildProcess("pg_config", ["--bindir"], output: .captured, timeout: .seconds(10))
    guard let result = try? await pgConfig.run(), result.succeeded else { return nil }
    return result.standardOutput
}

/// A TCP port on loopback nobody listens on right now.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw PromoteError("cannot open a socket to find a free port") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw PromoteError("cannot find a free loopback port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// The furthest replay position any real DR standby reported to the receiver.
func drStandbyReplay(_ systemDirectory: String) -> String? {
    ((try? StandbyRegistry.list(systemDirectory: systemDirectory)) ?? []).compactMap { LSN($0.replayedLSN) }.max()?
        .description
}

private func makeTemporaryDirectory() -> String {
    var template = Array("/tmp/walship-drill-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!).map { String(cString: $0) } }
        ?? "/tmp/walship-drill-\(getpid())"
}

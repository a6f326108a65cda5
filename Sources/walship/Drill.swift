import ArgumentParser
import Foundation
import Operations
import PGReplication
import Spool
import StatusModel
import WALCore

struct Drill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rehearse a disaster: recover a throwaway copy from the spool, promote it, check it, report RPO and RTO.",
        discussion: """
            Restores the newest complete base backup (or --backup) into a temporary directory, recovers it through restore_command alone (walship restore-wal; the spool is only read: no primary_conninfo, archive_mode off), waits until it has replayed all WAL the spool holds, promotes it on a free loopback port, runs sanity checks and --check-sql, writes the evidence report, and removes the copy unless --keep. The primary, the receiver and the real DR standby are not touched.
            Exit status: 0 drill passed; 1 it failed (see the report).
            Example:
              walship drill --spool /var/lib/walship --check-sql "SELECT count(*) FROM patients"
            """)

    @Option(help: "Spool directory of walship receive (read only).")
    var spool: String

    @Option(help: "System identifier, when the spool holds several.")
    var system: UInt64?

    @Option(help: "Backup ID to start from (walship backups); the newest complete one by default.")
    var backup: String?

    @Option(
        help: "SQL to run on the promoted copy as a sanity check (its result goes into the report; an error fails the drill).")
    var checkSql: String?

    @Option(help: "Write the report to FILE.json and FILE.md (default: walship-drill-<time> in the current directory).")
    var report: String?

    @Flag(help: "Leave the promoted copy running (its port and how to stop it are printed).")
    var keep = false

    @Option(help: "Directory for the throwaway copy (default: a new directory under /tmp).")
    var workdir: String?

    @Option(help: "Seconds allowed for recovery to reach the end of the spool.")
    var timeout: Int = 600

    @Option(help: "The PostgreSQL OS user that runs the copy and its restore_command.")
    var osUser = "postgres"

    @Option(help: "Directory of pg_ctl (default: pg_config --bindir, then /usr/lib/postgresql/15/bin).")
    var pgBindir: String?

    @Option(help: "Path of the walship binary restore_command should run (the running binary by default).")
    var walshipPath: String?

    @OptionGroup var notice: NoticeOptions

    func validate() throws {
        guard timeout >= 10 else { throw ValidationError("--timeout must be at least 10 seconds") }
    }

    func run() async throws {
        let clockStart = ContinuousClock.now
        let spoolRoot = absolutePath(spool)
        let base = workdir.map(absolutePath) ?? makeTemporaryDirectory()
        let dataDirectory = base + "/pgdata"
        var evidence = PromotionReport(
            kind: "drill", host: ProcessInfo.processInfo.hostName, startedAt: Date(), dataDirectory: dataDirectory)
        let reportBase =
            report.map(absolutePath) ?? defaultReportBase(kind: "drill", directory: FileManager.default.currentDirectoryPath)
        let notifier = notice.notifier("walship.drill")
        var server: DrillServer?
        var failure: String?
        do {
            server = try await drill(spoolRoot: spoolRoot, base: base, evidence: &evidence, clockStart: clockStart)
        } catch {
            failure = "\(error)"
        }
        if failure == nil, evidence.checks.contains(where: { !$0.passed }) {
            failure = "a sanity check failed"
        }
        // The protected standby kept replaying? Its position as the receiver last recorded it.
        if let reader = try? SpoolReader(root: spoolRoot, system: system), var details = evidence.drill {
            details.drStandbyReplayAfter = Self.drStandbyReplay(reader.systemDirectory)
            evidence.drill = details
        }
        if let server {
            if keep {
                say(
                    "the promoted copy keeps running: psql -h \(base) -p \(server.port) -U \(osUser) postgres   (stop: pg_ctl -D \(dataDirectory) stop -m fast, then rm -rf \(base))"
                )
            } else {
                server.stop()
            }
        }
        if !keep || server == nil {
            try? FileManager.default.removeItem(atPath: base)
        }
        evidence.finishedAt = Date()
        evidence.outcome = failure == nil ? "promoted" : "failed"
        if let failure { evidence.check("completed", false, failure) }
        let headline =
            failure.map { "disaster-recovery drill failed: \($0)" }
            ?? "disaster-recovery drill passed: RPO \(evidence.rpo.map { "\(formatBytes($0.bytes)) / \($0.seconds) s" } ?? "?"), RTO \(evidence.rtoSeconds.map { "\($0) s" } ?? "?")"
        try await conclude(
            evidence, command: "drill", base: reportBase, success: failure == nil, failure: failure,
            headline: headline, notifier: notifier)
        say("drill passed")
    }

    private func drill(
        spoolRoot: String, base: String, evidence: inout PromotionReport,
        clockStart: ContinuousClock.Instant
    ) async throws -> DrillServer? {
        let reader = try SpoolReader(root: spoolRoot, system: system)
        evidence.systemIdentifier = String(reader.systemIdentifier)
        let standbyBefore = Self.drStandbyReplay(reader.systemDirectory)
        let port = try freeLoopbackPort()
        let fm = FileManager.default
        try fm.createDirectory(atPath: base, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        if getuid() == 0 { try shell("chown \(quote(osUser)): \(quote(base))", what: "give \(base) to \(osUser)") }

        say("== restoring a throwaway copy (\(elapsed(clockStart))) into \(base) (port \(port))")
        // Recovery through restore_command only: nothing here can write to the spool or reach the primary.
        let restored = try restoreFromBackup(
            spool: spoolRoot, system: reader.systemIdentifier, backup: backup, pgdata: evidence.dataDirectory,
            settings: [
                "primary_conninfo = ''", "primary_slot_name = ''", "archive_mode = off", "archive_command = ''",
                "synchronous_standby_names = ''", "port = \(port)", "listen_addresses = '127.0.0.1'",
                "unix_socket_directories = '\(escape(base))'", "cluster_name = 'walship_drill'", "hot_standby = on",
                // Poll the spool often: the drill follows the live stream's in-progress segment.
                "wal_retrieve_retry_interval = '200ms'", "logging_collector = off",
            ],
            signal: "standby.signal", osUser: osUser, walshipPath: walshipPath)
        evidence.check(
            "restored", true,
            "backup \(restored.backup.id) (start \(restored.backup.startLSN)) unpacked; restore_command reads the spool read-only"
        )
        evidence.drill = .init(
            backupID: restored.backup.id, port: port, checkSQL: checkSql, checkResult: nil, kept: keep,
            drStandbyReplayBefore: standbyBefore, drStandbyReplayAfter: nil)
        // The copy must answer its owner on its own socket whatever the primary's pg_hba.conf says.
        let hba = restored.dataDirectory + "/pg_hba.conf"
        let oldHBA = (try? String(contentsOfFile: hba, encoding: .utf8)) ?? ""
        try ("local all \(osUser) peer\n" + oldHBA).write(toFile: hba, atomically: true, encoding: .utf8)
        if getuid() == 0 { try shell("chown \(quote(osUser)): \(quote(hba))", what: "give pg_hba.conf to \(osUser)") }

        let server = DrillServer(
            dataDirectory: restored.dataDirectory, port: port, osUser: osUser, bindir: pgBindir ?? postgresBindir())
        try server.start()
        let cluster = try LocalCluster(dataDirectory: restored.dataDirectory)
        let session = SQLSession(
            conninfo: try Conninfo("host='\(base)' port=\(port) dbname=postgres user='\(osUser)'"),
            applicationName: "walship_drill")
        defer { Task { await session.close() } }
        try await cluster.connect(session)
        evidence.check("connects", true, "the copy accepts connections on port \(port)")

        say("== recovering to the end of the spool (\(elapsed(clockStart)))")
        let steps = PromotionSteps(session: session) { say($0) }
        let deadline = clockStart + .seconds(timeout)
        // The live stream keeps the spool growing: recover to its end as of now, then promote, and measure
        // the RPO against what was acknowledged by then.
        let goalNow = try reader.end().lsn
        let (state, goal) = try await steps.waitForReplay(target: { goalNow }, deadline: deadline)
        let reached = state.replayed >= goal
        evidence.check(
            "replayed the spool", reached,
            reached
                ? "replayed \(state.replayed) ≥ spool end \(goal)"
                : "replayed only \(state.replayed) of \(goal) within \(timeout) s")
        guard reached else {
            throw PromoteError(
                "the copy replayed up to \(state.replayed) but the spool holds WAL up to \(goal) (hint: see \(restored.dataDirectory)/log/ or the server log; is WAL missing from the spool?)"
            )
        }
        evidence.lastReplayedLSN = state.replayed.description
        evidence.lastReplayedCommitTime = state.lastCommit
        evidence.spoolEndLSN = goal.description

        say("== promoting the copy (\(elapsed(clockStart)))")
        let (timeline, firstWriteAt) = try await steps.promote(deadline: deadline + .seconds(30), evidence: &evidence)
        evidence.rtoSeconds = roundedSeconds(ContinuousClock.now - clockStart)
        evidence.firstWriteAt = firstWriteAt
        evidence.promotedTimeline = timeline
        evidence.check(
            "promoted", true,
            "timeline \(timeline.map(String.init) ?? "?"), first write accepted at \(formatISO8601(firstWriteAt))")
        // RPO against the live stream: what the receiver had acknowledged by the time the copy took over.
        recordPrimaryProgress(into: &evidence, systemDirectory: reader.systemDirectory)
        evidence.measureRecoveryPoint()

        say("== sanity checks (\(elapsed(clockStart)))")
        do {
            _ = try await session.query("CREATE TABLE walship_drill_check (checked_at timestamptz DEFAULT now())")
            _ = try await session.query("INSERT INTO walship_drill_check DEFAULT VALUES")
            let count = try await session.query("SELECT count(*) FROM walship_drill_check")
            evidence.check("writes", count.first?[0] == "1", "created a table, inserted and read back a row")
        } catch {
            evidence.check("writes", false, "\(error)")
        }
        if let checkSql {
            do {
                let rows = try await session.query(checkSql)
                let shown = rows.prefix(20).map { $0.map { $0 ?? "NULL" } }
                evidence.drill?.checkResult = Array(shown)
                evidence.check(
                    "check query", true,
                    "\(rows.count) row(s): \(shown.prefix(3).map { $0.joined(separator: ", ") }.joined(separator: "; "))")
            } catch {
                evidence.check("check query", false, "\(error)")
            }
        }
        return server
    }

    /// The furthest replay position any real DR standby reported to the receiver.
    static func drStandbyReplay(_ systemDirectory: String) -> String? {
        ((try? StandbyRegistry.list(systemDirectory: systemDirectory)) ?? []).compactMap { LSN($0.replayedLSN) }.max()?
            .description
    }

    private func makeTemporaryDirectory() -> String {
        var template = Array("/tmp/walship-drill-XXXXXX".utf8CString)
        return template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!).map { String(cString: $0) } }
            ?? "/tmp/walship-drill-\(getpid())"
    }
}

/// The throwaway server of a drill, run with pg_ctl as the PostgreSQL OS user.
struct DrillServer {
    let dataDirectory: String
    let port: Int
    let osUser: String
    let bindir: String

    var log: String { dataDirectory + "/drill.log" }

    func start() throws {
        // No pipes: the server started by pg_ctl would hold them open after pg_ctl returns.
        let status = try runQuietly(asUser([bindir + "/pg_ctl", "-D", dataDirectory, "-l", log, "-w", "-t", "120", "start"]))
        guard status == 0 else {
            let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").suffix(5).joined(
                separator: "\n")
            throw PromoteError("the drill copy did not start (pg_ctl exit \(status)); \(log) ends with:\n\(tail)")
        }
    }

    func stop() {
        _ = try? runQuietly(asUser([bindir + "/pg_ctl", "-D", dataDirectory, "-m", "fast", "-w", "stop"]))
    }

    private func asUser(_ command: [String]) -> [String] {
        getuid() == 0 && osUser != "root" ? ["/usr/sbin/runuser", "-u", osUser, "--"] + command : command
    }
}

func postgresBindir() -> String {
    if let dir = ProcessInfo.processInfo.environment["PG_BINDIR"], !dir.isEmpty { return dir }
    for candidate in ["/usr/lib/postgresql/15/bin"] where FileManager.default.fileExists(atPath: candidate + "/pg_ctl") {
        return candidate
    }
    return "/usr/lib/postgresql/15/bin"
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

import ArgumentParser
import Foundation
import Operations
import WALCore
import WalshipConfig

struct Drill: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Rehearse a disaster: recover a throwaway copy from the spool, promote it, check it, report RPO and RTO.",
        discussion: """
            With --archive s3://BUCKET/PREFIX the copy comes from the object store walship receive --archive fills when the spool lacks the backup, or from the archive alone (no --spool): restored as walship restore --archive does (downloaded and checked before anything is unpacked), it replays the archive's WAL up to its newest segment; without a spool the report has no RPO against the primary's acknowledgements (the spool records them).
            Restores the newest complete base backup (or --backup) into a temporary directory, recovers it through restore_command alone (walship restore-wal; the spool is only read: no primary_conninfo, archive_mode off), waits until it has replayed all WAL the spool holds, promotes it on a free loopback port, runs sanity checks and --check-sql, writes the evidence report, and removes the copy unless --keep. The primary, the receiver and the real DR standby are not touched.
            Exit status: 0 drill passed; 1 it failed (see the report).
            Example:
              walship drill --spool /var/lib/walship --check-sql "SELECT count(*) FROM patients"
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "Spool directory of walship receive (read only; optional with --archive: the archive alone).")
    var spool: String?

    @OptionGroup var archive: ArchiveReadOptions

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

    @Option(
        help: ArgumentHelp(
            "Time allowed for recovery to reach the end of the spool: whole seconds, or 10m, 1h.", valueName: "duration"))
    var timeout = TimeSpan(seconds: 600)

    @Option(help: "The PostgreSQL OS user that runs the copy and its restore_command.")
    var osUser = "postgres"

    @Option(help: "Directory of pg_ctl (default: \(DrillPlan.postgresBindirDefault)).")
    var pgBindir: String?

    @Option(help: "Path of the walship binary restore_command should run (the running binary by default).")
    var walshipPath: String?

    @OptionGroup var notice: NoticeOptions

    func validate() throws {
        guard spool != nil || archive.archive != nil else {
            throw ValidationError("give --spool DIR, or --archive s3://BUCKET/PREFIX (the archive alone)")
        }
        guard timeout.isWholeSeconds, timeout.seconds >= 10 else {
            throw ValidationError("--timeout must be whole seconds, at least 10 (e.g. 600, 10m), not \(timeout)")
        }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "drill")
        var request = DrillRequest(
            spool: spool, system: system, backup: backup, checkSQL: checkSql, report: report, keep: keep,
            workDirectory: workdir, timeout: Int(timeout.seconds), osUser: osUser, pgBindir: pgBindir,
            walshipPath: walshipPath)
        if let url = archive.archive {
            let restore = ArchiveRestore(
                archive: archive, spool: spool, system: system, backup: backup, pgdata: "", osUser: osUser,
                walshipPath: walshipPath)
            request.restore = { dataDirectory, settings, signal in
                var restore = restore
                restore.pgdata = dataDirectory
                return try await restore.restore(settings: settings, signal: signal, targetTime: nil, progress: say)
            }
            if spool == nil {
                request.walSource = "the archive \(url)"
                let archive = archive
                request.walEnd = { system, segmentSize in
                    try await archivedWALEnd(archive, system: system, segmentSize: segmentSize)
                }
            }
        }
        let outcome = await Operations.drill(request, progress: say)
        try await conclude(
            outcome.report, command: "drill", base: outcome.reportBase, success: outcome.failure == nil,
            failure: outcome.failure, headline: outcome.headline, notifier: notice.notifier("walship.drill"))
        say("drill passed")
    }
}

import ArchiveCrypto
import ArgumentParser
import Foundation
import ObjectStore
import Operations
import Spool
import WALCore

struct Restore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build a PostgreSQL data directory from a stored base backup and its WAL (the spool's, or the archive's).",
        discussion: """
            With --standby the result is a streaming standby of the receiver (give --primary-conninfo pointing at walship receive --standby-listen); otherwise it is a recovery target that replays the spool's WAL up to --target-time, --target-lsn or --target-name (or to the end), then does --target-action. restore_command always points at walship restore-wal. Start the server afterwards with pg_ctl.
            With --archive s3://BUCKET/PREFIX the backup comes from the object store walship receive --archive fills when the spool lacks it, or from the archive alone (no --spool: --system, or the only system the archive holds). It is downloaded into PGDATA.walship/ beside the data directory, opened with --encryption-keyring and checked against its record before anything is unpacked. restore_command then reads the archive too, as --os-user and without this shell's environment: it names every archive option, --archive-credentials FILE (which that user must be able to read) or else PGDATA.walship/s3-credentials, written 0600 for that user from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and its prefetch cache PGDATA.walship/wal-cache.
            Examples:
              walship restore --spool /var/lib/walship --pgdata /var/lib/postgresql/15/dr --standby --primary-conninfo "host=127.0.0.1 port=7010 user=replicator"
              walship restore --archive s3://dr-archive/walship --archive-endpoint https://s3.hospital.example --archive-credentials /etc/walship/s3-credentials --encryption-keyring /etc/walship/archive-keyring.json --system 7301234567890123456 --pgdata /var/lib/postgresql/15/dr --target-action promote
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "Spool directory of walship receive (optional with --archive: the archive alone).")
    var spool: String?

    @OptionGroup var archive: ArchiveReadOptions

    @Option(help: "Data directory to create (must not exist, or be empty).")
    var pgdata: String

    @Option(help: "Backup ID (walship backups); the newest complete backup by default.")
    var backup: String?

    @Option(help: "System identifier, when the spool (or the archive) holds more than one system.")
    var system: UInt64?

    @Flag(help: "Make a streaming standby (standby.signal) instead of a recovery target (recovery.signal).")
    var standby = false

    @Option(help: "primary_conninfo for --standby: the receiver's standby endpoint.")
    var primaryConninfo: String?

    @Option(
        help:
            "Recover up to this time (PostgreSQL timestamp, e.g. '2026-11-23 10:15:00+00'); the restore starts from the newest complete backup stored by then."
    )
    var targetTime: String?

    @Option(help: "Recover up to this LSN.")
    var targetLsn: String?

    @Option(help: "Recover up to this restore point (pg_create_restore_point).")
    var targetName: String?

    @Option(help: "What to do at the recovery target: pause, promote or shutdown.")
    var targetAction = "pause"

    @Option(help: "The PostgreSQL OS user that will run the server and restore_command.")
    var osUser = "postgres"

    @Option(help: "Path of the walship binary restore_command should run (the running binary by default).")
    var walshipPath: String?

    func validate() throws {
        guard spool != nil || archive.archive != nil else {
            throw ValidationError("give --spool DIR, or --archive s3://BUCKET/PREFIX (the archive alone)")
        }
        let targets = [targetTime, targetLsn, targetName].compactMap { $0 }
        if standby {
            guard primaryConninfo != nil else {
                throw ValidationError("--standby needs --primary-conninfo (the receiver's --standby-listen endpoint)")
            }
            guard targets.isEmpty else { throw ValidationError("a recovery target does not go with --standby") }
        } else if primaryConninfo != nil {
            throw ValidationError("--primary-conninfo goes with --standby")
        }
        guard targets.count <= 1 else { throw ValidationError("give at most one of --target-time, --target-lsn, --target-name") }
        if let targetTime, backup == nil, TargetTime.parse(targetTime) == nil {
            throw ValidationError(
                "--target-time \"\(targetTime)\" is not a time walship can compare with its backups (hint: write it as 2026-11-23 10:15:00+00, or name the backup to start from with --backup ID)"
            )
        }
        if let targetLsn, LSN(targetLsn) == nil { throw ValidationError("--target-lsn expects X/X, got \(targetLsn)") }
        guard ["pause", "promote", "shutdown"].contains(targetAction) else {
            throw ValidationError("--target-action is pause, promote or shutdown")
        }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "restore")
        do {
            try await restore()
        } catch let error as ExitCode {
            throw error
        } catch {
            throw fail("restore", error)
        }
    }

    private func restore() async throws {
        let target = targetTime.flatMap(TargetTime.parse)
        if let target, !target.zoneGiven {
            print(
                "note: --target-time has no time zone: taken as this host's (\(TimeZone.current.identifier)) to choose the backup"
            )
        }
        let settings = recoverySettings(
            primaryConninfo: standby ? primaryConninfo : nil, targetTime: targetTime, targetLSN: targetLsn,
            targetName: targetName, targetAction: targetAction)
        let signal = standby ? "standby.signal" : "recovery.signal"
        let restored: RestoredDirectory
        if let spool, archive.archive == nil {
            restored = try await restoreFromBackup(
                spool: spool, system: system, backup: backup, pgdata: pgdata, settings: settings, signal: signal,
                osUser: osUser, walshipPath: walshipPath, targetTime: target?.date)
        } else {
            restored = try await ArchiveRestore(
                archive: archive, spool: spool, system: system, backup: backup, pgdata: pgdata, osUser: osUser,
                walshipPath: walshipPath
            ).restore(settings: settings, signal: signal, targetTime: target?.date, progress: { print($0) })
        }
        let chosen = restored.backup
        print(
            "restored backup \(chosen.id) (system \(restored.systemIdentifier), start \(chosen.startLSN), stop \(chosen.stopLSN)) into \(restored.dataDirectory)"
        )
        print(
            standby
                ? "configured as a streaming standby of \(primaryConninfo!)"
                : "configured for recovery \([targetTime.map { "to time \($0)" }, targetLsn.map { "to LSN \($0)" }, targetName.map { "to restore point \($0)" }].compactMap { $0 }.first ?? "to the end of the \(spool == nil ? "archive" : "spool")'s WAL"), then \(targetAction)"
        )
        print(
            "start it: pg_ctl -D \(restored.dataDirectory) start   (as \(osUser), after setting port and listen_addresses as needed)"
        )
    }
}

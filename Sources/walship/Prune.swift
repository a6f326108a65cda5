import ArgumentParser
import Foundation
import Spool
import WALCore
import WalshipConfig

struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove old base backups and the WAL no kept backup or known standby needs.",
        discussion: """
            Keeps the newest --retain-backups complete backups and, with --retain-days N, every backup needed to restore to any time in the last N days; all WAL from the oldest kept backup's start onward; WAL a known standby has not replayed is never removed; with no complete backup nothing is removed. walship receive applies the same rule by itself every minute. With --config, the spool and the retention settings are the receiver's, from the file's [receive] table (options given here win). Without --dry-run it takes the spool's lock, so it refuses to run beside a live receiver.
            Example:
              walship prune --config /etc/walship/walship.toml --dry-run
            """)

    @Option(help: "Spool directory of walship receive (default: spool in the --config file's [receive] table).")
    var spool: String?

    @Option(help: "Complete base backups to keep (default: the receiver's, from --config, else 2).")
    var retainBackups: Int?

    @Option(
        help: ArgumentHelp(
            "Recovery window: keep every backup needed to restore to any time in the last N days (e.g. 7, or 36h) (default: the receiver's, from --config, else none).",
            valueName: "days"),
        transform: durationArgument(plainUnit: 86_400))
    var retainDays: TimeSpan?

    @Option(
        help: ArgumentHelp("The configuration file of walship receive, for its spool and retention settings.", valueName: "file"))
    var config: String?

    @Option(help: "Only this system identifier.")
    var system: UInt64?

    @Flag(help: "Print what would be removed, and why, without removing anything.")
    var dryRun = false

    func validate() throws {
        if let retainBackups, retainBackups < 1 { throw ValidationError("--retain-backups must be at least 1") }
        if let retainDays, retainDays.seconds <= 0 { throw ValidationError("--retain-days must be positive (e.g. 7)") }
        if spool == nil && config == nil {
            throw ValidationError("give --spool DIR, or --config FILE whose [receive] table names the spool")
        }
    }

    /// The spool and retention to apply: the command line's, else the receiver's from the file, else the defaults.
    func settings() throws -> (spool: String, retainBackups: Int, window: TimeSpan?, source: String) {
        guard let config else { return (spool!, retainBackups ?? 2, retainDays, "the command line") }
        let file = try ConfigFile.load(path: config)
        try WalshipConfiguration.schema.validate(file)
        let place = "\(config) [receive]"
        guard let spool = spool ?? file.argumentText("spool", in: "receive") else {
            throw ValidationError("\(place) names no spool (hint: give --spool DIR)")
        }
        var backups = retainBackups ?? 2
        if retainBackups == nil, let text = file.argumentText("retain-backups", in: "receive") {
            guard let value = Int(text), value >= 1 else { throw ValidationError("\(place) retain-backups must be at least 1") }
            backups = value
        }
        var window = retainDays
        if retainDays == nil, let text = file.argumentText("retain-days", in: "receive") {
            do { window = try TimeSpan(parsing: text, plainUnit: 86_400) } catch {
                throw ValidationError("\(place) retain-days: \(error)")
            }
        }
        return (spool, backups, window, "\(place) and the command line")
    }

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.apply(command: "prune")
        do {
            let (spool, retainBackups, window, source) = try settings()
            // Removing files beside a live receiver could race it; reading them cannot.
            let lock = dryRun ? nil : try SpoolMaintenanceLock(root: spool)
            defer { withExtendedLifetime(lock) {} }
            print(
                "retention: keep \(retainBackups) backup(s)\(window.map { ", and a recovery window of \($0)" } ?? "") (from \(source))"
            )
            let systems = try Spool.systemIdentifiers(root: spool).filter { system == nil || $0 == system }
            for id in systems {
                let directory = spool + "/\(id)"
                let plan = try Pruner.prune(
                    systemDirectory: directory, segmentSize: try Pruner.segmentSize(systemDirectory: directory),
                    retainBackups: retainBackups, recoveryWindow: window?.seconds, dryRun: dryRun)
                print("system \(id):")
                for reason in plan.reasons { print("  \(reason)") }
                let verb = dryRun ? "would remove" : "removed"
                for backup in plan.removeBackups { print("  \(verb) backup \(backup) (older than the kept backups)") }
                if let first = plan.removeSegments.first, let last = plan.removeSegments.last {
                    print("  \(verb) \(plan.removeSegments.count) WAL segment(s) \(first) … \(last) (before \(plan.keepFrom!))")
                }
                if plan.removeBackups.isEmpty && plan.removeSegments.isEmpty { print("  nothing to remove") }
            }
        } catch let error as ValidationError {
            throw fail("prune", error, kind: .setUp)
        } catch {
            throw fail("prune", error)
        }
    }
}

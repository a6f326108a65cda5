import ArgumentParser
import Foundation
import Spool

struct Prune: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove old base backups and the WAL no kept backup or known standby needs.",
        discussion: """
            Keeps the newest --retain-backups complete backups and all WAL from the oldest kept backup's start onward; WAL a known standby has not replayed is never removed; with no complete backup nothing is removed. walship receive applies the same rule by itself.
            """)

    @Option(help: "Spool directory of walship receive.")
    var spool: String

    @Option(help: "Complete base backups to keep.")
    var retainBackups = 2

    @Option(help: "Only this system identifier.")
    var system: UInt64?

    @Flag(help: "Print what would be removed, and why, without removing anything.")
    var dryRun = false

    func validate() throws {
        guard retainBackups >= 1 else { throw ValidationError("--retain-backups must be at least 1") }
    }

    func run() throws {
        do {
            let systems = try Spool.systemIdentifiers(root: spool).filter { system == nil || $0 == system }
            for id in systems {
                let directory = spool + "/\(id)"
                let plan = try Pruner.prune(
                    systemDirectory: directory, segmentSize: try Pruner.segmentSize(systemDirectory: directory),
                    retainBackups: retainBackups, dryRun: dryRun)
                print("system \(id):")
                for reason in plan.reasons { print("  \(reason)") }
                let verb = dryRun ? "would remove" : "removed"
                for backup in plan.removeBackups { print("  \(verb) backup \(backup) (older than the kept backups)") }
                if let first = plan.removeSegments.first, let last = plan.removeSegments.last {
                    print("  \(verb) \(plan.removeSegments.count) WAL segment(s) \(first) … \(last) (before \(plan.keepFrom!))")
                }
                if plan.removeBackups.isEmpty && plan.removeSegments.isEmpty { print("  nothing to remove") }
            }
        } catch {
            throw fail("prune", error)
        }
    }
}

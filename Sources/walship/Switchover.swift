import ArgumentParser
import Foundation
import Operations
import WALCore
import WalshipConfig

struct Switchover: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Reverse the sites with zero loss: demote the primary here, or promote the standby here once the primary stopped.",
        discussion: """
            Run it first at the primary's site, then at the standby's site; each run does that site's half and prints the next command. At the primary's site it checks that the peer is synchronous and close behind, stops the primary cleanly (its shutdown checkpoint is its last record), waits until this site's sender reports that checkpoint durable at the peer (--sender-status), and restarts the server as a standby of this site's walship receive (--primary-conninfo, restore_command from --spool); the sender beside it must run with --standby-wait. At the standby's site it proves from the spool that the primary stopped with nothing missing (the spool ends with its shutdown checkpoint), creates this site's sender's slot, promotes as walship promote does (fence, report kind "switchover"), waits for this site's sender to stream, and makes commits wait for it when the old primary waited for the other way. No data directory is copied. Running it again the same way switches back.
            Options may come from the configuration file's [switchover] table; --spool, --slot, --application-name and --sender-status default to the same file's [receive] spool, [send] slot, [send] application-name and [send] status-listen.
            Exit status: 0 this site's half is done (with --dry-run: every check passed); 1 refused (nothing changed) or failed (the report says what was put back); 64 usage.
            Examples:
              walship switchover --config /etc/walship/walship.toml --dry-run
              walship switchover --config /etc/walship/walship.toml
              walship switchover --config /etc/walship/walship.toml --shutdown-checkpoint 0/5000028
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "Data directory of this site's PostgreSQL server (the primary or the standby).")
    var pgdata: String?

    @Option(help: "Spool of this site's walship receive (default: [receive] spool of the configuration file).")
    var spool: String?

    @Option(
        help:
            "primary_conninfo of this site's server once demoted: this site's walship receive --standby-listen (needed at the primary's site)."
    )
    var primaryConninfo: String?

    @Option(
        help:
            "host:port of this site's walship send --status-listen: the peer's durable position after the stop (default: [send] status-listen)."
    )
    var senderStatus: String?

    @Option(help: "application_name of this site's walship send (default: [send] application-name, else walship).")
    var applicationName: String?

    @Option(help: "Replication slot of this site's walship send (default: [send] slot, else walship).")
    var slot: String?

    @Option(
        help:
            "At the standby's site: the shutdown checkpoint the primary's site printed; the spool must end with exactly it.")
    var shutdownCheckpoint: String?

    @Option(
        help: ArgumentHelp(
            "How much WAL the peer may lack before the primary is stopped: bytes, or 16M, 1G (powers of 1024).",
            valueName: "size"))
    var maxLagBytes = ByteSize(bytes: 16 << 20)

    @Option(
        help: ArgumentHelp(
            "Time for each wait (the stop, the peer's confirmation, replay, the promotion, the sender): whole seconds, or 2m.",
            valueName: "duration"))
    var timeout = TimeSpan(seconds: 120)

    @Flag(help: "Switch over although commits do not wait for the peer (the stop still waits for the peer to hold all WAL).")
    var allowAsync = false

    @Flag(help: "Perform the checks and print the verdict; change nothing.")
    var dryRun = false

    @Option(help: "Write the report to FILE.json and FILE.md (default: walship-switchover-<time> beside the data directory).")
    var report: String?

    @Option(help: "Directory of pg_ctl and pg_controldata (default: PG_BINDIR, else /usr/lib/postgresql/15/bin).")
    var pgBindir: String?

    @Option(help: "Path of the walship binary the demoted server's restore_command runs (the running binary by default).")
    var walshipPath: String?

    func validate() throws {
        guard pgdata != nil else { throw ValidationError("--pgdata is required (or pgdata in the [switchover] table)") }
        guard timeout.isWholeSeconds, timeout.seconds >= 1 else {
            throw ValidationError("--timeout must be whole seconds, at least 1 (e.g. 120, 2m), not \(timeout)")
        }
        if let shutdownCheckpoint, LSN(shutdownCheckpoint) == nil {
            throw ValidationError("--shutdown-checkpoint \(shutdownCheckpoint) is not an LSN (like 0/5000028)")
        }
    }

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        let configPath = WalshipConfiguration.path(in: CommandLine.arguments, environment: environment)
        let file = try configPath.map { try ConfigFile.load(path: $0) }
        func fromFile(_ table: String, _ key: String) -> String? { file?.tables[table]?[key]?.argumentText }
        guard let spool = spool ?? fromFile("receive", "spool") else {
            throw ValidationError("--spool is required (or [receive] spool in the configuration file)")
        }
        let request = SwitchoverRequest(
            dataDirectory: pgdata!, spool: spool, primaryConninfo: primaryConninfo,
            senderStatus: senderStatus ?? fromFile("send", "status-listen"),
            applicationName: applicationName ?? fromFile("send", "application-name") ?? "walship",
            slot: slot ?? fromFile("send", "slot") ?? "walship", shutdownCheckpoint: shutdownCheckpoint.flatMap { LSN($0) },
            allowAsync: allowAsync, maxLag: maxLagBytes.bytes, timeout: Int(timeout.seconds), report: report, dryRun: dryRun,
            bindir: pgBindir ?? DrillPlan.postgresBindir(environment: environment), walshipPath: walshipPath,
            nextCommandArguments: configPath.map { "--config \($0)" } ?? "(with this site's options)")
        let (evidence, base) = await Operations.switchover(request, progress: say)
        do {
            let written = try evidence.write(base: base)
            say("report: \(written.json), \(written.markdown)")
        } catch {
            FileHandle.standardError.write(
                Data("walship switchover: warning: cannot write the report to \(base): \(error)\n".utf8))
        }
        if let failure = evidence.failure {
            FileHandle.standardError.write(Data("walship switchover: error: \(failure)\n".utf8))
            throw ExitCode(1)
        }
        if let outage = evidence.writeOutageSeconds { say(String(format: "write outage: %.3f s", outage)) }
        say("\(evidence.outcome): \(evidence.dataDirectory)")
        for next in evidence.nextSteps { say("next: \(next)") }
    }
}

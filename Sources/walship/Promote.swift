import ArgumentParser
import Foundation
import Monitor
import Operations
import StatusModel
import WALCore
import WalshipConfig

struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Promote the DR replica after everything the receiver holds is replayed; report RPO and RTO.",
        discussion: """
            Refuses while the old primary may be alive: the receiver (asked on SPOOL/<system>/control.sock, or primary.json when it is down) must know the primary lost (walship status shows the readiness). Then waits until the standby has replayed all WAL in the spool (including the in-progress segment), fences the system at the receiver so a returning old primary cannot extend the old timeline at the DR site, promotes the standby, waits for its first accepted write, and writes an evidence report (JSON and Markdown).
            Run it beside the receiver: the spool and the fence are local. The standby is named by --pgdata (on this host), or by --standby CONNINFO alone (on this host or another): then every check and the promotion go through that connection. Its role must be a superuser, or may run pg_promote (GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer)) and read primary_conninfo (pg_read_all_settings); without the latter, only --force promotes a standby that does not use walship restore-wal.
            Exit status: 0 promoted (with --dry-run: would promote); 1 refused or failed (nothing was promoted unless the output says so); 64 neither --pgdata nor --standby.
            Examples:
              walship promote --pgdata /var/lib/postgresql/15/dr --spool /var/lib/walship
              walship promote --pgdata /var/lib/postgresql/15/dr --spool /var/lib/walship --dry-run
              walship promote --standby 'host=dr-db.example.org port=5432 user=postgres' --spool /var/lib/walship
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "Data directory of the DR standby, when it runs on this host.")
    var pgdata: String?

    @Option(
        help:
            "libpq connection string of the standby (default: its local socket, as the data directory's owner). Without --pgdata, the standby is promoted through this connection alone (a standby on another host)."
    )
    var standby: String?

    @Option(help: "Spool of walship receive: what the standby must replay first, the RPO figures, and the fence.")
    var spool: String?

    @Option(help: "System identifier, when the spool holds several (default: the standby's).")
    var system: UInt64?

    @Option(
        help: ArgumentHelp(
            "How long to wait for replay to reach the end of the spool, and then for the promotion: whole seconds, or 2m.",
            valueName: "duration"))
    var timeout = TimeSpan(seconds: 120)

    @Option(
        help:
            "Write the report to FILE.json and FILE.md (default: walship-promote-<time> in the spool's system directory, or here)."
    )
    var report: String?

    @Flag(
        help:
            "Promote even if the old primary may be alive, the standby does not look like a walship replica, cannot reach all received WAL, or the fence cannot be written."
    )
    var force = false

    @Flag(
        help:
            "Perform every check and print whether it would promote or refuse, with the RPO figures; change nothing (no fence, no pg_promote, no report unless --report names one, no notice)."
    )
    var dryRun = false

    @OptionGroup var notice: NoticeOptions

    func validate() throws {
        guard timeout.isWholeSeconds, timeout.seconds >= 1 else {
            throw ValidationError("--timeout must be whole seconds, at least 1 (e.g. 120, 2m), not \(timeout)")
        }
        guard pgdata != nil || standby != nil else { throw ValidationError(PromoteRequest.standbyMissing) }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "promote")
        let outcome = await Operations.promote(
            PromoteRequest(
                dataDirectory: pgdata, standby: standby, spool: spool, system: system, timeout: Int(timeout.seconds),
                report: report,
                force: force, dryRun: dryRun),
            progress: say)
        if dryRun {
            try concludeDryRun(outcome)
            return
        }
        try await conclude(
            outcome.report, command: "promote", base: outcome.reportBase, success: outcome.report.outcome == "promoted",
            failure: outcome.failure, headline: outcome.headline, notifier: notice.notifier("walship.promote"))
    }

    /// A dry run prints its verdict and figures, writes a report only where --report says, and sends no notice.
    private func concludeDryRun(_ outcome: PromotionOutcome) throws {
        say(outcome.report.summary)
        if report != nil {
            do {
                let written = try outcome.report.write(base: outcome.reportBase)
                say("report: \(written.json), \(written.markdown)")
            } catch {
                writeDiagnostic(
                    Data("walship promote: warning: cannot write the report to \(outcome.reportBase): \(error)\n".utf8))
            }
        }
        if let failure = outcome.failure {
            say("dry run: would refuse: \(failure)")
            throw ExitCode(1)
        }
    }
}

/// Ends `walship promote` or `walship drill`: writes the report (`base`.json and .md), prints the summary
/// and where the report is, sends the success or failure notice, and exits 1 when `failure` is set.
func conclude(
    _ evidence: PromotionReport, command: String, base: String, success: Bool, failure: String?, headline: String,
    notifier: AlertNotifier
) async throws {
    var written: (json: String, markdown: String)?
    do { written = try evidence.write(base: base) } catch {
        writeDiagnostic(Data("walship \(command): warning: cannot write the report to \(base): \(error)\n".utf8))
    }
    say(evidence.summary)
    if let written { say("report: \(written.json), \(written.markdown)") }
    await sendConclusionNotice(
        evidence, command: command, success: success, headline: headline, reportPath: written?.json, notifier: notifier)
    if let failure {
        writeDiagnostic(Data("walship \(command): error: \(failure)\n".utf8))
        throw ExitCode(1)
    }
}

/// Prints a line at once, also when stdout is a file or pipe (a long promotion or drill shows progress).
@Sendable func say(_ line: String) {
    let output = OperatorOutput.current
    let text =
        output.json
        ? JSONLogHandler.line(date: Date(), level: .info, label: output.label, message: line, metadata: [:], source: "walship")
        : line
    FileHandle.standardOutput.write(Data((text + "\n").utf8))
}

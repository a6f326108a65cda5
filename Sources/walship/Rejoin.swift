import ArgumentParser
import Foundation
import Operations

struct Rejoin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring a failed old primary back as a standby of the new primary by difference (pg_rewind), through walship.",
        discussion: """
            Run at the old primary's site with its server stopped, after the DR replica was promoted. Before changing anything it copies the old primary's WAL past the fork (the commits the new timeline never got) to PGDATA.lost-<time>/ and summarises it with pg_waldump in the report, then issues a CHECKPOINT on the new primary, rewinds the data directory with pg_rewind (old-timeline WAL the directory lacks is read from --spool through restore_command) and configures it as a standby of this site's walship receive (--primary-conninfo, its --standby-listen). Nothing is deleted.
            The data directory needs wal_log_hints = on or data checksums. Without them, or when pg_rewind fails, --reseed moves the data directory aside whole (PGDATA.reseed-<time>, never deleted), ships a base backup of the new primary to this site's receiver (--reseed-to, with the link's TLS options) and restores it as a standby of that receiver, with the old server's own postgresql.conf, pg_hba.conf and pg_ident.conf put back. The --source role needs a CHECKPOINT right (superuser or pg_checkpoint) and what pg_rewind reads: EXECUTE on pg_ls_dir, pg_stat_file, pg_read_binary_file (docs/runbook.md, "Fail-back after a disaster").
            Exit status: 0 rejoined; 1 refused (nothing changed) or failed (the report says where); 64 usage.
            Example:
              walship rejoin --pgdata /var/lib/postgresql/15/main --source "host=dr.hospital.example user=rewinder sslmode=verify-full" --primary-conninfo "host=127.0.0.1 port=7010 user=replicator" --spool /var/lib/walship --start
            """)

    @Option(help: "Data directory of the old primary (its server stopped).")
    var pgdata: String

    @Option(help: "libpq connection string of the new primary (SQL; pg_rewind uses it too).")
    var source: String

    @Option(help: "primary_conninfo of the rejoined standby: this site's walship receive --standby-listen.")
    var primaryConninfo: String

    @Option(help: "Spool of this site's walship receive: the standby's restore_command, and pg_rewind's for old-timeline WAL.")
    var spool: String

    @Option(help: "First copy the old data directory, startable, to DIR (to query what was lost).")
    var keepCopy: String?

    @Option(help: "Write the report to FILE.json and FILE.md (default: walship-rejoin-<time> beside the data directory).")
    var report: String?

    @Flag(help: "Start the rejoined standby.")
    var start = false

    @Flag(
        help:
            "When a rewind is impossible (neither wal_log_hints nor checksums) or pg_rewind fails: re-seed with a base backup through this site's receiver instead, moving the old data directory aside."
    )
    var reseed = false

    @Option(
        help:
            "With --reseed: this site's walship receive --listen (HOST:PORT), where walship backup ships the new primary's copy.")
    var reseedTo: String?

    @Option(
        help: ArgumentHelp(
            "The peer site's walship receive --control-listen: pg_rewind's restore_command fetches from its spool the old-timeline WAL neither this directory nor --spool has (needs --tls-cert, --tls-key, --tls-ca).",
            valueName: "host:port"))
    var walFromPeer: String?

    @Option(
        help:
            "With --reseed: the certificate walship backup presents to the receiver; with --wal-from-peer: the one the peer's control endpoint allows (PEM)."
    )
    var tlsCert: String?

    @Option(help: "With --reseed or --wal-from-peer: the private key of --tls-cert (PEM).")
    var tlsKey: String?

    @Option(
        name: .customLong("tls-ca"),
        help: "With --reseed or --wal-from-peer: the CA (PEM) the receiver's certificate must be signed by.")
    var tlsCA: String?

    @Flag(help: "With --reseed: a plaintext link to the receiver (trusted network only).")
    var insecure = false

    @Option(
        help:
            "Directory of pg_rewind, pg_ctl, pg_controldata and pg_waldump (default: PG_BINDIR, else /usr/lib/postgresql/15/bin)."
    )
    var pgBindir: String?

    @Option(help: "Path of the walship binary restore_command should run (the running binary by default).")
    var walshipPath: String?

    func validate() throws {
        if let walFromPeer {
            _ = try parseEndpoint(walFromPeer, option: "--wal-from-peer")
            guard tlsCert != nil, tlsKey != nil, tlsCA != nil, !insecure else {
                throw ValidationError(
                    "--wal-from-peer needs --tls-cert, --tls-key and --tls-ca: this site's certificate, which the peer's --control-allow names"
                )
            }
        }
        guard reseed else {
            if reseedTo != nil || insecure || (tlsCert != nil && walFromPeer == nil) {
                throw ValidationError(
                    "--reseed-to and --insecure apply only with --reseed, --tls-cert, --tls-key and --tls-ca with --reseed or --wal-from-peer"
                )
            }
            return
        }
        guard let reseedTo else {
            throw ValidationError("--reseed needs --reseed-to HOST:PORT: this site's walship receive --listen")
        }
        _ = try parseEndpoint(reseedTo, option: "--reseed-to")
        let tls = [tlsCert, tlsKey, tlsCA].compactMap { $0 }
        guard insecure ? tls.isEmpty : tls.count == 3 else {
            throw ValidationError(
                "--reseed needs --tls-cert, --tls-key and --tls-ca for the link to the receiver, or --insecure for a plaintext one"
            )
        }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "rejoin")
        var request = RejoinRequest(
            dataDirectory: pgdata, source: source, primaryConninfo: primaryConninfo, spool: spool, keepCopy: keepCopy,
            report: report, start: start,
            bindir: pgBindir ?? DrillPlan.postgresBindir(environment: ProcessInfo.processInfo.environment),
            walshipPath: walshipPath)
        if let walFromPeer, let tlsCert, let tlsKey, let tlsCA {
            request.peerWALArguments = [
                "--peer-control", walFromPeer, "--tls-cert", absolutePath(tlsCert), "--tls-key", absolutePath(tlsKey),
                "--tls-ca", absolutePath(tlsCA),
            ]
        }
        if reseed, let reseedTo {
            let link =
                insecure
                ? ["--insecure"] : ["--tls-cert", tlsCert ?? "", "--tls-key", tlsKey ?? "", "--tls-ca", tlsCA ?? ""]
            request.reseed = .init(receiver: reseedTo, linkArguments: link)
        }
        let (evidence, base) = await Operations.rejoin(request, progress: say)
        var written: (json: String, markdown: String)?
        do { written = try evidence.write(base: base) } catch {
            writeDiagnostic(Data("walship rejoin: warning: cannot write the report to \(base): \(error)\n".utf8))
        }
        if let lost = evidence.lostWAL, let aside = evidence.setAsideDirectory {
            say("set aside: \(lost.commits) committed transaction(s) the new primary never got, in \(aside)")
        }
        if let written { say("report: \(written.json), \(written.markdown)") }
        if let failure = evidence.failure {
            writeDiagnostic(Data("walship rejoin: error: \(failure)\n".utf8))
            throw ExitCode(1)
        }
        say(
            evidence.outcome == "reseeded"
                ? "re-seeded: \(evidence.dataDirectory) follows the new primary through this site's walship receive; the old directory is \(evidence.keptAside ?? "?")"
                : "rejoined: \(evidence.dataDirectory) follows the new primary through this site's walship receive")
        for next in evidence.nextSteps { say("next: \(next)") }
    }
}

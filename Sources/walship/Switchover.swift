import ArgumentParser
import Foundation
import Operations
import ShipTLS
import Spool
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

    @Option(
        help: ArgumentHelp(
            "The peer's walship receive --control-listen: run both halves from this site (the peer's over mutual TLS, if it allows this site's certificate with --control-allow).",
            valueName: "host:port"))
    var peerControl: String?

    @Option(
        help:
            "This site's certificate for --peer-control (default: [send] tls-cert of the configuration file, else its top level)."
    )
    var tlsCert: String?

    @Option(help: "The private key of --tls-cert (default: [send] tls-key, else the top level).")
    var tlsKey: String?

    @Option(
        name: .customLong("tls-ca"),
        help: "The CA the peer's certificate must be signed by (default: [send] tls-ca, else the top level).")
    var tlsCA: String?

    func validate() throws {
        guard pgdata != nil else { throw ValidationError("--pgdata is required (or pgdata in the [switchover] table)") }
        guard timeout.isWholeSeconds, timeout.seconds >= 1 else {
            throw ValidationError("--timeout must be whole seconds, at least 1 (e.g. 120, 2m), not \(timeout)")
        }
        if let shutdownCheckpoint, LSN(shutdownCheckpoint) == nil {
            throw ValidationError("--shutdown-checkpoint \(shutdownCheckpoint) is not an LSN (like 0/5000028)")
        }
        if let peerControl {
            _ = try parseEndpoint(peerControl, option: "--peer-control")
            if shutdownCheckpoint != nil {
                throw ValidationError(
                    "--shutdown-checkpoint is for the standby's half run by hand; with --peer-control the peer's half reports it")
            }
        }
    }

    /// What this run's options and the configuration file ask of this site.
    func makeRequest(configPath: String?, environment: [String: String]) throws -> SwitchoverRequest {
        let file = try configPath.map { try ConfigFile.load(path: $0) }
        func fromFile(_ table: String, _ key: String) -> String? { file?.tables[table]?[key]?.argumentText }
        guard let spool = spool ?? fromFile("receive", "spool") else {
            throw ValidationError("--spool is required (or [receive] spool in the configuration file)")
        }
        return SwitchoverRequest(
            dataDirectory: pgdata!, spool: spool, primaryConninfo: primaryConninfo,
            senderStatus: senderStatus ?? fromFile("send", "status-listen"),
            applicationName: applicationName ?? fromFile("send", "application-name") ?? "walship",
            slot: slot ?? fromFile("send", "slot") ?? "walship", shutdownCheckpoint: shutdownCheckpoint.flatMap { LSN($0) },
            allowAsync: allowAsync, maxLag: maxLagBytes.bytes, timeout: Int(timeout.seconds), report: report, dryRun: dryRun,
            bindir: pgBindir ?? DrillPlan.postgresBindir(environment: environment), walshipPath: walshipPath,
            nextCommandArguments: configPath.map { "--config \($0)" } ?? "(with this site's options)")
    }

    /// The TLS files for --peer-control: the options, else the file's [send] table, else its top level.
    func peerTLS(configPath: String?) throws -> TLSFiles {
        let file = try configPath.map { try ConfigFile.load(path: $0) }
        func value(_ given: String?, _ key: String) -> String? {
            given ?? file?.tables["send"]?[key]?.argumentText ?? file?.common[key]?.argumentText
        }
        guard let certificate = value(tlsCert, "tls-cert"), let key = value(tlsKey, "tls-key"),
            let authority = value(tlsCA, "tls-ca")
        else {
            throw ValidationError(
                "--peer-control needs this site's certificate: --tls-cert, --tls-key and --tls-ca (or tls-cert, tls-key and tls-ca in the configuration file's [send] table)"
            )
        }
        return TLSFiles(certificate: certificate, privateKey: key, authority: authority)
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "switchover")
        let environment = ProcessInfo.processInfo.environment
        let configPath = WalshipConfiguration.path(in: CommandLine.arguments, environment: environment)
        let request = try makeRequest(configPath: configPath, environment: environment)
        guard let peerControl else {
            let evidence = await performHalf(request)
            try finish(evidence, printNextSteps: true)
            return
        }
        let endpoint = try parseEndpoint(peerControl, option: "--peer-control")
        let peer = PeerControl(
            host: endpoint.host, port: endpoint.port, tls: try peerTLS(configPath: configPath), spool: request.spool,
            timeout: .seconds(max(600, Int(timeout.seconds) * 8)))
        try await switchOverBothSites(request, peer: peer)
    }

    /// Runs this site's half, writes its report, and returns it.
    func performHalf(_ request: SwitchoverRequest) async -> SwitchoverReport {
        let (evidence, base) = await Operations.switchover(request, progress: say)
        do {
            let written = try evidence.write(base: base)
            say("report: \(written.json), \(written.markdown)")
        } catch {
            writeDiagnostic(
                Data("walship switchover: warning: cannot write the report to \(base): \(error)\n".utf8))
        }
        return evidence
    }

    /// Prints how a half ended; a failed or refused half exits 1.
    func finish(_ evidence: SwitchoverReport, printNextSteps: Bool, site: String = "") throws {
        if let failure = evidence.failure {
            writeDiagnostic(Data("walship switchover: error: \(site)\(failure)\n".utf8))
            throw ExitCode(1)
        }
        if let outage = evidence.writeOutageSeconds { say(String(format: "write outage: %.3f s", outage)) }
        say("\(site)\(evidence.outcome): \(evidence.dataDirectory)")
        if printNextSteps { for next in evidence.nextSteps { say("next: \(next)") } }
    }

    struct PeerControl {
        var host: String
        var port: Int
        var tls: TLSFiles
        var spool: String
        var timeout: Duration

        func ask(_ request: SwitchoverControlRequest) async throws -> SwitchoverControlAnswer {
            try await SwitchoverControlClient.ask(
                host: host, port: port, tls: tls, request: request, timeout: timeout, progress: { say("peer: \($0)") })
        }

        /// The requesting site's audit log gets each request to the peer and its answer, as the peer's does.
        func audit(_ system: UInt64?, _ fields: [String: String]) {
            do {
                try ModeHistory.recordEvent(
                    fields.merging(["peer": "\(host):\(port)"]) { $1 }, system: system.map { String($0) }, root: spool)
            } catch {
                writeDiagnostic(
                    Data("walship switchover: warning: cannot write to the audit log in \(spool): \(error)\n".utf8))
            }
        }
    }

    /// Both halves from this site: this site's own, and the peer's through its control endpoint, in the order the
    /// roles require (the primary's site stops first, the standby's promotes after).
    func switchOverBothSites(_ request: SwitchoverRequest, peer: PeerControl) async throws {
        let host = ProcessInfo.processInfo.hostName
        let local: (role: SwitchoverRole, system: UInt64)
        do { local = try await switchoverRole(dataDirectory: request.dataDirectory) } catch {
            throw fail("switchover", error, kind: .runtime)
        }
        let check = try await askPeer(peer, SwitchoverControlRequest(action: .check, requestedBy: host), system: local.system)
        guard let peerRole = check.role, peerRole != local.role, check.systemIdentifier == String(local.system) else {
            throw fail(
                "switchover",
                SwitchoverControlError(
                    "the peer's server is \(check.role.map { $0 == .demote ? "a primary" : "a standby" } ?? "unknown") of system \(check.systemIdentifier ?? "?"), this site's \(local.role == .demote ? "a primary" : "a standby") of system \(local.system): a switchover needs the primary at one site and its standby at the other; nothing was changed"
                ), kind: .runtime)
        }
        say("peer \(peer.host):\(peer.port) is ready: its server is \(peerRole == .demote ? "the primary" : "the standby")")
        if request.dryRun {
            let evidence = await performHalf(request)
            try finish(evidence, printNextSteps: false)
            say("dry run: the peer's half was checked for reachability and role only (its own checks run when it acts)")
            return
        }
        switch local.role {
        case .demote:
            let demoted = await performHalf(request)
            try finish(demoted, printNextSteps: false)
            let promoted = try await askPeer(
                peer,
                SwitchoverControlRequest(
                    action: .promote, shutdownCheckpoint: demoted.shutdownCheckpointLSN, requestedBy: host),
                system: local.system)
            try finishPeer(promoted)
        case .promote:
            let demoted = try await askPeer(
                peer, SwitchoverControlRequest(action: .demote, requestedBy: host), system: local.system)
            try finishPeer(demoted)
            guard let checkpoint = demoted.report?.shutdownCheckpointLSN.flatMap({ LSN($0) }) else {
                throw fail(
                    "switchover", SwitchoverControlError("the peer demoted its primary but reported no shutdown checkpoint"),
                    kind: .runtime)
            }
            var promote = request
            promote.shutdownCheckpoint = checkpoint
            let promoted = await performHalf(promote)
            try finish(promoted, printNextSteps: false)
        }
        say("switchover complete: both sites' halves done")
    }

    func askPeer(
        _ peer: PeerControl, _ request: SwitchoverControlRequest, system: UInt64
    ) async throws
        -> SwitchoverControlAnswer
    {
        if request.action != .check {
            peer.audit(system, ["event": "switchover-peer-request", "action": request.action.rawValue])
        }
        let answer: SwitchoverControlAnswer
        do { answer = try await peer.ask(request) } catch {
            peer.audit(system, ["event": "switchover-peer-result", "action": request.action.rawValue, "outcome": "no answer"])
            throw fail("switchover", error, kind: .runtime)
        }
        if request.action != .check || answer.refused != nil {
            peer.audit(
                system,
                [
                    "event": "switchover-peer-result", "action": request.action.rawValue,
                    "outcome": answer.refused.map { _ in "refused" } ?? answer.report?.outcome ?? "?",
                    "detail": answer.refused ?? answer.report?.failure ?? "", "report": answer.reportPath ?? "",
                ])
        }
        if let refused = answer.refused {
            throw fail("switchover", SwitchoverControlError("the peer refused: \(refused)"), kind: .runtime)
        }
        return answer
    }

    /// Prints how the peer's half ended; a failed or refused half exits 1.
    func finishPeer(_ answer: SwitchoverControlAnswer) throws {
        guard let report = answer.report else {
            throw fail("switchover", SwitchoverControlError("the peer answered without a report"), kind: .runtime)
        }
        if let path = answer.reportPath { say("peer report: \(path)") }
        try finish(report, printNextSteps: false, site: "peer: ")
    }
}

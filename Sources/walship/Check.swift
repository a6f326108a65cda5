import Archive
import ArgumentParser
import Foundation
import Logging
import Operations
import WALCore
import WalshipConfig

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration file and test what the configured command needs, one line per check.",
        discussion: """
            The file is read exactly as walship send/receive --config read it (with WALSHIP_* environment overrides). For send: the source is reachable as a replication connection, the slot is present (or will be created), the receiver answers a handshake, the certificates are valid, the clocks of this host, the primary and the receiver agree, and the primary's synchronous_standby_names matches sync. For receive: the spool is writable, the listen addresses are free or held by the running receiver, the certificates and the standby credential are valid, and with archive set the object store takes, returns and deletes a probe object with the configured credentials. Nothing is left behind, except the empty spool directory of a database system the receiver had not heard of (as its first sender would make it). Exit status 0 when every check passes (warnings allowed; with --strict a warning fails too), 1 otherwise.
            Example:
              walship check --config /etc/walship/walship.toml
            """)

    @Option(help: ArgumentHelp("The configuration file (default: WALSHIP_CONFIG).", valueName: "file"))
    var config: String?

    @Option(help: ArgumentHelp("The command to check, send or receive (default: the one table the file has).", valueName: "role"))
    var role: String?

    @Option(
        help: ArgumentHelp("Clock difference beyond which the clock check warns: seconds, or 500ms, 5s.", valueName: "duration"))
    var maxClockSkew = TimeSpan(seconds: 5)

    @Flag(help: "Exit 1 on a warning too (WARN lines), for scripts and monitoring that accept nothing less than ok.")
    var strict = false

    func validate() throws {
        if let role, !WalshipConfiguration.daemons.contains(role) {
            throw ValidationError("--role must be send or receive, not \"\(role)\"")
        }
        guard maxClockSkew.seconds > 0 else { throw ValidationError("--max-clock-skew must be positive") }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "check")
        let environment = ProcessInfo.processInfo.environment
        let path = config ?? environment["WALSHIP_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        // Unbuffered, so each line appears as its check completes, even into a pipe.
        var report = CheckReport { FileHandle.standardOutput.write(Data(($0.line + "\n").utf8)) }
        let file: ConfigFile?
        do {
            file = try path.map { try ConfigFile.load(path: $0) }
        } catch {
            report.add(CheckVerdicts.configurationUnusable(error))
            throw ExitCode(1)
        }
        let chosen: String
        switch CheckVerdicts.role(
            explicit: role, filePath: file?.path,
            fileRoles: (file?.roles ?? []).filter { WalshipConfiguration.daemons.contains($0) })
        {
        case .role(let role): chosen = role
        case .refused(let failure):
            report.add(failure)
            throw ExitCode(1)
        }
        let expansion: Expansion
        do {
            expansion = try Layering.expand(
                arguments: [], role: chosen, schema: WalshipConfiguration.schema, file: file,
                environment: environment)
        } catch {
            report.add(CheckVerdicts.configurationUnusable(error))
            throw ExitCode(1)
        }
        let source = file.map { "\($0.path)" } ?? "the environment"
        do {
            if chosen == "send" {
                let send = try Send.parse(expansion.arguments)
                report.add(
                    CheckVerdicts.configurationParsed(source: source, command: "send", optionCount: expansion.origins.count))
                await checkSender(
                    SenderCheckSettings(
                        source: send.source, to: send.to, slot: send.slot, createSlot: send.createSlot,
                        applicationName: send.applicationName, sync: send.sync, tlsFiles: send.link.tlsFiles,
                        tlsServerName: send.tlsServerName, linkTimeout: send.link.linkTimeoutSeconds,
                        maxClockSkew: maxClockSkew.seconds),
                    &report)
                checkSiteSpool(send, &report)
            } else {
                let receive = try Receive.parse(expansion.arguments)
                report.add(
                    CheckVerdicts.configurationParsed(source: source, command: "receive", optionCount: expansion.origins.count))
                await checkReceiver(
                    ReceiverCheckSettings(
                        spool: receive.spool, listen: receive.listen, standbyListen: receive.standbyListen,
                        statusListen: receive.link.statusListen, tlsFiles: receive.link.tlsFiles,
                        standbyTrust: receive.standbyTrust, standbyPasswordFile: receive.standbyPasswordFile,
                        loadStandbyCredential: { _ = try receive.standbyAuthentication() }),
                    &report)
                await checkArchive(receive, &report)
            }
        } catch {
            report.add(CheckVerdicts.configurationInvalid(expansion.annotate(UnitArguments.explain(Send.message(for: error)))))
        }
        if report.failed(strict: strict) { throw ExitCode(1) }
    }

    /// A sender of a site that runs both ends (`standby-wait`) needs its site's spool to switch back after a long
    /// reversed period: its server's restartpoints recycle the other site's timeline meanwhile.
    func checkSiteSpool(_ send: Send, _ report: inout CheckReport) {
        guard let siteSpool = send.siteSpool else {
            if send.standbyWait {
                report.add(
                    .warn(
                        "site spool",
                        "none: switching back, this sender asks pg_wal for what the other site wrote meanwhile, which restartpoints recycle",
                        hint: "site-spool = this site's walship receive spool (docs/switchover.md)"))
            }
            return
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: siteSpool, isDirectory: &isDirectory), isDirectory.boolValue,
            FileManager.default.isReadableFile(atPath: siteSpool)
        {
            report.add(.ok("site spool", "\(siteSpool) is readable"))
        } else {
            report.add(
                .fail(
                    "site spool", "\(siteSpool) is not a readable directory",
                    hint: "site-spool names this site's walship receive --spool"))
        }
    }

    /// With `archive` set: the archive's settings are usable (credentials, CA, keyring), and the store takes, returns
    /// and deletes a probe object under the prefix.
    func checkArchive(_ receive: Receive, _ report: inout CheckReport) async {
        guard receive.archive != nil else { return }
        let quiet = Logger(label: "walship.check") { _ in SwiftLogNoOpLogHandler() }
        let archiver: Archiver?
        do {
            archiver = try await receive.makeArchiver(spoolRoot: receive.spool, logger: quiet)
        } catch {
            report.add(.fail("archive", "\(error)"))
            return
        }
        guard let archiver else { return }
        if let keyring = archiver.configuration.keyring {
            report.add(
                .ok(
                    "archive encryption",
                    "keyring \(receive.encryptionKeyring ?? "from encryption-key-command") holds \(keyring.keys.count) key(s), new objects use \(keyring.currentID)",
                    hint: "keep an escrow copy of the keyring away from this host"))
        } else {
            report.add(
                .warn(
                    "archive encryption", "none: the object store can read the archived WAL and backups",
                    hint: "walship keys init FILE, then encryption-keyring = FILE"))
        }
        if let endpoint = receive.archiveEndpoint, endpoint.lowercased().hasPrefix("http://") {
            report.add(.warn("archive endpoint", "\(endpoint) is plain http", hint: "use https outside tests"))
        }
        for finding in await archiver.probeStore() {
            report.add(finding.ok ? .ok("archive", finding.message) : .fail("archive", finding.message))
        }
    }
}

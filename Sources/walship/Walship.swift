import ArgumentParser
import CBuildIdentity
import Foundation
import Logging
import Monitor
import Operations
import ServiceLifecycle
import ShipProtocol
import ShipTLS
import StatusModel
import Synchronization
import WALCore
import WalshipConfig

@main
struct Walship: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "walship",
        abstract: "Keep a PostgreSQL disaster-recovery site current to the last commit.",
        discussion: """
            The sender runs beside the primary and streams WAL through a replication slot to the receiver at the DR site, which stores it durably in a spool. See docs/runbook.md.
            """,
        version: versionText(protocolVersion: shipProtocolVersion, build: String(cString: walship_build_identity())),
        subcommands: [
            Send.self, Receive.self, Status.self, Certs.self, Promote.self, Drill.self, Backup.self, Backups.self, Restore.self,
            RestoreWAL.self, ExtractPartial.self, Prune.self, Check.self, Rejoin.self, Switchover.self, Standby.self, Keys.self,
            Verify.self,
        ])
}

/// Options every long-running command shares.
struct LoggingOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    @Option(
        help: ArgumentHelp(
            "Log lines as text, or as JSON objects with each walship.* metadata key a field (for journald and log collectors).",
            valueName: "text|json"))
    var logFormat: LogFormat = .text

    enum LogFormat: String, ExpressibleByArgument, CaseIterable {
        case text, json
    }

    /// For the operator's commands: their progress lines and diagnostics follow --log-format (JSON lines with the
    /// command as logger), and what they log through swift-log follows both options.
    func apply(command: String) {
        _ = bootstrap(label: "walship." + command.replacingOccurrences(of: " ", with: "."))
    }

    func bootstrap(label: String) -> Logger {
        let level = logLevel
        let format = logFormat
        OperatorOutput.configure(json: format == .json, label: label)
        LoggingSystem.bootstrap { name in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: name)
                handler.logLevel = level
                return handler
            case .json:
                var handler = JSONLogHandler(label: name)
                handler.logLevel = level
                return handler
            }
        }
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Options of both ends of the ship link. Their names are a contract shared by `send` and `receive`.
struct LinkOptions: ParsableArguments {
    @Option(help: "This end's certificate (PEM), signed by the CA of --tls-ca. walship certs init makes one for each end.")
    var tlsCert: String?

    @Option(help: "The private key of --tls-cert (PEM).")
    var tlsKey: String?

    @Option(name: .customLong("tls-ca"), help: "The CA (PEM) the other end's certificate must be signed by.")
    var tlsCA: String?

    @Flag(help: "No TLS on the ship link (plaintext). Required on both ends for a plaintext link; use only on a trusted network.")
    var insecure = false

    @Option(
        help:
            "Serve the dashboard (GET /), status JSON (GET /status) and Prometheus metrics (GET /metrics) on HOST:PORT. Read-only; bind to loopback unless you need it remote."
    )
    var statusListen: String?

    @Option(
        help: ArgumentHelp(
            "Silence after which the link is considered dead (and, at the receiver, may be replaced): seconds, or 30s, 2m.",
            valueName: "duration"))
    var linkTimeout = TimeSpan(seconds: 30)

    /// --link-timeout in whole seconds (validated).
    var linkTimeoutSeconds: Int { Int(linkTimeout.seconds) }

    func validate() throws {
        if let statusListen { _ = try parseEndpoint(statusListen, option: "--status-listen") }
        let given = [tlsCert, tlsKey, tlsCA].compactMap { $0 }
        if insecure {
            guard given.isEmpty else {
                throw ValidationError("--insecure and --tls-cert/--tls-key/--tls-ca exclude each other: choose TLS or plaintext")
            }
        } else {
            guard given.count == 3 else {
                throw ValidationError(
                    given.isEmpty
                        ? "the ship link uses mutual TLS: pass --tls-cert, --tls-key and --tls-ca (walship certs init DIR makes a set), or --insecure for plaintext on a network you trust"
                        : "TLS needs all three of --tls-cert, --tls-key and --tls-ca")
            }
        }
        guard linkTimeout.isWholeSeconds, (5...3600).contains(linkTimeout.seconds) else {
            throw ValidationError("--link-timeout must be whole seconds from 5 to 3600 (e.g. 30s, 2m), not \(linkTimeout)")
        }
    }

    /// The TLS files, or nil for a plaintext link.
    var tlsFiles: TLSFiles? {
        guard let tlsCert, let tlsKey, let tlsCA else { return nil }
        return TLSFiles(certificate: tlsCert, privateKey: tlsKey, authority: tlsCA)
    }

    /// The certificates the process uses (the link's, and the standby endpoint's if given), read once at start
    /// for its status and the certificate_expiry alert; nil when it uses none.
    func certificates(standbyCertificate: String? = nil) throws -> [StatusDocument.CertificateStatus]? {
        let files =
            (tlsFiles.map { [("link", $0.certificate), ("link CA", $0.authority)] } ?? [])
            + (standbyCertificate.map { [("standby endpoint", $0)] } ?? [])
        guard !files.isEmpty else { return nil }
        return try files.map { use, path in
            let validity = try certificateValidity(use: use, path: path)
            return .init(use: use, path: path, subject: validity.subject, notValidAfter: validity.notValidAfter)
        }
    }

    func warnIfPlaintext(_ logger: Logger) {
        if insecure { logger.warning("ship link runs without TLS (--insecure): WAL crosses the network in plaintext") }
    }
}

/// A size option whose plain numbers are not bytes (`--alert-memory-mb 512` is 512 MiB; `2G` also works).
func sizeArgument(plainUnit: UInt64) -> @Sendable (String) throws -> ByteSize {
    { text in
        do { return try ByteSize(parsing: text, plainUnit: plainUnit) } catch { throw ValidationError("\(error)") }
    }
}

/// A duration option whose plain numbers are not seconds (`--alert-certificate-days 30` is 30 days; `12h` also works).
func durationArgument(plainUnit: Double) -> @Sendable (String) throws -> TimeSpan {
    { text in
        do { return try TimeSpan(parsing: text, plainUnit: plainUnit) } catch { throw ValidationError("\(error)") }
    }
}

/// Where the operator's commands write progress (`say`) and diagnostics (`writeDiagnostic`): plain lines, or under
/// `--log-format json` JSON log lines (time, level, logger, message), so a scheduler collecting a command's output
/// gets one format.
enum OperatorOutput {
    private static let state = Mutex((json: false, label: "walship"))

    static func configure(json: Bool, label: String) { state.withLock { $0 = (json, label) } }

    static var current: (json: Bool, label: String) { state.withLock { $0 } }

    /// A diagnostic written as "walship COMMAND: LEVEL: message" becomes a JSON line with that level and message.
    static func jsonDiagnostic(_ text: String, label: String) -> String {
        var level = Logger.Level.error
        var message = text
        if let match = text.firstMatch(of: /^walship [a-z -]+: (error|warning|note): ((?s).*)$/) {
            level = match.output.1 == "warning" ? .warning : match.output.1 == "note" ? .notice : .error
            message = String(match.output.2)
        } else if let match = text.firstMatch(of: /^walship [a-z -]+: ((?s).*)$/) {
            message = String(match.output.1)
        }
        return JSONLogHandler.line(date: Date(), level: level, label: label, message: message, metadata: [:], source: "walship")
    }
}

/// A diagnostic on standard error, in the command's --log-format.
func writeDiagnostic(_ data: Data) {
    let output = OperatorOutput.current
    guard output.json else {
        FileHandle.standardError.write(data)
        return
    }
    let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
    JSONLogHandler.standardError(OperatorOutput.jsonDiagnostic(text, label: output.label))
}

/// Prints one clear line for a failure, instead of a stack of wrapped errors, and gives the exit status for its
/// kind: `kind` when the caller knows it (a failure before the command's work started is a set-up failure),
/// else the error's own.
func fail(_ command: String, _ error: any Error, kind: FailureKind? = nil) -> ExitCode {
    writeDiagnostic(Data("walship \(command): error: \(error)\n".utf8))
    return WalshipExit.code(for: kind ?? (error as? any ClassifiedFailure)?.failureKind ?? .runtime)
}

/// The exit statuses every command shares (docs/runbook.md, "Exit statuses"). `walship status` keeps Nagios's
/// 0–3, `walship check` exits 1 when a check fails, and `walship restore-wal` keeps what restore_command needs.
enum WalshipExit {
    /// A runtime failure: what had been set up correctly failed while working.
    static let runtimeFailure = ExitCode(1)
    /// A command line (or config file, or WALSHIP_* variable) that cannot be parsed or is contradictory; EX_USAGE.
    static let usage = ExitCode.validationFailure
    /// The set-up is wrong (a refused login, a missing privilege, a certificate that does not fit, a port in use,
    /// an unusable directory): starting again does not help until it is fixed; EX_CONFIG.
    static let setUp = ExitCode(78)

    static func code(for kind: FailureKind) -> ExitCode {
        switch kind {
        case .setUp: setUp
        case .runtime: runtimeFailure
        }
    }
}

/// Where alerts go and the thresholds both long-running commands share (see docs/monitoring.md).
struct AlertOptions: ParsableArguments {
    @OptionGroup var destinations: NoticeOptions

    @Option(
        help: ArgumentHelp("Alert when the link has been down this long: seconds, or 30s, 5m.", valueName: "duration"))
    var alertDisconnectSeconds: TimeSpan?

    @Option(
        help: ArgumentHelp(
            "Alert when this process uses more memory (resident) than this: MB (MiB), or 512M, 2G.", valueName: "size"),
        transform: sizeArgument(plainUnit: 1 << 20))
    var alertMemoryMb: ByteSize?

    @Option(
        help: ArgumentHelp(
            "How long a condition must stay clear before its recovery notice is sent (one incident, not a flood): seconds, or 30s, 5m.",
            valueName: "duration"))
    var alertRecoverySeconds = TimeSpan(seconds: 30)

    @Option(
        help: ArgumentHelp(
            "Alert when a TLS certificate this process uses expires within this long (critical within 7 days): days, or 12h; 0: never.",
            valueName: "duration"),
        transform: durationArgument(plainUnit: 86_400))
    var alertCertificateDays = TimeSpan(seconds: 30 * 86_400)

    func validate() throws {
        if let alertDisconnectSeconds, alertDisconnectSeconds.seconds <= 0 {
            throw ValidationError("--alert-disconnect-seconds must be positive")
        }
        if let alertMemoryMb, alertMemoryMb.bytes == 0 { throw ValidationError("--alert-memory-mb must be positive") }
    }

    var disconnectSeconds: Double? { alertDisconnectSeconds?.seconds }
    var memoryMB: Double? { alertMemoryMb.map { Double($0.bytes) / Double(1 << 20) } }
    var recoverySeconds: Double { alertRecoverySeconds.seconds }
    var certificateDays: Double? { alertCertificateDays.seconds > 0 ? alertCertificateDays.seconds / 86_400 : nil }

    func notifier(_ logger: Logger) -> AlertNotifier { destinations.notifier(logger) }
}

/// Where alerts and the success or failure notices of backup, drill and promote go.
struct NoticeOptions: ParsableArguments {
    @Option(help: "Run this shell command for every alert or notice; it gets the event as JSON on stdin.")
    var alertCommand: String?

    @Option(help: "POST every alert or notice as JSON to this http(s) URL.")
    var alertWebhook: String?

    func validate() throws {
        if let alertWebhook {
            guard let url = URL(string: alertWebhook), ["http", "https"].contains(url.scheme?.lowercased() ?? ""), url.host != nil
            else {
                throw ValidationError("--alert-webhook expects an http:// or https:// URL")
            }
        }
    }

    func notifier(_ label: String) -> AlertNotifier { notifier(Logger(label: label)) }

    func notifier(_ logger: Logger) -> AlertNotifier {
        AlertNotifier(command: alertCommand, webhook: alertWebhook.flatMap { URL(string: $0) }, logger: logger)
    }
}

/// Runs a command's services beside its monitor (alerts), and the status endpoint when `--status-listen` is given,
/// until one fails or SIGTERM/SIGINT stops them (`runUntilStopped`): a stop drains `services` first, in reverse
/// order, then the status endpoint and the monitor. A failure is reported as one clear line.
func runServices(
    _ command: String, _ services: [any Service], statusListen: String?, logger: Logger, monitor: StatusMonitor
) async throws {
    var all: [any Service] = [monitor]
    if let statusListen {
        let endpoint = try parseEndpoint(statusListen, option: "--status-listen")
        all.append(
            StatusServer(host: endpoint.host, port: endpoint.port, logger: logger, status: { monitor.current() }))
    }
    do {
        try await runUntilStopped(all + services, logger: logger)
    } catch {
        throw fail(command, error)
    }
}

func parseEndpoint(_ text: String, option: String) throws -> (host: String, port: Int) {
    guard let endpoint = Monitor.parseHostPort(text) else {
        throw ValidationError("\(option) expects HOST:PORT (for example 127.0.0.1:5433), got \"\(text)\"")
    }
    return endpoint
}

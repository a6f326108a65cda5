import Archive
import ArchiveCrypto
import ArgumentParser
import Foundation
import Logging
import Monitor
import ObjectStore
import Operations
import Receiver
import ServiceLifecycle
import ShipTLS
import Spool
import StatusModel
import WALCore
import WalSenderServer
import WalshipConfig

struct Receive: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive WAL at the DR site and store it durably in the spool.",
        discussion: """
            Accepts links from senders (one streaming link per source system), validates every WAL page, stores completed segments as DIR/<system-identifier>/wal/NAME.lz4 and acknowledges only what is fsynced.
            Example:
              walship receive --listen 0.0.0.0:7000 --spool /var/lib/walship \\
                --tls-cert /etc/walship/receiver.crt --tls-key /etc/walship/receiver.key --tls-ca /etc/walship/ca.crt
            """)

    @Option(help: "Address to accept senders on, HOST:PORT.")
    var listen: String

    @Option(help: "Spool directory (created if missing; one walship receive per spool).")
    var spool: String

    @Option(
        help: ArgumentHelp(
            "Most space the spool may take, e.g. 500G or 128M (k, M, G, T are powers of 1024; plain bytes also work). When a new segment would not fit, the receiver stops acknowledging as on a full disk, alerts (spool_free is then measured against this), and resumes once there is room. Default: the whole filesystem.",
            valueName: "size"))
    var spoolMaxBytes: ByteSize?

    @Option(help: "Serve WAL to stock PostgreSQL standbys on HOST:PORT (their primary_conninfo points here).")
    var standbyListen: String?

    @Flag(help: "Let standbys connect without a password. Only allowed when --standby-listen is a loopback address.")
    var standbyTrust = false

    @Option(
        help:
            "File holding the standbys' credential, checked with SCRAM-SHA-256: a verifier as in pg_authid (SCRAM-SHA-256$4096:...), or a password (what their primary_conninfo or .pgpass gives)."
    )
    var standbyPasswordFile: String?

    @Option(
        help:
            "Serve standbys over TLS with this certificate (PEM) and require it: their primary_conninfo then needs sslmode=require, or verify-full with sslrootcert. The receiver's own certificate from walship certs init will do."
    )
    var standbyTlsCert: String?

    @Option(help: "The private key of --standby-tls-cert (PEM).")
    var standbyTlsKey: String?

    @Option(
        help:
            "Complete base backups to keep; older ones, and WAL neither a kept backup nor a known standby needs, are pruned. With --retain-days, the least kept."
    )
    var retainBackups = 2

    @Option(
        help: ArgumentHelp(
            "Recovery window: keep every backup, and the WAL after it, needed to restore to any time in the last N days (e.g. 7, or 36h), besides --retain-backups.",
            valueName: "days"),
        transform: durationArgument(plainUnit: 86_400))
    var retainDays: TimeSpan?

    @Option(
        help:
            "CERTNAME=SYSTEMID: the sender whose certificate is named CERTNAME may ship database system SYSTEMID only (repeatable; with any given, unlisted certificates are refused)."
    )
    var allowSource: [String] = []

    @Flag(
        help:
            "Accept WAL for systems fenced by a promotion at the DR site (the old primary would extend the old timeline here). Only after deciding the fence is obsolete."
    )
    var force = false

    @Option(
        help: ArgumentHelp(
            "Alert when the DR site (replayed, else durable WAL) is this far behind the primary: seconds, or 30s, 5m.",
            valueName: "duration"))
    var alertLagSeconds: TimeSpan?

    @Option(
        help: ArgumentHelp(
            "Alert when the DR site is this much WAL behind the primary: bytes, or 64M, 1G (powers of 1024).", valueName: "size"))
    var alertLagBytes: ByteSize?

    @Option(
        help: ArgumentHelp(
            "Alert (backup_age) when a system's newest complete base backup is older than this, or none exists this long after the receiver started: seconds, or 26h, 8d.",
            valueName: "duration"))
    var alertBackupAge: TimeSpan?

    @Option(help: "Alert when the spool's file system has less than this percentage free.")
    var alertSpoolFreePercent: Double?

    @Option(
        help: ArgumentHelp(
            "Accept switchover requests (with --config whose [switchover] table describes this site) and requests for WAL from this spool (walship restore-wal --peer-control, for rejoin) from the peer site on HOST:PORT: mutual TLS with the link's certificates, for the one name --control-allow gives.",
            valueName: "host:port"))
    var controlListen: String?

    @Option(
        help: ArgumentHelp(
            "The one certificate name (the peer site's, from walship certs init --site) whose walship switchover may run this site's half.",
            valueName: "name"))
    var controlAllow: String?

    @Option(
        help: ArgumentHelp(
            "Copy completed segments, history files and complete base backups to S3-compatible object storage under s3://BUCKET/PREFIX, in the background (docs/archive.md). Needs --archive-endpoint.",
            valueName: "s3-url"))
    var archive: String?

    @Option(
        help: ArgumentHelp(
            "The object store's address, https://HOST[:PORT] (requests are path-style: on-premises stores addressed by IP work). http:// is accepted with a warning, for tests.",
            valueName: "url"))
    var archiveEndpoint: String?

    @Option(help: ArgumentHelp("The region requests are signed for (default: AWS_REGION, else us-east-1).", valueName: "region"))
    var archiveRegion: String?

    @Option(
        help: ArgumentHelp(
            "File with the store's credentials in the AWS credentials format ([default] with aws_access_key_id and aws_secret_access_key), readable by this user only. Default: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from the environment. Credentials are never taken from the command line.",
            valueName: "file"))
    var archiveCredentials: String?

    @Option(
        help: ArgumentHelp(
            "PEM file of the CA that signed the store's TLS certificate (default: the system's trust store). The certificate is always verified.",
            valueName: "file"))
    var archiveCa: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: encrypt everything archived client-side (AES-256-GCM) with this keyring's current key; walship keys init makes one. The store then sees names, sizes and times, nothing of the content.",
            valueName: "file"))
    var encryptionKeyring: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: a command (run with /bin/sh -c) that prints the keyring on standard output, e.g. from Vault or a KMS; instead of --encryption-keyring. Its output is never written to disk or logged.",
            valueName: "command"))
    var encryptionKeyCommand: String?

    @Option(
        help: ArgumentHelp(
            "With --archive: keep in the bucket what a recovery to any time in the last N days needs (the backups since, the newest one before, and the WAL from the oldest kept backup's start); older backups and WAL are deleted. Nothing is deleted while no complete backup is archived.",
            valueName: "days"))
    var archiveRetainDays: Int?

    @Option(
        help: ArgumentHelp(
            "With --archive: keep the newest N complete backups in the bucket and the WAL from the oldest one's start; older backups and WAL are deleted (with --archive-retain-days, what either keeps stays).",
            valueName: "count"))
    var archiveRetainBackups: Int?

    @Option(
        help: ArgumentHelp(
            "With --archive: files larger than this (base backups) go up in parts of this size, each verified by the store: 5M or more, e.g. 16M. Default 64M.",
            valueName: "size"))
    var archivePartSize: ByteSize?

    @Option(
        help: ArgumentHelp(
            "With --archive: alert (archive_lag_seconds) when the oldest segment not yet in the object store was completed longer ago than this: seconds, or 10m, 1h. Default 15m.",
            valueName: "duration"))
    var alertArchiveLagSeconds: TimeSpan?

    @OptionGroup var link: LinkOptions
    @OptionGroup var alerts: AlertOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var configFile: ConfigFileOptions

    func validate() throws {
        _ = try parseEndpoint(listen, option: "--listen")
        if spoolMaxBytes?.bytes == 0 { throw ValidationError("--spool-max-bytes must be more than 0 (e.g. 500G)") }
        try validateRetention()
        try validateAlerts()
        _ = try allowedSources()
        try validateArchive()
        if !allowSource.isEmpty && link.insecure {
            throw ValidationError("--allow-source needs TLS: certificate names are only known with --tls-cert/--tls-key/--tls-ca")
        }
        if let standbyListen {
            let endpoint = try parseEndpoint(standbyListen, option: "--standby-listen")
            switch (standbyTrust, standbyPasswordFile) {
            case (false, nil):
                throw ValidationError(
                    "--standby-listen needs --standby-password-file FILE (or --standby-trust on a loopback address)")
            case (true, .some):
                throw ValidationError("--standby-trust and --standby-password-file exclude each other")
            case (true, nil):
                guard ["127.0.0.1", "localhost", "::1"].contains(endpoint.host) || endpoint.host.hasPrefix("127.") else {
                    throw ValidationError(
                        "--standby-trust is allowed only on a loopback --standby-listen address, not \(endpoint.host); use --standby-password-file"
                    )
                }
            case (false, .some):
                break
            }
        } else if standbyTrust || standbyPasswordFile != nil || standbyTlsCert != nil || standbyTlsKey != nil {
            throw ValidationError(
                "--standby-trust, --standby-password-file and --standby-tls-cert/--standby-tls-key need --standby-listen")
        }
        guard (standbyTlsCert == nil) == (standbyTlsKey == nil) else {
            throw ValidationError("standby TLS needs both --standby-tls-cert and --standby-tls-key")
        }
        try validateControl()
    }

    func validateControl() throws {
        guard let controlListen else {
            if controlAllow != nil { throw ValidationError("--control-allow goes with --control-listen") }
            return
        }
        _ = try parseEndpoint(controlListen, option: "--control-listen")
        guard let controlAllow, !controlAllow.isEmpty else {
            throw ValidationError(
                "--control-listen needs --control-allow NAME: the peer site's certificate name, the only one that may request a switchover"
            )
        }
        if link.insecure || link.tlsCert == nil {
            throw ValidationError(
                "--control-listen needs the link's TLS (--tls-cert, --tls-key, --tls-ca): requests are authorised by the peer's certificate name"
            )
        }
    }

    /// The peer's switchover requests, answered with this site's half as `walship switchover --config FILE` would run
    /// it here.
    func controlServer(root: String, logger: Logger) throws -> SwitchoverControlServer? {
        guard let controlListen, let controlAllow, let tls = link.tlsFiles else { return nil }
        let endpoint = try parseEndpoint(controlListen, option: "--control-listen")
        let environment = ProcessInfo.processInfo.environment
        let configPath = WalshipConfiguration.path(in: CommandLine.arguments, environment: environment)
        // Read now, so a [switchover] table that cannot work stops the receiver at start, not at the first request.
        // Without one the endpoint serves only WAL from the spool.
        var halfCommand: Switchover?
        if let configPath, (try? ConfigFile.load(path: configPath))?.tables["switchover"] != nil {
            do {
                let expanded = try WalshipConfiguration.expand(
                    role: "switchover", arguments: ["--config", configPath], environment: environment)
                let command = try Switchover.parse(expanded.arguments)
                _ = try command.makeRequest(configPath: configPath, environment: environment)
                halfCommand = command
            } catch {
                throw ValidationError(
                    "--control-listen: \(configPath) does not describe this site's switchover half: \(Switchover.message(for: error)) (hint: walship switchover --config \(configPath) --dry-run shows what it reads)"
                )
            }
        }
        let dataDirectory = halfCommand?.pgdata
        let configured = halfCommand
        return SwitchoverControlServer(
            host: endpoint.host, port: endpoint.port, tls: try tls.serverContext(), allowedName: controlAllow, logger: logger,
            identify: {
                guard let dataDirectory else { return nil }
                return (try? await switchoverRole(dataDirectory: dataDirectory)).map { String($0.system) }
            },
            audit: { system, fields in
                do { try ModeHistory.recordEvent(fields, system: system, root: root) } catch {
                    logger.error(
                        "cannot write a switchover request to the audit log", metadata: ["walship.error": "\(error)"])
                }
            },
            perform: { request, emit in
                do {
                    if request.action == .wal { return try serveWAL(request, root: root, emit: emit) }
                    guard let halfCommand = configured, let dataDirectory, let configPath else {
                        return SwitchoverControlAnswer(
                            refused:
                                "this site's walship receive has no [switchover] table in its --config, so it does not know its server: it serves WAL only (hint: add [switchover] pgdata = … to its configuration file and restart it)"
                        )
                    }
                    if request.action == .check {
                        let local = try await switchoverRole(dataDirectory: dataDirectory)
                        return SwitchoverControlAnswer(role: local.role, systemIdentifier: String(local.system))
                    }
                    var half = try halfCommand.makeRequest(configPath: configPath, environment: environment)
                    half.dryRun = request.dryRun
                    half.shutdownCheckpoint = request.shutdownCheckpoint.flatMap { LSN($0) }
                    half.expectedRole = request.action == .demote ? .demote : .promote
                    let (report, base) = await Operations.switchover(half) { emit(SwitchoverControlAnswer(progress: $0)) }
                    let written = try? report.write(base: base)
                    return SwitchoverControlAnswer(report: report, reportPath: written?.json)
                } catch {
                    return SwitchoverControlAnswer(refused: "\(error)")
                }
            })
    }

    /// A WAL segment or history file from this site's spool, as restore-wal would write it, in base64 pieces.
    func serveWAL(
        _ request: SwitchoverControlRequest, root: String, emit: @Sendable (SwitchoverControlAnswer) -> Void
    ) throws -> SwitchoverControlAnswer {
        guard let name = request.name, name.wholeMatch(of: /[0-9A-F]{24}/) != nil || timeline(ofHistoryFileName: name) != nil
        else {
            return SwitchoverControlAnswer(refused: "\(request.name ?? "no name") is not a WAL segment or history file name")
        }
        let system = try request.system.map {
            guard let id = UInt64($0) else { throw ValidationError("\($0) is not a system identifier") }
            return id
        }
        guard let reader = try SpoolReader.openIfPresent(root: root, system: system), let file = try reader.contents(of: name)
        else { return SwitchoverControlAnswer(missing: true) }
        // The file as restore-wal would write it, zeros after an in-progress segment's WAL included.
        let contents = file.contents
        var crc: UInt32 = 0
        for start in stride(from: 0, to: contents.count, by: 1 << 20) {
            let piece = contents[start..<min(start + (1 << 20), contents.count)]
            crc = piece.withUnsafeBytes { CRC32C.update(crc, $0) }
            emit(SwitchoverControlAnswer(data: Data(piece).base64EncodedString()))
        }
        return SwitchoverControlAnswer(walSize: contents.count, walCRC32C: crc)
    }

    func allowedSources() throws -> [String: UInt64] {
        var bound: [String: UInt64] = [:]
        for entry in allowSource {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let system = UInt64(parts[1]) else {
                throw ValidationError(
                    "--allow-source expects CERTNAME=SYSTEMID (the system identifier from pg_control_system()), got \"\(entry)\"")
            }
            guard bound[parts[0]] == nil else { throw ValidationError("--allow-source names \(parts[0]) twice") }
            bound[parts[0]] = system
        }
        return bound
    }

    func validateArchive() throws {
        guard let archive else {
            if archiveEndpoint != nil || archiveRegion != nil || archiveCredentials != nil || archiveCa != nil
                || alertArchiveLagSeconds != nil || archivePartSize != nil || encryptionKeyring != nil
                || encryptionKeyCommand != nil || archiveRetainDays != nil || archiveRetainBackups != nil
            {
                throw ValidationError(
                    "--archive-endpoint, --archive-region, --archive-credentials, --archive-ca, --archive-part-size, --encryption-keyring, --encryption-key-command, --archive-retain-days, --archive-retain-backups and --alert-archive-lag-seconds need --archive s3://BUCKET/PREFIX"
                )
            }
            return
        }
        try validateKeySource(file: encryptionKeyring, command: encryptionKeyCommand)
        do {
            _ = try ArchiveConfiguration(url: archive)
            guard let archiveEndpoint else {
                throw ValidationError(
                    "--archive needs --archive-endpoint URL: the object store's address (e.g. https://s3.example.org, or https://s3.eu-central-1.amazonaws.com)"
                )
            }
            _ = try S3Endpoint(parsing: archiveEndpoint)
        } catch let error as S3ConfigurationError {
            throw ValidationError(error.description)
        }
        if let part = archivePartSize, part.bytes < 5 << 20 || part.bytes > 5 << 30 {
            throw ValidationError("--archive-part-size must be between 5M and 5G (S3's limits for a part)")
        }
        if let days = archiveRetainDays, days < 1 {
            throw ValidationError("--archive-retain-days must be at least 1 (days of recovery window the bucket keeps)")
        }
        if let count = archiveRetainBackups, count < 1 {
            throw ValidationError("--archive-retain-backups must be at least 1 (the newest backup always stays)")
        }
        if let lag = alertArchiveLagSeconds, lag.seconds <= 0 {
            throw ValidationError("--alert-archive-lag-seconds must be positive (e.g. 15m)")
        }
    }

    /// The archiver, or nil without --archive. Credentials come from --archive-credentials or the environment,
    /// never from the command line, and are never logged.
    func makeArchiver(spoolRoot: String, logger: Logger) async throws -> Archiver? {
        guard let archive, let archiveEndpoint else { return nil }
        // The keyring first: a client made is a client to shut down.
        let keyring = try await resolveKeyring(file: encryptionKeyring, command: encryptionKeyCommand)
        let (client, layout) = try archiveStore(
            url: archive, endpoint: archiveEndpoint, region: archiveRegion, credentialsFile: archiveCredentials,
            caFile: archiveCa)
        var configuration = layout
        if let archivePartSize { configuration.partSize = Int(archivePartSize.bytes) }
        configuration.retention = ArchiveRetentionPolicy(days: archiveRetainDays, backups: archiveRetainBackups)
        if let keyring {
            configuration.keyring = keyring
            logger.info(
                "the archive is encrypted client-side",
                metadata: [
                    "walship.keyring": "\(encryptionKeyring ?? "from --encryption-key-command")",
                    "walship.key": "\(keyring.currentID)",
                ])
        } else {
            logger.warning(
                "the archive is not encrypted: the object store can read the WAL and backups (give --encryption-keyring; docs/security.md)"
            )
        }
        let endpoint = try S3Endpoint(parsing: archiveEndpoint)
        if !endpoint.isTLS {
            logger.warning(
                "the archive's endpoint is plain http: WAL and credentials' signatures cross the network unencrypted (use https outside tests)",
                metadata: ["walship.endpoint": "\(endpoint.description)"])
        }
        return Archiver(configuration: configuration, client: client, spoolRoot: spoolRoot, logger: logger)
    }

    func validateAlerts() throws {
        if let p = alertSpoolFreePercent, !(0...100).contains(p) {
            throw ValidationError("--alert-spool-free-percent must be 0...100")
        }
        if let s = alertLagSeconds, s.seconds <= 0 { throw ValidationError("--alert-lag-seconds must be positive") }
        if let age = alertBackupAge, age.seconds <= 0 { throw ValidationError("--alert-backup-age must be positive (e.g. 26h)") }
    }

    func validateRetention() throws {
        guard retainBackups >= 1 else { throw ValidationError("--retain-backups must be at least 1") }
        if let retainDays, retainDays.seconds <= 0 { throw ValidationError("--retain-days must be positive (e.g. 7)") }
    }

    /// The standby credential: a file holding a SCRAM-SHA-256 verifier as pg_authid stores it (so no
    /// plaintext password sits on the DR host), or a password from which one is derived at start.
    func standbyAuthentication() throws -> StandbyAuthentication {
        guard let standbyPasswordFile else { return .trust }
        guard let text = try? String(contentsOfFile: standbyPasswordFile, encoding: .utf8) else {
            throw ValidationError(
                "cannot read --standby-password-file \(standbyPasswordFile) (hint: check that it exists and this user can read it)"
            )
        }
        let secret = text.trimmingCharacters(in: .newlines)
        guard !secret.isEmpty else { throw ValidationError("--standby-password-file \(standbyPasswordFile) is empty") }
        if secret.hasPrefix("SCRAM-SHA-256$") {
            guard let verifier = SCRAMVerifier(parsing: secret) else {
                throw ValidationError(
                    "--standby-password-file \(standbyPasswordFile) holds a malformed SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, as in pg_authid)"
                )
            }
            return .scram(verifier)
        }
        return .scram(SCRAMVerifier(password: secret, salt: (0..<16).map { _ in UInt8.random(in: 0...255) }))
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "walship.receive")
        let endpoint = try parseEndpoint(listen, option: "--listen")
        let root = spool.hasPrefix("/") ? spool : FileManager.default.currentDirectoryPath + "/" + spool
        link.warnIfPlaintext(logger)
        var configuration = ReceiverConfiguration(
            listenHost: endpoint.host, listenPort: endpoint.port, spoolRoot: root,
            name: ProcessInfo.processInfo.hostName)
        configuration.linkTimeout = .seconds(link.linkTimeoutSeconds)
        configuration.retainBackups = retainBackups
        configuration.recoveryWindow = retainDays?.seconds
        configuration.spoolQuota = spoolMaxBytes?.bytes
        configuration.standbyListen = standbyListen
        configuration.acceptFenced = force
        configuration.allowedSources = try allowedSources()
        #if DEBUG
        if let faults = StorageFaultFileSystem.fromEnvironment(report: { logger.warning("test storage fault: \($0)") }) {
            logger.warning("test build: the spool's storage fails as \(StorageFaultFileSystem.environmentVariable) says")
            configuration.fileSystem = faults
        }
        #endif
        do {
            configuration.tls = try link.tlsFiles?.serverContext()
        } catch {
            throw fail("receive", error, kind: .setUp)
        }
        let archiver: Archiver?
        do {
            archiver = try await makeArchiver(spoolRoot: root, logger: logger)
        } catch {
            throw fail("receive", error, kind: .setUp)
        }
        if let archiver {
            // The spool never prunes what the object store has not confirmed.
            configuration.archiveHold = { archiver.hold(system: $0) }
        }
        let receiver: Receiver
        var standbyServer: WalSenderServer?
        do {
            receiver = try Receiver(configuration: configuration, logger: logger)
            if let standbyListen {
                let endpoint = try parseEndpoint(standbyListen, option: "--standby-listen")
                let tls = try standbyTlsCert.map {
                    try TLSFiles.standbyServerContext(certificate: $0, privateKey: standbyTlsKey ?? "")
                }
                standbyServer = WalSenderServer(
                    host: endpoint.host, port: endpoint.port, spool: receiver.spool,
                    authentication: try standbyAuthentication(), tls: tls, logger: logger)
            }
        } catch {
            throw fail("receive", error, kind: .setUp)
        }
        let standbys = standbyServer
        receiver.setStandbyProvider { system in
            (standbys?.standbys(system: system) ?? []).map {
                StandbyReport(
                    name: $0.applicationName, connected: $0.connected, replayed: $0.applied, reportedAt: $0.reportedAt,
                    recordName: $0.recordName)
            }
        }
        let certificates: [StatusDocument.CertificateStatus]?
        do { certificates = try link.certificates(standbyCertificate: standbyTlsCert) } catch {
            throw fail("receive", error, kind: .setUp)
        }
        let thresholds = AlertThresholds(
            lagSeconds: alertLagSeconds?.seconds, lagBytes: alertLagBytes?.bytes,
            disconnectSeconds: alerts.disconnectSeconds,
            spoolFreePercent: alertSpoolFreePercent, memoryMB: alerts.memoryMB,
            certificateDays: alerts.certificateDays, backupAgeSeconds: alertBackupAge?.seconds,
            archiveLagSeconds: archiver == nil ? nil : alertArchiveLagSeconds?.seconds ?? 900)
        let monitor = StatusMonitor(
            role: "receiver", thresholds: thresholds, notifier: alerts.notifier(logger),
            recoverAfterSeconds: alerts.recoverySeconds,
            base: {
                var status = receiver.status
                status.certificates = certificates
                archiver?.annotate(&status)
                return status
            })
        let control: SwitchoverControlServer?
        do { control = try controlServer(root: root, logger: logger) } catch {
            throw fail("receive", error, kind: .setUp)
        }
        // Stopped in reverse: the control endpoint and the standby endpoint close first, then the receiver drains its
        // links.
        var services: [any Service] = [receiver]
        if let standbys { services.append(standbys) }
        if let control { services.append(control) }
        // Stopped first: an upload in flight is abandoned and redone at the next start.
        if let archiver { services.append(archiver) }
        try await runServices("receive", services, statusListen: link.statusListen, logger: logger, monitor: monitor)
    }
}

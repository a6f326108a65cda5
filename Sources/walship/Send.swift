import ArgumentParser
import Logging
import Monitor
import PGReplication
import Sender
import ShipTLS
import StatusModel
import WALCore
import WalshipConfig

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stream WAL from the primary to the receiver (runs beside the primary).",
        discussion: """
            Connects to the primary with a physical replication slot, ships WAL LZ4-compressed to the receiver, and reports to the primary only what the receiver has written and fsynced. With --sync and the primary's synchronous_standby_names naming --application-name, commits wait until their WAL is on the DR site's disk.
            Example:
              walship send --source "host=/var/run/postgresql user=walship" --to dr.example:7000 --slot walship --create-slot \\
                --tls-cert /etc/walship/sender.crt --tls-key /etc/walship/sender.key --tls-ca /etc/walship/ca.crt
            """)

    @Option(help: "libpq connection string of the primary (PG* environment variables are honoured).")
    var source: String

    @Option(help: "The receiver, HOST:PORT.")
    var to: String

    @Option(help: "Physical replication slot on the primary.")
    var slot: String

    @Flag(help: "Create the physical slot if it is missing (reuses an existing physical slot).")
    var createSlot = false

    @Option(help: "Name this sender shows in pg_stat_replication; what synchronous_standby_names must name for --sync.")
    var applicationName = "walship"

    @Flag(
        help:
            "Synchronous mode: checks that the primary's synchronous_standby_names names --application-name (so commits wait until their WAL is fsynced at the DR site) and warns if not."
    )
    var sync = false

    @Flag(
        help:
            "While the source is a standby, wait (state 'waiting for promotion') and start shipping once it is promoted, instead of streaming from the standby: for a site that runs both ends (docs/switchover.md)."
    )
    var standbyWait = false

    @Option(
        help: ArgumentHelp(
            "The spool of this site's own walship receive, read only: WAL of a timeline the primary has left (written by the other site while it was the primary's) is shipped from there, not from pg_wal, which recycles it (docs/switchover.md).",
            valueName: "dir"))
    var siteSpool: String?

    @Option(
        help: ArgumentHelp(
            "Longest wait between reconnection attempts (the wait doubles from 1 s): whole seconds, or 30s, 2m.",
            valueName: "duration"))
    var retryMaxSeconds = TimeSpan(seconds: 30)

    @Option(
        help: ArgumentHelp(
            "Time between checks of the slot's retained WAL on the primary: whole seconds, or 10s, 1m.", valueName: "duration"))
    var slotCheckInterval = TimeSpan(seconds: 10)

    @Option(
        help: ArgumentHelp(
            "Alert when the primary holds more than this much WAL for the slot (a full pg_wal stops the primary): bytes, or 512M, 10G (powers of 1024).",
            valueName: "size"))
    var alertSlotRetainedBytes: ByteSize?

    @Option(
        help: ArgumentHelp(
            "With --sync: how long the primary may treat this sender as not synchronous (pg_stat_replication.sync_state) before the critical sync_not_honoured alert: seconds, or 30s, 2m.",
            valueName: "duration"))
    var alertSyncGraceSeconds = TimeSpan(seconds: 30)

    @Option(help: "The name the receiver's certificate must carry, when it differs from the host in --to.")
    var tlsServerName: String?

    @Option(
        help: ArgumentHelp(
            "With --sync, what happens while the DR site cannot take WAL: block (commits wait, RPO stays 0) or degrade-after=DURATION (e.g. 30s, 5m: then commits are acknowledged from --buffer-dir so the primary keeps working; RPO exposure is reported and alerted).",
            valueName: "policy"))
    var onReceiverLoss = "block"

    @Option(
        help:
            "Local durable buffer for --on-receiver-loss degrade-after: WAL acknowledged while the DR site is unreachable is kept here until the receiver has it. Put it on durable storage, ideally not the primary's pg_wal disk."
    )
    var bufferDir: String?

    @Option(
        help: ArgumentHelp(
            "How hard WAL is compressed for the link: auto (LZ4HC, about 15 % fewer bytes at several times the CPU, only while frames queue behind a link slower than the sender; fast LZ4 otherwise), fast (always fast LZ4) or high (always LZ4HC).",
            valueName: "auto|fast|high"))
    var compression = "auto"

    @OptionGroup var link: LinkOptions
    @OptionGroup var alerts: AlertOptions
    @OptionGroup var logging: LoggingOptions
    @OptionGroup var configFile: ConfigFileOptions

    func validate() throws {
        _ = try parseEndpoint(to, option: "--to")
        guard !slot.isEmpty, slot.allSatisfy({ $0.isLetter && $0.isLowercase || $0.isNumber || $0 == "_" }),
            slot.first?.isNumber == false
        else {
            throw ValidationError("--slot \"\(slot)\" is not a valid slot name (lower-case letters, digits and underscores)")
        }
        _ = try compressionMode(compression)
        for (name, span) in [("--retry-max-seconds", retryMaxSeconds), ("--slot-check-interval", slotCheckInterval)]
        where !span.isWholeSeconds {
            throw ValidationError("\(name) takes whole seconds (e.g. 30s, 2m), not \(span)")
        }
        let policy: ReceiverLossPolicy
        do { policy = try ReceiverLossPolicy(parsing: onReceiverLoss) } catch {
            throw ValidationError("--on-receiver-loss: \(error)")
        }
        if case .degradeAfter = policy {
            guard sync else {
                throw ValidationError(
                    "--on-receiver-loss degrade-after only applies with --sync: without it commits never wait for the DR site")
            }
            guard bufferDir != nil else {
                throw ValidationError(
                    "--on-receiver-loss degrade-after needs --buffer-dir DIR, durable local storage for WAL acknowledged while the DR site is unreachable"
                )
            }
        } else if bufferDir != nil {
            throw ValidationError("--buffer-dir is only used with --on-receiver-loss degrade-after=DURATION")
        }
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "walship.send")
        let conninfo: Conninfo
        do { conninfo = try Conninfo(source) } catch { throw fail("send", error, kind: .setUp) }
        let receiver = try parseEndpoint(to, option: "--to")
        link.warnIfPlaintext(logger)
        var configuration = SenderConfiguration(
            source: conninfo, receiverHost: receiver.host, receiverPort: receiver.port, slot: slot,
            createSlot: createSlot, applicationName: applicationName, synchronous: sync)
        configuration.linkTimeout = .seconds(link.linkTimeoutSeconds)
        configuration.keepaliveInterval = .seconds(max(1, link.linkTimeoutSeconds / 6))
        configuration.slotCheckInterval = .seconds(max(1, Int(slotCheckInterval.seconds)))
        configuration.maxBackoff = .seconds(max(1, Int(retryMaxSeconds.seconds)))
        configuration.receiverLoss = try ReceiverLossPolicy(parsing: onReceiverLoss)
        configuration.bufferDirectory = bufferDir
        configuration.standbyWait = standbyWait
        configuration.siteSpool = siteSpool
        configuration.compression = try compressionMode(compression)
        do {
            configuration.tls = try link.tlsFiles.map { ClientTLS(context: try $0.clientContext(), serverName: tlsServerName) }
        } catch {
            throw fail("send", error, kind: .setUp)
        }
        let sender: Sender
        do { sender = try Sender(configuration: configuration, logger: logger) } catch { throw fail("send", error) }
        let certificates: [StatusDocument.CertificateStatus]?
        do { certificates = try link.certificates() } catch { throw fail("send", error, kind: .setUp) }
        let thresholds = AlertThresholds(
            disconnectSeconds: alerts.disconnectSeconds, memoryMB: alerts.memoryMB,
            slotRetainedBytes: alertSlotRetainedBytes.map { Int64($0.bytes) }, certificateDays: alerts.certificateDays,
            syncNotHonouredSeconds: sync ? alertSyncGraceSeconds.seconds : nil)
        let monitor = StatusMonitor(
            role: "sender", thresholds: thresholds, notifier: alerts.notifier(logger),
            recoverAfterSeconds: alerts.recoverySeconds,
            base: {
                var status = sender.status
                status.certificates = certificates
                return status
            })
        try await runServices("send", [sender], statusListen: link.statusListen, logger: logger, monitor: monitor)
    }
}

/// `--compression` of send and backup.
func compressionMode(_ text: String) throws -> CompressionPolicy.Mode {
    guard let mode = CompressionPolicy.Mode(rawValue: text) else {
        throw ValidationError("--compression must be auto, fast or high, not \"\(text)\"")
    }
    return mode
}

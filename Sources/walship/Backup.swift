import ArchiveCrypto
import ArgumentParser
import Foundation
import Logging
import Monitor
import PGReplication
import Sender
import ShipTLS
import Spool
import StatusModel
import Synchronization
import WALCore

struct Backup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a base backup of the primary and store it at the receiver, through the link.",
        discussion: """
            Runs BASE_BACKUP on the primary and ships the data directory LZ4-compressed to the receiver, which stores it under SPOOL/<system-identifier>/base/<backup-id>/. The backup is complete once the spool durably holds the WAL from its start to its stop LSN, which the running walship send delivers; this command waits for that.
            Example:
              walship backup --source "host=/var/run/postgresql user=walship" --to dr.example:7000 --tls-cert sender.crt --tls-key sender.key --tls-ca ca.crt
            """)

    @OptionGroup var configFile: ConfigFileOptions

    @Option(help: "libpq connection string of the primary.")
    var source: String

    @Option(help: "The receiver, HOST:PORT.")
    var to: String

    @Option(help: "Label recorded in the backup.")
    var label = "walship base backup"

    @Option(
        help: ArgumentHelp(
            "How hard the data directory is compressed for the link: auto (LZ4HC, about a tenth fewer bytes at several times the CPU, only while pieces queue behind a link slower than this machine compresses; fast LZ4 otherwise), fast or high.",
            valueName: "auto|fast|high"))
    var compression = "auto"

    @Option(
        help: ArgumentHelp(
            "Take the backup only when the receiver's newest complete backup of this system is older than this (for a timer or cron job): seconds, or 24h, 7d. Needs --receiver-status.",
            valueName: "duration"))
    var ifOlderThan: TimeSpan?

    @Option(
        help: ArgumentHelp(
            "The receiver's status endpoint (its --status-listen), e.g. http://dr.example:7001: where --if-older-than learns the newest backup's age.",
            valueName: "url"))
    var receiverStatus: String?

    @OptionGroup var link: LinkOptions
    @OptionGroup var notice: NoticeOptions
    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try parseEndpoint(to, option: "--to")
        _ = try compressionMode(compression)
        if let ifOlderThan, ifOlderThan.seconds <= 0 { throw ValidationError("--if-older-than must be positive (e.g. 24h)") }
        switch (ifOlderThan, receiverStatus) {
        case (.some, nil):
            throw ValidationError(
                "--if-older-than needs --receiver-status URL, the receiver's --status-listen (e.g. http://dr.example:7001), to learn the newest backup's age"
            )
        case (nil, .some):
            throw ValidationError("--receiver-status is only used with --if-older-than")
        case (_, let url?) where Status.statusURL(url) == nil:
            throw ValidationError("--receiver-status expects http://HOST:PORT (the receiver's --status-listen), got \"\(url)\"")
        default:
            break
        }
    }

    /// With --if-older-than: asks the receiver's status endpoint for the system's newest complete backup. A status
    /// that cannot be read does not stop the backup: one backup too many is harmless, one missing is not.
    func skipWhenRecent() -> (@Sendable (UInt64) async -> String?)? {
        guard let maxAge = ifOlderThan?.seconds, let url = receiverStatus.flatMap(Status.statusURL) else { return nil }
        return { system in
            let status: StatusDocument
            do {
                let data = try await fetchStatusData(url, timeout: 10)
                status = try StatusDocument.decoder().decode(StatusDocument.self, from: data)
            } catch {
                print("cannot read the receiver's status at \(url) (\(error)): taking a backup")
                return nil
            }
            switch BackupSchedule.decide(status: status, system: String(system), maxAge: maxAge, now: Date()) {
            case .skip(let line):
                return line
            case .take(let line):
                print(line)
                return nil
            }
        }
    }

    func run() async throws {
        let logger = logging.bootstrap(label: "walship.backup")
        link.warnIfPlaintext(logger)
        let receiver = try parseEndpoint(to, option: "--to")
        do {
            var shipper = BackupShipper(
                source: try Conninfo(source), receiverHost: receiver.host, receiverPort: receiver.port,
                label: label, logger: logger)
            shipper.linkTimeout = .seconds(link.linkTimeoutSeconds)
            shipper.compression = try compressionMode(compression)
            shipper.tls = try link.tlsFiles.map { ClientTLS(context: try $0.clientContext(), serverName: nil) }
            shipper.reasonToSkip = skipWhenRecent()
            let display = ProgressDisplay(terminal: isatty(STDOUT_FILENO) == 1)
            let outcome = try await shipper.run { display.show($0) }
            display.finish()
            let message =
                "backup \(outcome.id) complete: start \(outcome.start), stop \(outcome.stop), \(formatBytes(outcome.archiveBytes)) of data directory"
                + " sent as \(formatBytes(outcome.compressedBytes)) (\(outcome.highCompressionPieces) of \(outcome.pieces) pieces LZ4HC)"
            print(message)
            await StatusMonitor.notice(
                .success, condition: "backup", role: "backup", system: nil, message: message,
                details: ["backup": outcome.id, "stop_lsn": outcome.stop.description], notifier: notice.notifier("walship.backup")
            )
        } catch let skipped as BackupSkipped {
            print(skipped.reason)
        } catch {
            await StatusMonitor.notice(
                .failure, condition: "backup", role: "backup", system: nil, message: "backup failed: \(error)",
                details: [:], notifier: notice.notifier("walship.backup"))
            throw fail("backup", error)
        }
    }
}

/// A progress bar with rate and ETA on a terminal; a plain line every 10 % otherwise.
final class ProgressDisplay: Sendable {
    let terminal: Bool
    private let state = Mutex<(startedAt: Date, lastDecile: Int, lastDraw: Date)>((Date(), -1, .distantPast))

    init(terminal: Bool) { self.terminal = terminal }

    func show(_ progress: BackupShipper.Progress) {
        switch progress {
        case .started(let start, let estimated):
            state.withLock { $0.startedAt = Date() }
            print("backup started at \(start); about \(formatBytes(estimated)) to copy")
        case .sent(let bytes, let estimated):
            let (startedAt, lastDecile, lastDraw) = state.withLock { ($0.startedAt, $0.lastDecile, $0.lastDraw) }
            let fraction = estimated > 0 ? min(1, Double(bytes) / Double(estimated)) : 0
            let elapsed = max(0.001, Date().timeIntervalSince(startedAt))
            let rate = Double(bytes) / elapsed
            let eta = rate > 0 && estimated > bytes ? Double(estimated - bytes) / rate : 0
            if terminal {
                guard Date().timeIntervalSince(lastDraw) > 0.2 || fraction >= 1 else { return }
                state.withLock { $0.lastDraw = Date() }
                let width = 30
                let filled = Int(fraction * Double(width))
                let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
                let line = String(
                    format: "\r[%@] %3.0f%%  %@/s  ETA %d:%02d", bar, fraction * 100, formatBytes(UInt64(rate)),
                    Int(eta) / 60, Int(eta) % 60)
                FileHandle.standardOutput.write(Data(line.utf8))
            } else {
                let decile = Int(fraction * 10)
                guard decile > lastDecile else { return }
                state.withLock { $0.lastDecile = decile }
                print("\(decile * 10)% (\(formatBytes(bytes)) of \(formatBytes(estimated)), \(formatBytes(UInt64(rate)))/s)")
            }
        case .waitingForWAL(let durable, let stop):
            if terminal { FileHandle.standardOutput.write(Data("\n".utf8)) }
            print("stored; waiting for the stream to bring WAL to \(stop) (the spool is durable to \(durable))")
        case .stored:
            break
        }
    }

    func finish() { if terminal { FileHandle.standardOutput.write(Data("\n".utf8)) } }
}

struct Backups: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the base backups stored in a spool.",
        discussion: """
            With --archive instead of --spool, the complete base backups in the object store walship receive --archive fills (a backup's record is uploaded only once its archive and manifest are confirmed there).
            """)

    @Option(help: "Spool directory of walship receive (or --archive).")
    var spool: String?

    @Option(help: "Only this system identifier.")
    var system: UInt64?

    @Flag(help: "JSON for scripts.")
    var json = false

    @OptionGroup var archive: ArchiveReadOptions

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (spool == nil) != (archive.archive == nil) else {
            throw ValidationError("give either --spool DIR or --archive s3://BUCKET/PREFIX")
        }
    }

    /// The complete backups whose record is in the archive, opened with the keyring when sealed.
    func archivedBackups() async throws -> [BackupInfo] {
        let (client, layout, keyring) = try await archive.open()
        let outcome: Result<[BackupInfo], any Error>
        do {
            outcome = .success(try await listArchivedBackups(client: client, layout: layout, keyring: keyring, system: system))
        } catch {
            outcome = .failure(error)
        }
        try? await client.shutdown()
        return try outcome.get()
    }

    func run() async throws {
        logging.apply(command: "backups")
        do {
            var all: [BackupInfo] = []
            if let spool {
                let systems = try Spool.systemIdentifiers(root: spool).filter { system == nil || $0 == system }
                for id in systems { all += try BackupCatalog.list(systemDirectory: spool + "/\(id)") }
            } else {
                all = try await archivedBackups()
            }
            let place = spool ?? archive.archive ?? ""
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.dateEncodingStrategy = .iso8601
                print(String(decoding: try encoder.encode(all), as: UTF8.self))
                return
            }
            if all.isEmpty {
                print("no base backups in \(place) (hint: walship backup --source ... --to RECEIVER)")
                return
            }
            print(
                "ID                  SYSTEM               TIME                  SIZE       START        STOP         TLI  STATUS")
            let time = ISO8601DateFormatter()
            for b in all {
                print(
                    [
                        b.id.padding(19), b.systemIdentifier.padding(20), time.string(from: b.createdAt).padding(21),
                        formatBytes(b.archiveBytes).padding(10), b.startLSN.padding(12), b.stopLSN.padding(12),
                        String(b.timeline).padding(4), b.status.rawValue,
                    ].joined(separator: " "))
            }
        } catch {
            throw fail("backups", error)
        }
    }
}

extension String {
    func padding(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

import ArgumentParser
import Foundation
import Operations
import ShipTLS
import Spool
import WALCore

struct RestoreWAL: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore-wal",
        abstract: "Copy a WAL segment or history file from the spool, for PostgreSQL's restore_command.",
        discussion: """
            restore_command = 'walship restore-wal --spool /var/lib/walship %f %p'
            With --archive, a file neither the spool nor the peer has is read from the object store walship receive --archive fills (opened with --encryption-keyring when encrypted); with --archive and no --spool, from the archive alone.
            With --peer-control, a file this spool lacks is fetched from the peer site's spool (its walship receive --control-listen, which must allow this site's certificate): what pg_rewind needs from before a fork when this site's pg_wal and spool no longer have it.
            Exit status: 0 restored; 1 neither the spool (nor the peer) has the file (or no WAL of the system yet), or nothing more of it than the copy already in the destination's directory, or the peer cannot be reached (routine, PostgreSQL asks again); 126 the spool has the file but it is damaged or unreadable, or the peer's copy arrived damaged (PostgreSQL then stops recovery rather than ending it early as if the WAL had run out).
            """)

    @Option(help: "Spool directory of walship receive (optional with --archive: the archive alone).")
    var spool: String?

    @Option(help: "System identifier, when the spool holds more than one system (needed with --archive and no spool).")
    var system: UInt64?

    @OptionGroup var archive: ArchiveReadOptions

    @Argument(help: "File name PostgreSQL asks for (%f).")
    var fileName: String

    @Argument(help: "Where to write it (%p), relative to the data directory.")
    var destination: String

    @Option(
        help: ArgumentHelp(
            "The peer site's walship receive --control-listen: fetch from its spool what this spool lacks.",
            valueName: "host:port"))
    var peerControl: String?

    @Option(help: "With --peer-control: this site's certificate (PEM).")
    var tlsCert: String?

    @Option(help: "With --peer-control: the private key of --tls-cert (PEM).")
    var tlsKey: String?

    @Option(name: .customLong("tls-ca"), help: "With --peer-control: the CA the peer's certificate must be signed by.")
    var tlsCA: String?

    func validate() throws {
        if spool == nil {
            guard archive.archive != nil else { throw ValidationError("give --spool DIR, or --archive s3://BUCKET/PREFIX") }
            guard system != nil else {
                throw ValidationError("--archive without --spool needs --system ID: the archive holds each system apart")
            }
        }
        if let peerControl {
            _ = try parseEndpoint(peerControl, option: "--peer-control")
            guard tlsCert != nil, tlsKey != nil, tlsCA != nil else {
                throw ValidationError("--peer-control needs --tls-cert, --tls-key and --tls-ca (this site's link certificate)")
            }
        } else if tlsCert != nil || tlsKey != nil || tlsCA != nil {
            throw ValidationError("--tls-cert, --tls-key and --tls-ca go with --peer-control")
        }
    }

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.apply(command: "restore-wal")
        var file: ServedFile?
        var spoolSystem: UInt64?
        do {
            if let spool, let reader = try SpoolReader.openIfPresent(root: spool, system: system) {
                spoolSystem = reader.systemIdentifier
                file = try reader.contents(of: fileName)
            } else if let spool, peerControl == nil, archive.archive == nil {
                // Routine for a standby that follows a spool not yet sent anything: PostgreSQL asks again.
                writeDiagnostic(
                    Data(
                        "walship restore-wal: the spool \(spool) holds no WAL\(system.map { " of system \($0)" } ?? "") yet\n"
                            .utf8))
            }
        } catch {
            writeDiagnostic(Data("walship restore-wal: error: \(error)\n".utf8))
            throw ExitCode(126)
        }
        guard let file else {
            if try await fetchFromPeer() { return }
            try await fetchFromArchive(system: system ?? spoolSystem)
            return
        }
        // A standby whose stream is down asks for the in-progress segment again at every retry
        // (wal_retrieve_retry_interval). When pg_wal, where %p lies, already holds the segment with all the WAL
        // the spool has of it (restored at an earlier retry and kept by PostgreSQL, or streamed), there is nothing
        // new: PostgreSQL reads its own copy when restore_command has none, and the copy is not written again.
        let held = (destination as NSString).deletingLastPathComponent
        if timeline(ofHistoryFileName: fileName) == nil, file.isHeld(by: held.isEmpty ? fileName : held + "/" + fileName) {
            throw ExitCode(1)
        }
        try place(file)
    }

    /// Writes `file` beside the destination and renames it, so PostgreSQL never sees a half-written file.
    func place(_ file: ServedFile) throws {
        let temporary = destination + ".walship-partial"
        do {
            try file.write(to: temporary)
            guard rename(temporary, destination) == 0 else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: destination])
            }
        } catch {
            unlink(temporary)
            writeDiagnostic(Data("walship restore-wal: error: cannot write \(destination): \(error)\n".utf8))
            throw ExitCode(126)
        }
    }

    /// The file from the archive, when --archive names one; else exit 1 (not to be had).
    func fetchFromArchive(system: UInt64?) async throws {
        guard archive.archive != nil else { throw ExitCode(1) }
        guard let system else {
            writeDiagnostic(
                Data("walship restore-wal: the spool holds no system yet: give --system ID to read the archive\n".utf8))
            throw ExitCode(1)
        }
        let (client, layout, keyring) = try await archive.open()
        let outcome: Result<Data?, any Error>
        do {
            outcome = .success(
                try await ArchivedWAL.fetch(name: fileName, system: system, client: client, layout: layout, keyring: keyring))
        } catch {
            outcome = .failure(error)
        }
        try? await client.shutdown()
        switch outcome {
        case .success(nil):
            throw ExitCode(1)
        case .success(let bytes?):
            try place(ServedFile(whole: [UInt8](bytes)))
        case .failure(let error as ArchivedWAL.Damaged):
            writeDiagnostic(Data("walship restore-wal: error: \(error)\n".utf8))
            throw ExitCode(126)
        case .failure(let error):
            // The store unreachable: routine for restore_command, PostgreSQL asks again.
            writeDiagnostic(Data("walship restore-wal: \(fileName) could not be read from the archive: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// The file from the peer's spool, when --peer-control names it: true when written, false when there is no peer
    /// to ask or it does not give the file (then the archive, if any, is next); exit 126 when its copy arrived damaged.
    func fetchFromPeer() async throws -> Bool {
        guard let peerControl, let tlsCert, let tlsKey, let tlsCA else { return false }
        let endpoint = try parseEndpoint(peerControl, option: "--peer-control")
        do {
            let fetched = try await SwitchoverControlClient.fetchWAL(
                host: endpoint.host, port: endpoint.port,
                tls: TLSFiles(certificate: tlsCert, privateKey: tlsKey, authority: tlsCA), name: fileName,
                system: system.map { String($0) }, to: destination, timeout: .seconds(300))
            return fetched
        } catch let exit as ExitCode {
            throw exit
        } catch let error as SwitchoverControlError where error.damaged {
            writeDiagnostic(Data("walship restore-wal: error: \(error)\n".utf8))
            throw ExitCode(126)
        } catch {
            writeDiagnostic(
                Data("walship restore-wal: \(fileName) is not in this spool and the peer did not give it: \(error)\n".utf8))
            return false
        }
    }
}

/// `--spool DIR [--system ID]`: which spool, and which system in it, a read-only command reads.
struct SpoolSelection: ParsableArguments {
    @Option(help: "Spool directory of walship receive.")
    var spool: String

    @Option(help: "System identifier, when the spool holds more than one system.")
    var system: UInt64?

    func reader() throws -> SpoolReader { try SpoolReader(root: spool, system: system) }
}

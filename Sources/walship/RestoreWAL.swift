import Archive
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
            With --archive, a file neither the spool nor the peer has is read from the object store walship receive --archive fills (opened with --encryption-keyring when encrypted); with --archive and no --spool, from the archive alone. A segment read from the archive brings the next --archive-prefetch segments of its timeline with it, fetched in parallel, verified whole and kept in --archive-cache DIR/<system>/ until PostgreSQL asks for them (served without asking the store); entries replay has moved past are removed.
            With --peer-control, a file this spool lacks is fetched from the peer site's spool (its walship receive --control-listen, which must allow this site's certificate): what pg_rewind needs from before a fork when this site's pg_wal and spool no longer have it.
            Exit status: 0 restored; 1 neither the spool (nor the peer) has the file (or no WAL of the system yet), or nothing more of it than the copy already in the destination's directory, or the peer cannot be reached (routine, PostgreSQL asks again); 126 the spool has the file but it is damaged or unreadable, or the peer's copy arrived damaged (PostgreSQL then stops recovery rather than ending it early as if the WAL had run out).
            """)

    @Option(help: "Spool directory of walship receive (optional with --archive: the archive alone).")
    var spool: String?

    @Option(help: "System identifier, when the spool holds more than one system (needed with --archive and no spool).")
    var system: UInt64?

    @OptionGroup var archive: ArchiveReadOptions

    @Option(
        help: ArgumentHelp(
            "With --archive: how many following segments a segment read from the archive brings along, in parallel (0: none).",
            valueName: "count"))
    var archivePrefetch = 8

    @Option(
        help: ArgumentHelp(
            "With --archive: where prefetched segments wait, per system (walship restore puts it beside the data directory).",
            valueName: "dir"))
    var archiveCache = WALPrefetchCache.defaultRoot

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
        guard (0...64).contains(archivePrefetch) else {
            throw ValidationError("--archive-prefetch takes 0 (off) to 64 segments, not \(archivePrefetch)")
        }
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

    /// The file from the archive, when --archive names one; else exit 1 (not to be had). A segment comes from the
    /// prefetch cache when an earlier call brought it; one read from the store brings the next ones along.
    func fetchFromArchive(system: UInt64?) async throws {
        guard archive.archive != nil else { throw ExitCode(1) }
        guard let system else {
            writeDiagnostic(
                Data("walship restore-wal: the spool holds no system yet: give --system ID to read the archive\n".utf8))
            throw ExitCode(1)
        }
        // Timeline 1 has no history file: PostgreSQL asks for it at a promotion all the same.
        if fileName == "00000001.history" { throw ExitCode(1) }
        let cache = archivePrefetch > 0 ? WALPrefetchCache(root: archiveCache, system: system) : nil
        if let cache, try serveCached(cache) { return }
        let (client, layout, keyring) = try await archive.open()
        let outcome: Result<Data?, any Error>
        do {
            outcome = .success(
                try await ArchivedWAL.fetch(name: fileName, system: system, client: client, layout: layout, keyring: keyring))
        } catch {
            outcome = .failure(error)
        }
        do {
            switch outcome {
            case .success(nil):
                throw ExitCode(1)
            case .success(let bytes?):
                try place(ServedFile(whole: [UInt8](bytes)))
                // The segment size comes from the segment itself: the names after it depend on it.
                guard let cache, let size = WALSegmentSize(bytes: UInt64(bytes.count)),
                    let requested = SegmentName(fileName, segmentSize: size)
                else { break }
                let prefetched = await cache.prefetch(
                    after: requested, count: archivePrefetch, history: newestHistory(), system: system, client: client,
                    layout: layout, keyring: keyring)
                cache.evict(requested: requested, window: archivePrefetch)
                writeDiagnostic(
                    Data(
                        "walship restore-wal: \(fileName) read from the archive; \(prefetched) of the next \(archivePrefetch) segments now wait in \(cache.directory)\n"
                            .utf8))
            case .failure(let error as ArchivedWAL.Damaged):
                writeDiagnostic(Data("walship restore-wal: error: \(error)\n".utf8))
                throw ExitCode(126)
            case .failure(let error):
                // The store unreachable: routine for restore_command, PostgreSQL asks again.
                writeDiagnostic(
                    Data("walship restore-wal: \(fileName) could not be read from the archive: \(error)\n".utf8))
                throw ExitCode(1)
            }
        } catch {
            try? await client.shutdown()
            throw error
        }
        try? await client.shutdown()
    }

    /// Moves the requested segment from the prefetch cache to the destination when an earlier call brought it, then
    /// drops what replay has moved past. False when the cache does not hold it.
    func serveCached(_ cache: WALPrefetchCache) throws -> Bool {
        guard let (path, size) = cache.entry(fileName) else { return false }
        if rename(path, destination) != 0 {
            // Another file system: copied, then renamed beside the destination.
            guard let bytes = FileManager.default.contents(atPath: path) else { return false }
            try place(ServedFile(whole: [UInt8](bytes)))
            unlink(path)
        }
        if let requested = SegmentName(fileName, segmentSize: size) {
            cache.evict(requested: requested, window: archivePrefetch)
        }
        return true
    }

    /// The newest timeline history PostgreSQL has restored into the destination's directory (pg_wal): where the
    /// timelines it follows switch. Empty while there is none.
    func newestHistory() -> [TimelineHistoryEntry] {
        let held = (destination as NSString).deletingLastPathComponent
        let directory = held.isEmpty ? "." : held
        let newest = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .compactMap { name in timeline(ofHistoryFileName: name).map { ($0, name) } }.max { $0.0 < $1.0 }
        guard let newest, let text = try? String(contentsOfFile: directory + "/" + newest.1, encoding: .utf8) else {
            return []
        }
        return (try? parseTimelineHistory(text)) ?? []
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

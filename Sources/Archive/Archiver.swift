import ArchiveCrypto
import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import ObjectStore
import ServiceLifecycle
import Spool
import StatusModel
import WALCore

/// Where and how the receiver archives: `s3://BUCKET/PREFIX` and the client's settings.
public struct ArchiveConfiguration: Sendable {
    public var bucket: String
    /// Without leading or trailing slashes; may be empty (the system directories then sit at the bucket's root).
    public var prefix: String
    /// Objects larger than this go up in parts of this size (S3's minimum part is 5 MiB).
    public var partSize = 64 << 20
    /// With a keyring every object is encrypted client-side (`SealedObject`) with its current key.
    public var keyring: Keyring?
    public var chunkSize = SealedObject.defaultChunkSize
    /// How often the spool is looked at when nothing waits.
    public var scanInterval: Duration = .seconds(1)
    public var policy = ArchiveStateMachine.Policy()
    /// What the bucket keeps (`--archive-retain-days`, `--archive-retain-backups`); nothing is deleted without it.
    public var retention = ArchiveRetentionPolicy()
    /// How often retention runs at most; it also runs right after a backup's record was archived.
    public var retentionInterval: Duration = .seconds(60)

    public init(bucket: String, prefix: String) {
        self.bucket = bucket
        self.prefix = prefix
    }

    /// Parses `s3://BUCKET/PREFIX` (the prefix may be empty or have several levels).
    public init(url text: String) throws(S3ConfigurationError) {
        guard text.hasPrefix("s3://") else {
            throw S3ConfigurationError(
                "--archive '\(text)' is not an s3:// URL", hint: "give it as s3://BUCKET/PREFIX, e.g. s3://dr-archive/walship")
        }
        let rest = text.dropFirst("s3://".count)
        let bucket = String(rest.prefix { $0 != "/" })
        let prefix = rest.dropFirst(bucket.count).split(separator: "/").joined(separator: "/")
        guard !bucket.isEmpty, bucket.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "." || $0 == "_" })
        else {
            throw S3ConfigurationError(
                "--archive '\(text)' names no valid bucket", hint: "give it as s3://BUCKET/PREFIX, e.g. s3://dr-archive/walship")
        }
        self.init(bucket: bucket, prefix: prefix)
    }

    /// `PREFIX/<system id>/`.
    public func systemPrefix(_ system: UInt64) -> String { (prefix.isEmpty ? "" : prefix + "/") + "\(system)/" }

    /// `PREFIX/<system id>/<path>`: `wal/<name>` (a segment keeps its spool name with the `.lz4` suffix, a history
    /// file its own), `base/<backup id>/<file>`.
    public func objectKey(system: UInt64, path: String) -> String { systemPrefix(system) + path }

    public func destination(system: UInt64) -> String { "s3://\(bucket)/\(systemPrefix(system))" }
}

/// The receiver's archiver: copies each completed segment and history file of the spool to the object store, in the
/// background (never on the path of an acknowledgement: it only reads files the spool has finished), and counts one
/// archived only once the store reads it back with the spool's size and checksum. `ArchiveStateMachine` decides; this
/// lists the spool, talks to the store and reports.
public final class Archiver: Service, Sendable {
    public let configuration: ArchiveConfiguration
    private let client: S3Client
    private let spoolRoot: String
    private let logger: Logger
    private let machine: NIOLockedValueBox<ArchiveStateMachine>
    /// The last scan of each system, for reconciling with the store's listing.
    private let lastScan = NIOLockedValueBox<[UInt64: [String: ArchiveObject]]>([:])
    private let retentionState = NIOLockedValueBox(RetentionState())

    struct RetentionState {
        var nextRunAt = Date.distantPast
        var deleted: [UInt64: Int] = [:]
        var refused: [UInt64: Int] = [:]
        var deleteMarkers: [UInt64: Int] = [:]
        var lastRunAt: [UInt64: Date] = [:]
        var lastError: [UInt64: String] = [:]
        /// Backup records already read, by object key: a record never changes once archived.
        var records: [String: BackupInfo] = [:]
    }

    /// Metadata carrying the object's SHA-256, which HEAD returns (the ETag of a multipart object is no checksum of
    /// its bytes, and this store returns none of the newer checksum headers).
    public static let checksumMetadata = "sha256"
    /// An encrypted object's key id and the keyed MAC of its plaintext (`PlaintextMAC`).
    public static let keyIDMetadata = "walship-key-id"
    public static let plaintextMACMetadata = "walship-plain-hmac"

    public init(configuration: ArchiveConfiguration, client: S3Client, spoolRoot: String, logger: Logger) {
        self.configuration = configuration
        self.client = client
        self.spoolRoot = spoolRoot
        self.logger = logger
        self.machine = NIOLockedValueBox(ArchiveStateMachine(policy: configuration.policy))
    }

    public func run() async throws {
        logger.info(
            "archiving completed WAL to the object store",
            metadata: [
                "walship.archive": "s3://\(configuration.bucket)/\(configuration.prefix)",
                "walship.endpoint": "\(client.configuration.endpoint.description)",
            ])
        do {
            try await cancelWhenGracefulShutdown { try await self.loop() }
        } catch is CancellationError {
        } catch {
            try? await client.shutdown()
            throw error
        }
        try? await client.shutdown()
    }

    /// What `walship check` tries: writes a small object under the prefix, reads it back and deletes it, so the
    /// endpoint, TLS, credentials, region, bucket and the right to write are all proven; nothing stays behind.
    /// Returns a line for each finding; the client is shut down afterwards.
    public func probeStore(now: Date = Date()) async -> [(ok: Bool, message: String)] {
        let key = (configuration.prefix.isEmpty ? "" : configuration.prefix + "/") + ".walship-check-\(getpid())"
        let target = "s3://\(configuration.bucket)/\(configuration.prefix) at \(client.configuration.endpoint.description)"
        var findings: [(ok: Bool, message: String)] = []
        do {
            let body = Data("walship check \(now)\n".utf8)
            try await client.putObject(key: key, body: body)
            guard try await client.getObject(key: key) == body else {
                throw ArchiveError("\(key) reads back with other bytes")
            }
            findings.append((true, "\(target) takes, returns and deletes an object"))
            do {
                try await client.deleteObject(key: key)
            } catch {
                findings.append((false, "the probe \(key) could not be deleted (object lock?): \(error)"))
            }
        } catch {
            findings.append((false, "\(target): \(error)"))
        }
        try? await client.shutdown()
        return findings
    }

    /// Sets `archive` on each system of a receiver's status document.
    public func annotate(_ status: inout StatusDocument, now: Date = Date()) {
        machine.withLockedValue { machine in
            for index in status.systems.indices {
                guard let system = status.systems[index].systemIdentifier.flatMap({ UInt64($0) }) else { continue }
                status.systems[index].archive = machine.status(
                    system: system, destination: configuration.destination(system: system), now: now)
                status.systems[index].archive?.encryptionKeyID = configuration.keyring?.currentID
                if let archive = status.systems[index].archive {
                    status.systems[index].archive = withRetention(archive, system: system)
                }
            }
        }
    }

    private func withRetention(_ status: StatusDocument.ArchiveStatus, system: UInt64) -> StatusDocument.ArchiveStatus {
        guard configuration.retention.isEnabled else { return status }
        var status = status
        retentionState.withLockedValue {
            status.retentionDeletedObjects = $0.deleted[system] ?? 0
            status.retentionRefusedObjects = $0.refused[system] ?? 0
            status.retentionDeleteMarkers = $0.deleteMarkers[system] ?? 0
            status.retentionLastRunAt = $0.lastRunAt[system]
            status.retentionLastError = $0.lastError[system]
        }
        return status
    }

    /// What the spool's retention must keep of `system` (`ArchiveStateMachine.retentionHold`).
    public func hold(system: UInt64) -> ArchiveHold {
        machine.withLockedValue { $0.retentionHold(system: system) }
    }

    public func status(system: UInt64, now: Date = Date()) -> StatusDocument.ArchiveStatus {
        withRetention(
            machine.withLockedValue {
                $0.status(system: system, destination: configuration.destination(system: system), now: now)
            }, system: system)
    }

    private func loop() async throws {
        while !Task.isCancelled {
            try await offThePool { self.scanSpool() }
            let now = Date()
            let actions = machine.withLockedValue { $0.next(now: now) }
            for action in actions {
                switch action {
                case .reconcile(let system): await reconcile(system)
                case .upload(let object): await upload(object)
                }
            }
            guard actions.isEmpty else { continue }
            await retainIfDue()
            var wait =
                Double(configuration.scanInterval.components.seconds)
                + Double(configuration.scanInterval.components.attoseconds) / 1e18
            if let retry = machine.withLockedValue({ $0.nextAttemptAt }) {
                wait = max(0.05, min(wait, retry.timeIntervalSince(Date())))
            }
            try await Task.sleep(for: .milliseconds(Int(wait * 1000)))
        }
    }

    // MARK: The spool

    private func scanSpool() {
        let systems = (try? Spool.systemIdentifiers(root: spoolRoot)) ?? []
        for system in systems {
            let systemDirectory = "\(spoolRoot)/\(system)"
            let objects =
                Self.completedFiles(walDirectory: systemDirectory + "/wal", system: system)
                + Self.completeBackupFiles(systemDirectory: systemDirectory, system: system)
            lastScan.withLockedValue { $0[system] = Dictionary(objects.map { ($0.path, $0) }) { a, _ in a } }
            let vanished = machine.withLockedValue { $0.spoolScanned(system: system, objects: objects) }
            for gone in vanished {
                logger.warning(
                    "a file left the spool before the object store confirmed it; it is not archived",
                    metadata: ["walship.system": "\(system)", "walship.file": "\(gone.object.path)"])
            }
        }
    }

    /// Completed segments (`NAME.lz4`) and history files of a `wal/` directory; partial segments, journals and
    /// temporary files are never archived.
    static func completedFiles(walDirectory: String, system: UInt64) -> [ArchiveObject] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: walDirectory)) ?? []
        return names.compactMap { name -> ArchiveObject? in
            let isSegment =
                name.hasSuffix(".lz4") && name.count == 28 && name.prefix(24).allSatisfy { $0.isHexDigit && !$0.isLowercase }
            guard isSegment || timeline(ofHistoryFileName: name) != nil else { return nil }
            return file(walDirectory + "/" + name, path: "wal/" + name, system: system)
        }
    }

    /// The files of each complete base backup (`status` complete: the spool holds its WAL), its `backup.json` among
    /// them; a backup still waiting for its WAL, or one being received (`.partial`), is not archived yet.
    static func completeBackupFiles(systemDirectory: String, system: UInt64) -> [ArchiveObject] {
        let backups = (try? BackupCatalog.list(systemDirectory: systemDirectory)) ?? []
        return backups.filter { $0.status == .complete }.flatMap { backup in
            ["base.tar.lz4", "backup_manifest", "backup.json"].compactMap {
                file("\(systemDirectory)/base/\(backup.id)/\($0)", path: "base/\(backup.id)/\($0)", system: system)
            }
        }
    }

    static func file(_ fullPath: String, path: String, system: UInt64) -> ArchiveObject? {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: fullPath),
            let size = attributes[.size] as? NSNumber, let modified = attributes[.modificationDate] as? Date
        else { return nil }
        return ArchiveObject(system: system, path: path, size: size.uint64Value, completedAt: modified)
    }

    private func localPath(_ object: ArchiveObject) -> String { "\(spoolRoot)/\(object.system)/\(object.path)" }

    // MARK: The store

    private func reconcile(_ system: UInt64) async {
        let prefix = configuration.systemPrefix(system)
        do {
            // One receiver archives a system: an upload still open under its prefix was cut by an earlier stop, and
            // its parts would stay billed in the store forever. The file is uploaded again below.
            for upload in try await client.listMultipartUploads(prefix: prefix) {
                try await client.abortMultipartUpload(key: upload.key, uploadID: upload.uploadID)
                logger.info(
                    "aborted a multipart upload an earlier run left unfinished", metadata: ["walship.key": "\(upload.key)"])
            }
            let listed = try await client.listAllObjects(prefix: prefix)
            let local = lastScan.withLockedValue { $0[system] ?? [:] }
            var confirmed: Set<String> = []
            for object in listed {
                let path = String(object.key.dropFirst(prefix.count))
                guard let mine = local[path] else { continue }
                if try await isConfirmed(key: object.key, listed: object, local: mine) { confirmed.insert(path) }
            }
            logger.info(
                "the object store already holds \(confirmed.count) of this system's spool files",
                metadata: ["walship.system": "\(system)", "walship.archive": "\(configuration.destination(system: system))"])
            machine.withLockedValue { $0.reconciled(system: system, confirmed: confirmed, now: Date()) }
        } catch {
            report(failure: "listing \(prefix): \(error)", system: system)
            machine.withLockedValue { $0.reconcileFailed(system: system, error: "\(error)", now: Date()) }
        }
    }

    /// A listed object counts as the spool's file when its ETag is the file's MD5 (one part), or, for a multipart
    /// object, when the SHA-256 in its metadata is the file's. With a keyring, an encrypted object counts when its
    /// key is in the keyring, its size is the sealed size of the file, and its plaintext MAC is the file's.
    private func isConfirmed(key: String, listed: ObjectInfo, local: ArchiveObject) async throws -> Bool {
        let file = localPath(local)
        let partSize = configuration.partSize
        if let keyring = configuration.keyring {
            guard let head = try await client.headObject(key: key), let keyID = head.metadata[Self.keyIDMetadata],
                let kek = keyring.key(id: keyID),
                UInt64(head.size)
                    == SealedObject.sealedSize(plaintextSize: local.size, keyID: keyID, chunkSize: configuration.chunkSize)
            else { return false }
            let mac = try await offThePool { Self.plaintextMAC(file: file, key: kek) }
            return head.metadata[Self.plaintextMACMetadata] == mac
        }
        guard UInt64(listed.size) == local.size,
            let digests = try await offThePool({ FileDigests(path: file, partSize: partSize) })
        else { return false }
        if !listed.etag.contains("-") { return listed.etag == digests.md5 }
        guard let head = try await client.headObject(key: key) else { return false }
        return head.metadata[Self.checksumMetadata] == digests.sha256
    }

    static func plaintextMAC(file: String, key: Keyring.Key) -> String? {
        guard let handle = FileHandle(forReadingAtPath: file) else { return nil }
        defer { try? handle.close() }
        var mac = PlaintextMAC(key: key)
        do {
            while let piece = try handle.read(upToCount: 1 << 20), !piece.isEmpty { mac.update(piece) }
        } catch {
            return nil
        }
        return mac.finalize()
    }

    /// Uploads one file of the spool, sealed when a keyring is given, and counts it archived only once the store
    /// reads it back with the size, the ETag of what was sent, and the metadata. Reading, hashing and sealing run
    /// on NIO's blocking pool, never on the concurrency pool the receiver's links share.
    private func upload(_ object: ArchiveObject) async {
        let key = configuration.objectKey(system: object.system, path: object.path)
        let file = localPath(object)
        let configuration = self.configuration
        do {
            // First pass: what the metadata and the read-back need (the plaintext's SHA-256, or its keyed MAC).
            var metadata: [String: String] = [:]
            let total: UInt64
            let kek = configuration.keyring?.current
            if let kek {
                guard let mac = try await offThePool({ Self.plaintextMAC(file: file, key: kek) }) else {
                    machine.withLockedValue { $0.uploadAbandoned(object) }
                    return
                }
                metadata = [Self.keyIDMetadata: kek.id, Self.plaintextMACMetadata: mac]
                total = SealedObject.sealedSize(plaintextSize: object.size, keyID: kek.id, chunkSize: configuration.chunkSize)
            } else {
                guard let digests = try await offThePool({ FileDigests(path: file, partSize: configuration.partSize) }) else {
                    machine.withLockedValue { $0.uploadAbandoned(object) }
                    return
                }
                metadata = [Self.checksumMetadata: digests.sha256]
                total = digests.size
            }
            let binding = SealedObject.Binding(system: object.system, name: object.path)
            guard
                let source = try PartSource(
                    path: file, partSize: configuration.partSize, chunkSize: configuration.chunkSize,
                    sealer: configuration.keyring.map {
                        try SealedObject.Sealer(binding: binding, keyring: $0, chunkSize: configuration.chunkSize)
                    })
            else {
                machine.withLockedValue { $0.uploadAbandoned(object) }
                return
            }
            defer { source.close() }
            let expectedETag: String
            var sent: UInt64 = 0
            if total <= UInt64(configuration.partSize) {
                let (body, sha256) = try await offThePool {
                    let body = try source.next()?.bytes ?? Data()
                    return (body, SigV4Signer.payloadHash(body))
                }
                if kek != nil { metadata[Self.checksumMetadata] = sha256 }
                try await client.putObject(key: key, body: body, metadata: metadata)
                expectedETag = S3Client.expectedETag(of: body, partSize: nil)
                sent = UInt64(body.count)
            } else {
                let uploadID = try await client.createMultipartUpload(key: key, metadata: metadata)
                do {
                    var parts: [(number: Int, etag: String)] = []
                    var digests = Data()
                    while let part = try await offThePool({ try source.next() }) {
                        digests.append(part.md5)
                        let number = parts.count + 1
                        parts.append(
                            (
                                number,
                                try await client.uploadPart(key: key, uploadID: uploadID, partNumber: number, body: part.bytes)
                            ))
                        sent += UInt64(part.bytes.count)
                    }
                    try await client.completeMultipartUpload(key: key, uploadID: uploadID, parts: parts)
                    expectedETag = FileDigests.hex(Insecure.MD5.hash(data: digests)) + "-\(parts.count)"
                } catch {
                    try? await client.abortMultipartUpload(key: key, uploadID: uploadID)
                    throw error
                }
            }
            guard sent == total else {
                throw ArchiveError("\(file) changed while it was read (\(sent) bytes sent, \(total) expected)")
            }
            guard let head = try await client.headObject(key: key) else {
                throw ArchiveError("\(key) is missing right after its upload")
            }
            guard UInt64(head.size) == total, head.etag == expectedETag,
                metadata.allSatisfy({ head.metadata[$0.key] == $0.value })
            else {
                throw ArchiveError(
                    "\(key) reads back with another size or checksum (\(head.size) bytes, ETag \(head.etag); expected \(total), \(expectedETag))"
                )
            }
            confirm(object, key: key, bytes: total)
        } catch {
            report(failure: "\(error)", system: object.system)
            machine.withLockedValue { $0.uploadFailed(object, error: "\(error)", now: Date()) }
        }
    }

    private func confirm(_ object: ArchiveObject, key: String, bytes: UInt64) {
        let recovered = machine.withLockedValue { machine in
            let wasFailing = machine.status(system: object.system, destination: "", now: Date()).consecutiveFailures > 0
            machine.uploaded(object, now: Date())
            return wasFailing
        }
        if recovered {
            logger.info("the object store takes uploads again", metadata: ["walship.key": "\(key)"])
        }
        // A new complete backup may let older ones go.
        if object.path.hasSuffix("/backup.json") { retentionState.withLockedValue { $0.nextRunAt = .distantPast } }
        logger.debug("archived", metadata: ["walship.key": "\(key)", "walship.bytes": "\(bytes)"])
    }

    // MARK: Retention in the bucket

    /// Runs retention over each system whose listing the archiver has read, at most once per `retentionInterval`.
    private func retainIfDue() async {
        guard configuration.retention.isEnabled else { return }
        let now = Date()
        let due = retentionState.withLockedValue { state -> Bool in
            guard now >= state.nextRunAt else { return false }
            state.nextRunAt = now.addingTimeInterval(
                Double(configuration.retentionInterval.components.seconds)
                    + Double(configuration.retentionInterval.components.attoseconds) / 1e18)
            return true
        }
        guard due else { return }
        for system in machine.withLockedValue({ $0.systems })
        where machine.withLockedValue({ $0.unarchived(system: system) }) != nil {
            await retain(system: system)
        }
    }

    /// One pass of `ArchiveRetentionPlan` over the system's listing: removed backups (each record first), then the WAL
    /// older than every kept backup's start. A delete the store refuses is counted and logged, and its backup kept
    /// with its WAL; any other failure ends the pass, to be tried again at the next one.
    private func retain(system: UInt64) async {
        let prefix = configuration.systemPrefix(system)
        do {
            let listed = try await client.listAllObjects(prefix: prefix)
            var walFiles: [String] = []
            var backupPaths: [String: [String]] = [:]
            for object in listed {
                let path = String(object.key.dropFirst(prefix.count))
                if path.hasPrefix("wal/") {
                    walFiles.append(String(path.dropFirst("wal/".count)))
                } else if let match = path.wholeMatch(of: /base\/([^\/]+)\/[^\/]+/) {
                    backupPaths[String(match.output.1), default: []].append(path)
                }
            }
            var backups: [ArchivedBackup] = []
            for (id, paths) in backupPaths where paths.contains("base/\(id)/backup.json") {
                let info = try await backupRecord(key: prefix + "base/\(id)/backup.json", system: system, id: id)
                guard let start = LSN(info.startLSN), let stop = LSN(info.stopLSN) else {
                    throw ArchiveError("the record of backup \(id) holds no valid start or stop LSN")
                }
                backups.append(ArchivedBackup(id: id, start: start, stop: stop, createdAt: info.createdAt, paths: paths))
            }
            let segmentSize = try SpoolReader(root: spoolRoot, system: system).segmentSize
            let plan = ArchiveRetentionPlan.make(
                policy: configuration.retention, backups: backups, walFiles: walFiles, segmentSize: segmentSize, now: Date())
            var held: [ArchivedBackup] = []
            var deleted = 0
            for backup in plan.removedBackups {
                let record = "base/\(backup.id)/backup.json"
                guard try await delete(system: system, path: record) else {
                    held.append(backup)
                    continue
                }
                deleted += 1
                for path in backup.paths.sorted() where path != record {
                    if try await delete(system: system, path: path) { deleted += 1 }
                }
            }
            let wal = plan.walDeletions(sparing: held, segmentSize: segmentSize)
            for path in wal {
                if try await delete(system: system, path: path) { deleted += 1 }
            }
            if deleted > 0 {
                let heldIDs = Set(held.map(\.id))
                let gone: [String] = plan.removedBackups.map(\.id).filter { !heldIDs.contains($0) }
                logger.info(
                    "archive retention deleted \(deleted) objects",
                    metadata: [
                        "walship.system": "\(system)",
                        "walship.backups": "\(gone)",
                        "walship.kept": "\(plan.keptBackups)", "walship.segments": "\(wal.count)",
                    ])
            }
            retentionState.withLockedValue {
                $0.lastRunAt[system] = Date()
                $0.lastError[system] = nil
            }
        } catch {
            retentionState.withLockedValue { $0.lastError[system] = "\(error)" }
            logger.warning(
                "archive retention stopped short; it runs again later",
                metadata: ["walship.system": "\(system)", "walship.error": "\(error)"])
        }
    }

    /// A backup's record in the store, opened with the keyring when sealed.
    private func backupRecord(key: String, system: UInt64, id: String) async throws -> BackupInfo {
        if let known = retentionState.withLockedValue({ $0.records[key] }) { return known }
        let stored = try await client.getObject(key: key)
        var bytes = stored
        if let keyID = try? SealedObject.keyID(of: stored) {
            guard let keyring = configuration.keyring else {
                throw ArchiveError("\(key) is encrypted (key \(keyID)) and the receiver has no keyring: nothing is deleted")
            }
            bytes = try SealedObject.open(
                stored, binding: .init(system: system, name: "base/\(id)/backup.json"), keyring: keyring)
        }
        let info = try BackupCatalog.decodeRecord(bytes, origin: key)
        retentionState.withLockedValue { $0.records[key] = info }
        return info
    }

    /// Deletes one object: true when deleted, false when the store refused (object lock, a bucket policy: counted
    /// and logged, the object stays); throws on any other failure.
    private func delete(system: UInt64, path: String) async throws -> Bool {
        let key = configuration.objectKey(system: system, path: path)
        let outcome: S3Client.DeleteOutcome
        do {
            outcome = try await client.deleteObject(key: key)
        } catch let error as S3Error where ArchiveRetentionPlan.isRefusal(code: error.code) {
            retentionState.withLockedValue { $0.refused[system, default: 0] += 1 }
            logger.warning(
                "the object store refuses to delete an object retention no longer needs (object lock or a bucket policy); it stays",
                metadata: ["walship.key": "\(key)", "walship.error": "\(error)"])
            return false
        }
        let firstMarker = retentionState.withLockedValue {
            $0.deleted[system, default: 0] += 1
            if path.hasSuffix("/backup.json") { $0.records[key] = nil }
            guard outcome == .deleteMarker else { return false }
            $0.deleteMarkers[system, default: 0] += 1
            return $0.deleteMarkers[system] == 1
        }
        if firstMarker {
            // Gone from listings (and from restores), its data kept by the bucket until the bucket's own retention
            // (object lock) or lifecycle rules end it: said once, counted in the status.
            logger.notice(
                "the bucket keeps versions (object lock or versioning): objects retention deletes stay as older versions behind delete markers, until the bucket's own retention ends",
                metadata: ["walship.key": "\(key)"])
        }
        logger.debug("archive retention deleted an object", metadata: ["walship.key": "\(key)"])
        return true
    }

    /// File work (reads, hashes, sealing) on NIO's blocking pool: on the concurrency pool (one thread per core) it
    /// would hold up every task of the process, the receiver's links among them.
    private func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(work)
    }

    /// Logs the first failure of a streak and every tenth after it, so a store that is down for hours does not
    /// flood the log; the status and the `archive_failing` alert carry the rest.
    private func report(failure: String, system: UInt64) {
        let failures = machine.withLockedValue {
            $0.status(system: system, destination: "", now: Date()).consecutiveFailures
        }
        guard failures % 10 == 0 else { return }
        logger.warning(
            "archiving to the object store failed; retrying with backoff",
            metadata: ["walship.system": "\(system)", "walship.error": "\(failure)"])
    }
}

/// A spool file read part by part, sealed on the way when a sealer is given (a base backup is never held in memory
/// whole). Each part comes with its MD5, for the multipart ETag. Used by one task at a time, each call on the
/// blocking pool.
final class PartSource: @unchecked Sendable {
    struct Part: Sendable {
        var bytes: Data
        var md5: Data
    }

    private let handle: FileHandle
    private let partSize: Int
    private let chunkSize: Int
    private var sealer: SealedObject.Sealer?
    private var buffer: Data
    private var finished = false

    init?(path: String, partSize: Int, chunkSize: Int, sealer: SealedObject.Sealer?) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        self.handle = handle
        self.partSize = partSize
        self.chunkSize = chunkSize
        self.sealer = sealer
        buffer = sealer?.header ?? Data()
    }

    /// The next part (`partSize` bytes, the last one shorter), nil after the last.
    func next() throws -> Part? {
        while buffer.count < partSize && !finished {
            if let piece = try handle.read(upToCount: sealer == nil ? partSize : chunkSize), !piece.isEmpty {
                if sealer != nil { buffer += try sealer!.update(piece) } else { buffer += piece }
            } else {
                finished = true
                if sealer != nil { buffer += try sealer!.finish() }
            }
        }
        guard !buffer.isEmpty else { return nil }
        let part = Data(buffer.prefix(partSize))
        buffer = Data(buffer.dropFirst(part.count))
        return Part(bytes: part, md5: Data(Insecure.MD5.hash(data: part)))
    }

    func close() { try? handle.close() }
}

/// A file's size, SHA-256, MD5 and the ETag S3 gives it when uploaded in parts of `partSize`, read in one pass of
/// `partSize` pieces (a base backup is never held in memory whole).
struct FileDigests {
    var size: UInt64 = 0
    var sha256 = ""
    var md5 = ""
    var multipartETag = ""

    init?(path: String, partSize: Int) {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var sha = SHA256()
        var whole = Insecure.MD5()
        var partDigests = Data()
        var parts = 0
        do {
            while let piece = try handle.read(upToCount: partSize), !piece.isEmpty {
                sha.update(data: piece)
                whole.update(data: piece)
                partDigests.append(contentsOf: Insecure.MD5.hash(data: piece))
                parts += 1
                size += UInt64(piece.count)
            }
        } catch {
            return nil
        }
        sha256 = Self.hex(sha.finalize())
        md5 = Self.hex(whole.finalize())
        multipartETag = Self.hex(Insecure.MD5.hash(data: partDigests)) + "-\(max(parts, 1))"
    }

    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        digest.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

public struct ArchiveError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

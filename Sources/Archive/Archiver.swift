import Crypto
import Foundation
import Logging
import NIOConcurrencyHelpers
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
    /// Objects above this size go up in parts of `partSize`.
    public var multipartThreshold = 64 << 20
    public var partSize = 16 << 20
    /// How often the spool is looked at when nothing waits.
    public var scanInterval: Duration = .seconds(1)
    public var policy = ArchiveStateMachine.Policy()

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

    /// `PREFIX/<system id>/wal/<name>`: a segment keeps its spool name with the `.lz4` suffix, a history file its own.
    public func walKey(system: UInt64, name: String) -> String { systemPrefix(system) + "wal/" + name }

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

    /// Metadata carrying the object's SHA-256, which HEAD returns (the ETag of a multipart object is no checksum of
    /// its bytes, and this store returns none of the newer checksum headers).
    public static let checksumMetadata = "sha256"

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

    /// Sets `archive` on each system of a receiver's status document.
    public func annotate(_ status: inout StatusDocument, now: Date = Date()) {
        machine.withLockedValue { machine in
            for index in status.systems.indices {
                guard let system = status.systems[index].systemIdentifier.flatMap({ UInt64($0) }) else { continue }
                status.systems[index].archive = machine.status(
                    system: system, destination: configuration.destination(system: system), now: now)
            }
        }
    }

    public func status(system: UInt64, now: Date = Date()) -> StatusDocument.ArchiveStatus {
        machine.withLockedValue {
            $0.status(system: system, destination: configuration.destination(system: system), now: now)
        }
    }

    private func loop() async throws {
        while !Task.isCancelled {
            scanSpool()
            let now = Date()
            let actions = machine.withLockedValue { $0.next(now: now) }
            for action in actions {
                switch action {
                case .reconcile(let system): await reconcile(system)
                case .upload(let object): await upload(object)
                }
            }
            guard actions.isEmpty else { continue }
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
            let objects = Self.completedFiles(walDirectory: "\(spoolRoot)/\(system)/wal", system: system)
            lastScan.withLockedValue { $0[system] = Dictionary(objects.map { ($0.name, $0) }) { a, _ in a } }
            let vanished = machine.withLockedValue { $0.spoolScanned(system: system, objects: objects) }
            for gone in vanished {
                logger.warning(
                    "a file left the spool before the object store confirmed it; it is not archived",
                    metadata: ["walship.system": "\(system)", "walship.file": "\(gone.object.name)"])
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
            guard isSegment || timeline(ofHistoryFileName: name) != nil,
                let attributes = try? FileManager.default.attributesOfItem(atPath: walDirectory + "/" + name),
                let size = attributes[.size] as? NSNumber, let modified = attributes[.modificationDate] as? Date
            else { return nil }
            return ArchiveObject(system: system, name: name, size: size.uint64Value, completedAt: modified)
        }
    }

    private func contents(of object: ArchiveObject) -> Data? {
        FileManager.default.contents(atPath: "\(spoolRoot)/\(object.system)/wal/\(object.name)")
    }

    // MARK: The store

    private func reconcile(_ system: UInt64) async {
        let prefix = configuration.systemPrefix(system) + "wal/"
        do {
            let listed = try await client.listAllObjects(prefix: prefix)
            let local = lastScan.withLockedValue { $0[system] ?? [:] }
            var confirmed: Set<String> = []
            for object in listed {
                let name = String(object.key.dropFirst(prefix.count))
                guard let mine = local[name], UInt64(object.size) == mine.size, let bytes = contents(of: mine) else {
                    continue
                }
                if try await isConfirmed(key: object.key, listedETag: object.etag, bytes: bytes) { confirmed.insert(name) }
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
    /// object, when the SHA-256 in its metadata is the file's.
    private func isConfirmed(key: String, listedETag: String, bytes: Data) async throws -> Bool {
        if !listedETag.contains("-") { return listedETag == S3Client.expectedETag(of: bytes, partSize: nil) }
        guard let head = try await client.headObject(key: key) else { return false }
        return head.metadata[Self.checksumMetadata] == SigV4Signer.payloadHash(bytes)
    }

    private func upload(_ object: ArchiveObject) async {
        let key = configuration.walKey(system: object.system, name: object.name)
        guard let bytes = contents(of: object) else {
            machine.withLockedValue { $0.uploadAbandoned(object) }
            return
        }
        let checksum = SigV4Signer.payloadHash(bytes)
        let multipart = bytes.count > configuration.multipartThreshold
        do {
            if multipart {
                try await client.putObjectMultipart(
                    key: key, body: bytes, partSize: configuration.partSize, metadata: [Self.checksumMetadata: checksum])
            } else {
                try await client.putObject(key: key, body: bytes, metadata: [Self.checksumMetadata: checksum])
            }
            // Counted only once read back as stored: the size, the ETag the parts give, and the checksum.
            guard let head = try await client.headObject(key: key) else {
                throw ArchiveError("\(key) is missing right after its upload")
            }
            let expectedETag = S3Client.expectedETag(of: bytes, partSize: multipart ? configuration.partSize : nil)
            guard head.size == Int64(bytes.count) else {
                throw ArchiveError("\(key) reads back with \(head.size) bytes, the spool's file has \(bytes.count)")
            }
            guard head.etag == expectedETag, head.metadata[Self.checksumMetadata] == checksum else {
                throw ArchiveError("\(key) reads back with another checksum (ETag \(head.etag), expected \(expectedETag))")
            }
            let recovered = machine.withLockedValue { machine in
                let wasFailing = machine.status(system: object.system, destination: "", now: Date()).consecutiveFailures > 0
                machine.uploaded(object, now: Date())
                return wasFailing
            }
            if recovered {
                logger.info("the object store takes uploads again", metadata: ["walship.key": "\(key)"])
            }
            logger.debug("archived", metadata: ["walship.key": "\(key)", "walship.bytes": "\(bytes.count)"])
        } catch {
            report(failure: "\(error)", system: object.system)
            machine.withLockedValue { $0.uploadFailed(object, error: "\(error)", now: Date()) }
        }
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

public struct ArchiveError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

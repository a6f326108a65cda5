import Archive
import ArchiveCrypto
import ArgumentParser
import Foundation
import ObjectStore
import Spool
import StatusModel
import WALCore

/// `walship verify`: reads every file of a spool and every object of an archive and checks them (`VerifyLedger` has
/// the rules; this lists and reads). Exit codes follow the Nagios plugin convention.
struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read and check every file of a spool and/or every object of an archive; Nagios exit codes.",
        discussion: """
            Every segment's LZ4 frame and WAL page headers (magic, timeline, the address its name implies, the system), every history file, every timeline's continuity (no segment missing between its first and last, the history file of each switch), every complete backup's archive against its recorded size and CRC-32C and the WAL it needs; archived objects are decrypted with --encryption-keyring and their stored checksums compared. Prints one line per problem, then a summary line with the key ids still in use.
            Exit: 0 OK, 1 WARNING (an incomplete backup, unencrypted objects beside encrypted ones), 2 CRITICAL (damage, a gap, an object that cannot be decrypted), 3 UNKNOWN (the spool or store cannot be read, encrypted objects without a keyring).
            Example:
              walship verify --archive s3://dr-archive/walship --archive-endpoint https://s3.example --archive-credentials /etc/walship/s3-credentials --encryption-keyring /etc/walship/archive-keyring.json
            """)

    @Option(help: "Spool directory of walship receive to check.")
    var spool: String?

    @Option(help: "Only this system identifier.")
    var system: UInt64?

    @Flag(help: "One JSON document for scripts (the exit code still reflects the verdict).")
    var json = false

    @OptionGroup var archive: ArchiveReadOptions

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard spool != nil || archive.archive != nil else {
            throw ValidationError("give --spool DIR, --archive s3://BUCKET/PREFIX, or both")
        }
    }

    func run() async throws {
        logging.apply(command: "verify")
        var reports: [VerifyLedger.Report] = []
        if let spool { reports.append(verifySpool(spool)) }
        if archive.archive != nil { reports.append(await verifyArchive()) }
        if json {
            print(String(decoding: try Self.json(reports), as: UTF8.self))
        } else {
            for report in reports {
                for problem in report.problems { print(problem.line) }
                print(report.summary)
            }
        }
        let code = reports.map(\.code).max() ?? .ok
        if code != .ok { throw ExitCode(code.rawValue) }
    }

    static func json(_ reports: [VerifyLedger.Report]) throws -> Data {
        let documents: [[String: Any]] = reports.map { report in
            [
                "origin": report.origin, "status": report.code.label,
                "problems": report.problems.map {
                    ["severity": $0.severity.label, "location": $0.location, "problem": $0.problem, "hint": $0.hint]
                },
                "objectsRead": report.objectsRead, "bytesRead": report.bytesRead,
                "timelines": report.timelines.map {
                    [
                        "system": String($0.system), "timeline": $0.timeline, "first": $0.first, "last": $0.last,
                        "segments": $0.segments,
                    ] as [String: Any]
                },
                "backups": report.backups, "keyIDs": report.keyUse, "unencryptedObjects": report.unencryptedObjects,
                "summary": report.summary,
            ]
        }
        let status = (reports.map(\.code).max() ?? .ok).label
        return try JSONSerialization.data(
            withJSONObject: ["status": status, "reports": documents], options: [.prettyPrinted, .sortedKeys])
    }

    // MARK: The spool

    func verifySpool(_ root: String) -> VerifyLedger.Report {
        var ledger = VerifyLedger(origin: "spool \(root)", keyring: nil)
        let systems: [UInt64]
        do {
            systems = try Spool.systemIdentifiers(root: root).filter { system == nil || $0 == system }
        } catch {
            ledger.report(
                VerifyProblem(
                    .unknown, root, "cannot read the spool: \(error)", hint: "check the path and that this user may read it"))
            return ledger.finish()
        }
        guard !systems.isEmpty else {
            ledger.report(
                VerifyProblem(
                    .unknown, root, system.map { "holds no WAL of system \($0)" } ?? "holds no system's WAL",
                    hint: "give the receiver's --spool directory (and --system only for a system it holds)"))
            return ledger.finish()
        }
        for id in systems {
            let directory = root + "/\(id)"
            if let size = try? SpoolReader(root: root, system: id).segmentSize { ledger.setSegmentSize(size, system: id) }
            ledger.setWALLocation(directory + "/wal/", system: id)
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/wal")) ?? []).filter {
                timeline(ofHistoryFileName: $0) != nil || ($0.hasSuffix(".lz4") && $0.count == 28)
            }
            for name in names.sorted() {
                let path = directory + "/wal/" + name
                guard let bytes = readSpoolFile(path, into: &ledger) else {
                    ledger.walFile(name, system: id, location: path, plain: nil)
                    continue
                }
                let plain = ledger.open(bytes, system: id, path: "wal/" + name, location: path)
                ledger.walFile(name, system: id, location: path, plain: plain)
            }
            let backupNames = ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/base")) ?? [])
                .filter { !$0.hasSuffix(".partial") }.sorted()
            for backup in backupNames {
                let location = directory + "/base/" + backup + "/"
                let record = readSpoolFile(location + "backup.json", into: &ledger)
                    .flatMap {
                        ledger.open($0, system: id, path: "base/\(backup)/backup.json", location: location + "backup.json")
                    }
                let manifest = readSpoolFile(location + "backup_manifest", into: &ledger)
                    .flatMap {
                        ledger.open(
                            $0, system: id, path: "base/\(backup)/backup_manifest", location: location + "backup_manifest")
                    }
                var archive = VerifyLedger.BackupArchive.missing
                let archivePath = location + "base.tar.lz4"
                if FileManager.default.fileExists(atPath: archivePath),
                    let info = record.flatMap({ try? BackupCatalog.decodeRecord($0, origin: location + "backup.json") })
                {
                    // Streamed from the file: a backup may be far larger than memory.
                    let size = ((try? FileManager.default.attributesOfItem(atPath: archivePath))?[.size] as? NSNumber)?
                        .uint64Value
                    ledger.counted(bytes: size ?? 0)
                    do {
                        try BackupVerification.verify(info, systemDirectory: directory)
                        archive = .checked(problem: nil)
                    } catch {
                        archive = .checked(problem: "\(error)")
                    }
                } else if FileManager.default.fileExists(atPath: archivePath) {
                    archive = .unreadable
                }
                ledger.backup(
                    id: backup, system: id, location: location, record: record,
                    recordReadable: record != nil || !FileManager.default.fileExists(atPath: location + "backup.json"),
                    archive: archive, manifestPresent: manifest != nil)
            }
        }
        return ledger.finish()
    }

    /// A spool file's bytes; nil (and an UNKNOWN problem) when it cannot be read, nil alone when it is not there.
    func readSpoolFile(_ path: String, into ledger: inout VerifyLedger) -> Data? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let bytes = FileManager.default.contents(atPath: path) else {
            ledger.report(VerifyProblem(.unknown, path, "cannot be read", hint: "check that this user may read the spool"))
            return nil
        }
        return bytes
    }

    // MARK: The archive

    func verifyArchive() async -> VerifyLedger.Report {
        let origin = "archive \(archive.archive ?? "")"
        let opened: (client: S3Client, layout: ArchiveConfiguration, keyring: Keyring?)
        do {
            opened = try await archive.open()
        } catch {
            var ledger = VerifyLedger(origin: origin, keyring: nil)
            ledger.report(VerifyProblem(.unknown, origin, "\(error)", hint: "check the archive's options"))
            return ledger.finish()
        }
        let (client, layout) = (opened.client, opened.layout)
        var ledger = VerifyLedger(origin: origin, keyring: opened.keyring)
        await readArchive(client: client, layout: layout, into: &ledger)
        try? await client.shutdown()
        return ledger.finish()
    }

    func readArchive(client: S3Client, layout: ArchiveConfiguration, into ledger: inout VerifyLedger) async {
        let root = layout.prefix.isEmpty ? "" : layout.prefix + "/"
        let listing: [ObjectInfo]
        do {
            listing = try await client.listAllObjects(prefix: system.map { layout.systemPrefix($0) } ?? root)
        } catch {
            ledger.report(
                VerifyProblem(
                    .unknown, "s3://\(layout.bucket)/\(root)", "cannot list the archive: \(error)",
                    hint: "check the endpoint, credentials and bucket (walship check --config tries them)"))
            return
        }
        var bySystem: [UInt64: [(path: String, object: ObjectInfo)]] = [:]
        for object in listing {
            guard let match = object.key.dropFirst(root.count).wholeMatch(of: /([0-9]+)\/(.+)/), let id = UInt64(match.output.1)
            else { continue }
            bySystem[id, default: []].append((String(match.output.2), object))
        }
        guard !bySystem.isEmpty else {
            ledger.report(
                VerifyProblem(
                    .unknown, "s3://\(layout.bucket)/\(root)",
                    system.map { "holds no objects of system \($0)" } ?? "holds no system's objects",
                    hint: "check --archive's prefix (walship receive --archive writes PREFIX/<system id>/)"))
            return
        }
        for (id, objects) in bySystem.sorted(by: { $0.key < $1.key }) {
            let here = "s3://\(layout.bucket)/\(layout.systemPrefix(id))"
            ledger.setWALLocation(here + "wal/", system: id)
            // History files first, then segments by name; then each backup's files.
            let wal = objects.filter { $0.path.hasPrefix("wal/") && !$0.path.dropFirst(4).contains("/") }
                .sorted { ($0.path.hasSuffix(".history") ? 0 : 1, $0.path) < ($1.path.hasSuffix(".history") ? 0 : 1, $1.path) }
            for (path, object) in wal {
                let plain = await fetch(object, system: id, path: path, here: here, client: client, into: &ledger)
                ledger.walFile(String(path.dropFirst(4)), system: id, location: here + path, plain: plain)
            }
            var backups: [String: [String: ObjectInfo]] = [:]
            for (path, object) in objects where !path.hasPrefix("wal/") {
                guard let match = path.wholeMatch(of: /base\/([^\/]+)\/([^\/]+)/) else {
                    ledger.report(
                        VerifyProblem(
                            .warning, here + path, "is not an object walship receive --archive writes",
                            hint: "remove it if nothing else needs it"))
                    continue
                }
                backups[String(match.output.1), default: [:]][String(match.output.2)] = object
            }
            for (backup, files) in backups.sorted(by: { $0.key < $1.key }) {
                let base = "base/\(backup)/"
                var opened: [String: Data] = [:]
                for (file, object) in files.sorted(by: { $0.key < $1.key }) {
                    if ["backup.json", "backup_manifest", "base.tar.lz4"].contains(file) {
                        opened[file] = await fetch(
                            object, system: id, path: base + file, here: here, client: client, into: &ledger)
                    } else {
                        ledger.report(
                            VerifyProblem(
                                .warning, here + base + file, "is not a file of a walship base backup",
                                hint: "remove it if nothing else needs it"))
                    }
                }
                let archive: VerifyLedger.BackupArchive =
                    files["base.tar.lz4"] == nil ? .missing : opened["base.tar.lz4"].map { .frame($0) } ?? .unreadable
                ledger.backup(
                    id: backup, system: id, location: here + base, record: opened["backup.json"],
                    recordReadable: files["backup.json"] == nil || opened["backup.json"] != nil, archive: archive,
                    manifestPresent: files["backup_manifest"] != nil)
            }
        }
    }

    /// An object's bytes as the spool held them: read, its stored checksums compared, opened with the keyring.
    func fetch(
        _ object: ObjectInfo, system: UInt64, path: String, here: String, client: S3Client, into ledger: inout VerifyLedger
    ) async -> Data? {
        do {
            let bytes = try await client.getObject(key: object.key)
            // A multipart object's ETag is no checksum of its bytes; the SHA-256 the archiver stored beside it is.
            let sha256 =
                object.etag.contains("-")
                ? try await client.headObject(key: object.key)?.metadata[Archiver.checksumMetadata] : nil
            return ledger.open(bytes, system: system, path: path, location: here + path, etag: object.etag, sha256: sha256)
        } catch {
            ledger.report(
                VerifyProblem(
                    .unknown, here + path, "cannot be read: \(error)", hint: "check the store; run walship verify again"))
            return nil
        }
    }
}

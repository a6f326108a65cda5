import Archive
import ArchiveCrypto
import Foundation
import ObjectStore
import Operations
import Spool
import StatusModel
import WALCore

/// The complete backups whose record is in the archive (of `system`, else of every system under the prefix), opened
/// with the keyring when sealed. A record is uploaded only once its backup's archive and manifest are confirmed.
func listArchivedBackups(
    client: S3Client, layout: ArchiveConfiguration, keyring: Keyring?, system: UInt64?
) async throws -> [BackupInfo] {
    let root = layout.prefix.isEmpty ? "" : layout.prefix + "/"
    // The systems under the prefix one level down, then only their base/: never the WAL objects, which are many.
    let systems: [UInt64]
    if let system {
        systems = [system]
    } else {
        systems = try await client.listCommonPrefixes(prefix: root).compactMap {
            UInt64($0.dropFirst(root.count).dropLast())
        }
    }
    var found: [BackupInfo] = []
    for id in systems {
        for object in try await client.listAllObjects(prefix: layout.systemPrefix(id) + "base/") {
            let rest = object.key.dropFirst(root.count)
            guard let match = rest.wholeMatch(of: /([0-9]+)\/(base\/[^\/]+\/backup\.json)/) else { continue }
            let bytes = try openArchivedObject(
                try await client.getObject(key: object.key), key: object.key, system: id, path: String(match.output.2),
                keyring: keyring)
            found.append(try BackupCatalog.decodeRecord(bytes, origin: object.key))
        }
    }
    return found.sorted { ($0.systemIdentifier, $0.id) < ($1.systemIdentifier, $1.id) }
}

/// Downloads an archived object to `file` piece by piece (ranged GETs of 8 MiB; a backup is never held in memory
/// whole), opening it chunk by chunk with `keyring` when sealed (every chunk authenticated, the last as final).
/// Returns the bytes written. Throws `ArchivedWAL.Damaged` for an object that does not open.
func downloadArchivedObject(
    key: String, system: UInt64, path: String, client: S3Client, keyring: Keyring?, to file: String
) async throws -> UInt64 {
    guard let info = try await client.headObject(key: key) else {
        throw ArchivedWAL.Damaged(description: "\(key) is not in the archive")
    }
    let size = Int(info.size)
    guard FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600]),
        let output = FileHandle(forWritingAtPath: file)
    else { throw RestoreError("cannot create \(file)") }
    defer { try? output.close() }
    let piece = 8 << 20
    var fetched = 0
    var pending = Data()
    /// Reads on until `count` bytes are pending (or the object ends).
    func fill(_ count: Int) async throws {
        while pending.count < count, fetched < size {
            let end = min(size, fetched + max(piece, count - pending.count))
            pending += try await client.getObject(key: key, range: Int64(fetched)..<Int64(end))
            fetched = end
        }
    }
    var written: UInt64 = 0
    try await fill(SealedObject.Opener.headerProbeBytes)
    guard let keyID = try? SealedObject.keyID(of: pending) else {
        // Not sealed: the spool's file as it is.
        while true {
            try output.write(contentsOf: pending)
            written += UInt64(pending.count)
            pending = Data()
            guard fetched < size else { return written }
            try await fill(piece)
        }
    }
    guard let keyring else {
        throw ArchivedWAL.Damaged(
            description:
                "\(key) is encrypted (key \(keyID)) (hint: give --encryption-keyring with the keyring that holds that key)")
    }
    var opener: SealedObject.Opener
    do {
        opener = try SealedObject.Opener(
            start: pending, objectSize: size, binding: .init(system: system, name: path), keyring: keyring)
    } catch {
        throw ArchivedWAL.Damaged(description: "\(key) cannot be opened: \(error)")
    }
    pending = pending.dropFirst(opener.headerSize)
    while !opener.finished {
        let length = opener.nextChunkLength
        try await fill(length)
        let chunk = Data(pending.prefix(length))
        pending = pending.dropFirst(chunk.count)
        let plain: Data
        do { plain = try opener.open(chunk) } catch {
            throw ArchivedWAL.Damaged(description: "\(key) cannot be opened: \(error)")
        }
        try output.write(contentsOf: plain)
        written += UInt64(plain.count)
    }
    return written
}

/// What `walship restore --archive` keeps beside the data directory (`<pgdata>.walship/`, never inside it: a copy
/// of the data directory must not carry a secret), owned by the server's OS user, mode 0700: the credentials file
/// restore_command reads when they came from the environment, the prefetch cache, and while it runs the staging
/// directory the backup is downloaded and checked in.
struct RestoreSideDirectory {
    let path: String

    init(dataDirectory: String) {
        var trimmed = dataDirectory
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        path = trimmed + ".walship"
    }

    var credentials: String { path + "/s3-credentials" }
    var cache: String { path + "/wal-cache" }
    func staging(_ backup: String) -> String { path + "/staging-" + backup }

    /// Makes the directory (0700) and, as root, gives it to `osUser`.
    func create(osUser: String) async throws {
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: path)
        if getuid() == 0 { try await giveToOSUser(path, osUser: osUser, what: path) }
    }
}

/// Downloads the backup's objects into `staging/base/<id>/`, opens each (decrypted and every chunk verified when
/// sealed) and checks the archive against the backup's own record (size, CRC-32C, the LZ4 frame): only a backup that
/// passes is unpacked. Returns the staged backup's directory.
func stageArchivedBackup(
    _ backup: BackupInfo, system: UInt64, staging: String, client: S3Client, layout: ArchiveConfiguration,
    keyring: Keyring?, progress: (String) -> Void
) async throws -> String {
    let fm = FileManager.default
    let directory = staging + "/base/" + backup.id
    try? fm.removeItem(atPath: staging)
    try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    let hint =
        "(hint: use another backup: walship backups --archive … lists them, then --backup ID; or take a new one with walship backup)"
    for file in ["base.tar.lz4", "backup_manifest"] {
        let path = "base/\(backup.id)/\(file)"
        let key = layout.objectKey(system: system, path: path)
        let started = Date()
        let bytes: UInt64
        do {
            bytes = try await downloadArchivedObject(
                key: key, system: system, path: path, client: client, keyring: keyring, to: directory + "/" + file)
        } catch let damaged as ArchivedWAL.Damaged {
            throw RestoreError("backup \(backup.id) cannot be restored from the archive: \(damaged) \(hint)")
        }
        progress(
            "downloaded \(key) (\(formatBytes(bytes))\(keyring == nil ? "" : ", decrypted") in \(String(format: "%.1f", Date().timeIntervalSince(started))) s)"
        )
    }
    do {
        try BackupVerification.verify(backup, systemDirectory: staging)
    } catch let error as SpoolError where error.kind == .corrupt {
        throw RestoreError("\(error.message) \(hint)")
    }
    return directory
}

/// `walship restore --archive …`: the backup from the spool when it holds the one chosen, else from the archive
/// (downloaded, opened and checked beside the data directory first), and a restore_command that reads the spool
/// (when given) and the archive as the server's OS user, without the caller's environment.
struct ArchiveRestore {
    var archive: ArchiveReadOptions
    var spool: String?
    var system: UInt64?
    var backup: String?
    var pgdata: String
    var osUser: String
    var walshipPath: String?

    func restore(
        settings: [String], signal: String, targetTime: Date?, progress: (String) -> Void
    ) async throws -> RestoredDirectory {
        let dataDirectory = absolutePath(pgdata)
        try requireEmptyDataDirectory(dataDirectory)
        let walship = walshipExecutable(walshipPath)
        try await checkOSUserRunsWalship(osUser, walship: walship)
        // What restore_command reads as the server's user, checked before anything is downloaded.
        for (option, file) in [("--encryption-keyring", archive.encryptionKeyring), ("--archive-ca", archive.archiveCa)] {
            guard let file else { continue }
            guard await osUserCanRead(absolutePath(file), osUser: osUser) else {
                throw RestoreError(
                    "the PostgreSQL OS user \(osUser) cannot read \(option) \(absolutePath(file)), which restore_command needs (hint: chown \(osUser) it, or give both a common group and mode 0640; keep the escrow copy elsewhere)"
                )
            }
        }
        if archive.archiveCredentials == nil, AWSCredentials.fromEnvironment(ProcessInfo.processInfo.environment) == nil {
            throw RestoreError(
                "--archive has no credentials (hint: give --archive-credentials FILE, readable by \(osUser), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: walship then writes them for \(osUser) beside the data directory)"
            )
        }
        let (client, layout, keyring) = try await archive.open()
        do {
            let restored = try await restore(
                dataDirectory: dataDirectory, walship: walship, settings: settings, signal: signal, targetTime: targetTime,
                client: client, layout: layout, keyring: keyring, progress: progress)
            try? await client.shutdown()
            return restored
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    private func restore(
        dataDirectory: String, walship: String, settings: [String], signal: String, targetTime: Date?, client: S3Client,
        layout: ArchiveConfiguration, keyring: Keyring?, progress: (String) -> Void
    ) async throws -> RestoredDirectory {
        let url = archive.archive ?? ""
        let reader = try spool.flatMap { try SpoolReader.openIfPresent(root: absolutePath($0), system: system) }
        let archived = try await listArchivedBackups(
            client: client, layout: layout, keyring: keyring, system: reader?.systemIdentifier ?? system)
        let systemID: UInt64
        if let known = reader?.systemIdentifier ?? system {
            systemID = known
        } else {
            let systems = Set(archived.compactMap { UInt64($0.systemIdentifier) }).sorted()
            guard systems.count == 1 else {
                throw RestoreError(
                    systems.isEmpty
                        ? "the archive \(url) holds no complete base backup (hint: walship receive --archive uploads a backup once it is complete; walship backups --archive … lists them)"
                        : "the archive \(url) holds backups of several systems: \(systems.map(String.init).joined(separator: ", ")) (hint: give --system ID)"
                )
            }
            systemID = systems[0]
        }
        let spoolBackups =
            try reader.map { try BackupCatalog.list(systemDirectory: $0.systemDirectory) }?.filter { $0.status == .complete }
            ?? []
        let inSpool = Set(spoolBackups.map(\.id))
        let places = [spool.map { "the spool \($0)" }, "the archive \(url)"].compactMap { $0 }.joined(separator: " or ")
        let chosen = try BackupChoice.choose(
            spoolBackups + archived.filter { !inSpool.contains($0.id) }, requested: backup, endingBy: targetTime
        ) { problem in
            "\(problem) for system \(systemID) in \(places) (hint: walship backups --archive \(url) --archive-endpoint … lists the archive's)"
        }
        if let reader {
            guard await osUserCanRead(reader.walDirectory, osUser: osUser, directory: true) else {
                throw RestoreError(
                    "the PostgreSQL OS user \(osUser) cannot read the spool \(reader.walDirectory) (hint: run walship receive as \(osUser), or give both a common group; the spool is created 0750/0640)"
                )
            }
        }

        let side = RestoreSideDirectory(dataDirectory: dataDirectory)
        try await side.create(osUser: osUser)
        let credentials = try await credentialsForServer(side)
        let cache = side.cache
        try FileManager.default.createDirectory(
            atPath: cache, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        if getuid() == 0 { try await giveToOSUser(cache, osUser: osUser, what: cache) }
        var archiveArguments = [
            "--archive", url, "--archive-endpoint", archive.archiveEndpoint ?? "", "--archive-region", layoutRegion,
            "--archive-credentials", credentials,
        ]
        if let ca = archive.archiveCa { archiveArguments += ["--archive-ca", absolutePath(ca)] }
        if let keyring = archive.encryptionKeyring { archiveArguments += ["--encryption-keyring", absolutePath(keyring)] }
        archiveArguments += ["--archive-cache", cache]

        if let spool, inSpool.contains(chosen.id) {
            progress(
                "backup \(chosen.id) is in the spool \(spool): restored from there; WAL the spool lacks comes from the archive")
            return try await restoreFromBackup(
                spool: spool, system: systemID, backup: chosen.id, pgdata: dataDirectory, settings: settings, signal: signal,
                osUser: osUser, walshipPath: walshipPath, restoreArguments: archiveArguments)
        }
        progress("restoring backup \(chosen.id) of system \(systemID) from the archive \(url)")
        let staging = side.staging(chosen.id)
        defer { try? FileManager.default.removeItem(atPath: staging) }
        let staged = try await stageArchivedBackup(
            chosen, system: systemID, staging: staging, client: client, layout: layout, keyring: keyring, progress: progress)
        let command = restoreWALCommand(
            walship: walship,
            // The spool only when it holds this system: restore-wal stops recovery on a spool it cannot open.
            arguments: (reader != nil ? ["--spool", absolutePath(spool ?? "")] : []) + ["--system", String(systemID)]
                + archiveArguments)
        return try await installVerifiedBackup(
            chosen, from: staged, systemIdentifier: systemID, dataDirectory: dataDirectory, restoreCommand: command,
            settings: settings, signal: signal, osUser: osUser)
    }

    /// The region restore_command signs for: named, since the server's environment has no AWS_REGION.
    var layoutRegion: String {
        archive.archiveRegion ?? ProcessInfo.processInfo.environment["AWS_REGION"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "us-east-1"
    }

    /// The credentials file restore_command names: --archive-credentials when the server's user can read it, else the
    /// environment's credentials written 0600 for that user beside the data directory. Never the secret itself.
    func credentialsForServer(_ side: RestoreSideDirectory) async throws -> String {
        if let given = archive.archiveCredentials {
            let path = absolutePath(given)
            guard await osUserCanRead(path, osUser: osUser) else {
                throw RestoreError(
                    "the PostgreSQL OS user \(osUser) cannot read the credentials file \(path), which restore_command needs (hint: chown \(osUser) \(path) (mode 0600), or give a copy that user owns; or leave out --archive-credentials and set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: walship then writes \(side.credentials) for \(osUser))"
                )
            }
            return path
        }
        guard let credentials = AWSCredentials.fromEnvironment(ProcessInfo.processInfo.environment) else {
            throw RestoreError(
                "--archive has no credentials (hint: give --archive-credentials FILE, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            )
        }
        var text =
            "[default]\naws_access_key_id = \(credentials.accessKeyID)\naws_secret_access_key = \(credentials.secretAccessKey)\n"
        if let token = credentials.sessionToken { text += "aws_session_token = \(token)\n" }
        // Made 0600 before the secret goes in, then renamed over any older copy.
        let temporary = side.credentials + ".\(getpid())"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RestoreError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        guard written == bytes.count, rename(temporary, side.credentials) == 0 else {
            unlink(temporary)
            throw RestoreError("cannot write \(side.credentials)")
        }
        if getuid() == 0 { try await giveToOSUser(side.credentials, osUser: osUser, what: side.credentials) }
        return side.credentials
    }
}

/// Where the archive's WAL of `system` ends for a drill: the start of its newest segment (on the newest timeline).
/// Replay that reaches into it has read all the archive holds but that segment's tail, which the promotion replays.
func archivedWALEnd(_ archive: ArchiveReadOptions, system: UInt64, segmentSize: WALSegmentSize) async throws -> LSN {
    let (client, layout, _) = try await archive.open()
    let outcome: Result<LSN, any Error>
    do {
        let objects = try await client.listAllObjects(prefix: layout.objectKey(system: system, path: "wal/"))
        let newest = objects.compactMap { object -> SegmentName? in
            guard let name = object.key.split(separator: "/").last, name.hasSuffix(".lz4") else { return nil }
            return SegmentName(name.dropLast(4), segmentSize: segmentSize)
        }.max()
        guard let newest else {
            throw RestoreError("the archive \(archive.archive ?? "") holds no WAL segment of system \(system)")
        }
        outcome = .success(newest.startLSN)
    } catch {
        outcome = .failure(error)
    }
    try? await client.shutdown()
    return try outcome.get()
}
